"""The maths shared by DPM-Solver (multistep and singlestep, ODE and SDE), UniPC and DEIS, as pure functions.

Notation (Lu et al. 2022, Zhao et al. 2023): a schedule point is a VP pair (alpha, sigma) with
x = alpha * x0 + sigma * eps, reached from the "VE" sigma that schedulers store as
alpha = 1 / sqrt(1 + sigma_ve^2), sigma = sigma_ve * alpha. lambda = log(alpha / sigma) is the half log-SNR
and h = lambda_t - lambda_s the step in lambda. Data-prediction solvers (dpmsolver++, sde-dpmsolver++,
UniPC with predict_x0) integrate over x0 predictions; noise-prediction ones (dpmsolver, sde-dpmsolver)
over eps predictions. Every function takes and returns tensors; schedulers only pick the points.
"""
from __future__ import annotations

import numpy as np
import torch

ALGORITHMS = ("dpmsolver", "dpmsolver++", "sde-dpmsolver", "sde-dpmsolver++")
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction", "flow_prediction")


def uses_data_prediction(algorithm: str) -> bool:
    """True for the solvers that integrate x0 predictions (the '++' variants)."""
    return algorithm.endswith("++")


def alpha_sigma(sigma: torch.Tensor, flow: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(alpha_t, sigma_t) for a stored sigma: VE -> VP, or the flow-matching pair (1 - s, s)."""
    if flow:
        return 1 - sigma, sigma
    alpha = 1 / ((sigma**2 + 1) ** 0.5)
    return alpha, sigma * alpha


def half_log_snr(alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """lambda = log(alpha) - log(sigma); +inf where sigma is 0."""
    return torch.log(alpha) - torch.log(sigma)


def predict_x0(output, sample, alpha, sigma, prediction_type: str):
    """x0 from a model output of the given kind (for flow_prediction, `sigma` is the flow sigma)."""
    if prediction_type == "epsilon":
        return (sample - sigma * output) / alpha
    if prediction_type == "sample":
        return output
    if prediction_type == "v_prediction":
        return alpha * sample - sigma * output
    if prediction_type == "flow_prediction":
        return sample - sigma * output
    raise ValueError(f"prediction_type: expected one of {PREDICTION_TYPES}, got {prediction_type!r}")


def predict_eps(output, sample, alpha, sigma, prediction_type: str):
    """eps from a model output of the given kind (flow_prediction has no eps form here)."""
    if prediction_type == "epsilon":
        return output
    if prediction_type == "sample":
        return (sample - alpha * output) / sigma
    if prediction_type == "v_prediction":
        return alpha * output + sigma * sample
    raise ValueError(
        f"prediction_type: expected one of ('epsilon', 'sample', 'v_prediction') for noise-prediction solvers, "
        f"got {prediction_type!r}"
    )


def dynamic_threshold(x0: torch.Tensor, ratio: float, max_value: float) -> torch.Tensor:
    """Imagen's dynamic thresholding: clamp each sample to its `ratio` quantile s (1 <= s <= max_value), divide by s."""
    dtype = x0.dtype
    flat = x0.reshape(x0.shape[0], -1)
    if dtype not in (torch.float32, torch.float64):
        flat = flat.float()
    s = torch.quantile(flat.abs(), ratio, dim=1).clamp(min=1, max=max_value).unsqueeze(1)
    return (torch.clamp(flat, -s, s) / s).reshape(x0.shape).to(dtype)


# ---- DPM-Solver: one exponential-integrator step ------------------------------------------------------------
def dpm_step(algorithm, x, ratio, h, alpha_t, sigma_t, d0, d1=None, d2=None, heun=False, noise=None):
    """x_t from x_s and the divided differences d0 (value), d1 (first), d2 (second) of the predictions.

    ratio: sigma_t / sigma_s for the data-prediction algorithms, alpha_t / alpha_s for the noise-prediction ones.
    heun selects the d1 coefficient of the "heun" solver_type (the "midpoint" one otherwise). d2 only
    exists for the ODE variants and sde-dpmsolver++. Noise is required by the SDE variants.
    A zero-length step (h = 0: a repeated sigma, as a Karras ladder ending on final_sigmas_type='sigma_min'
    gives) returns x, the exact answer, where the higher-order coefficients would be 0/0.
    """
    if bool(h == 0):
        return x
    if algorithm == "dpmsolver++":
        em1 = torch.exp(-h) - 1.0
        x_t = ratio * x - (alpha_t * em1) * d0
        if d1 is not None:
            x_t = x_t + (alpha_t * (em1 / h + 1.0)) * d1 if heun else x_t - 0.5 * (alpha_t * em1) * d1
        if d2 is not None:
            x_t = x_t - (alpha_t * ((em1 + h) / h**2 - 0.5)) * d2
        return x_t
    if algorithm == "dpmsolver":
        ep1 = torch.exp(h) - 1.0
        x_t = ratio * x - (sigma_t * ep1) * d0
        if d1 is not None:
            x_t = x_t - (sigma_t * (ep1 / h - 1.0)) * d1 if heun else x_t - 0.5 * (sigma_t * ep1) * d1
        if d2 is not None:
            x_t = x_t - (sigma_t * ((ep1 - h) / h**2 - 0.5)) * d2
        return x_t
    if noise is None:
        raise ValueError(f"noise: algorithm {algorithm!r} is stochastic and needs a noise tensor")
    if algorithm == "sde-dpmsolver++":
        one_m = 1.0 - torch.exp(-2.0 * h)
        x_t = (ratio * torch.exp(-h)) * x + (alpha_t * one_m) * d0
        if d1 is not None:
            x_t = x_t + (alpha_t * (one_m / (-2.0 * h) + 1.0)) * d1 if heun else x_t + 0.5 * (alpha_t * one_m) * d1
        if d2 is not None:
            # diffusers' coefficient (kept for same-seed results): ((1 - e^-2h - 2h) / (2h)^2 - 1/2)
            x_t = x_t + (alpha_t * ((one_m - 2.0 * h) / (2.0 * h) ** 2 - 0.5)) * d2
        return x_t + sigma_t * torch.sqrt(one_m) * noise
    if algorithm == "sde-dpmsolver":
        if d2 is not None:
            raise ValueError("solver_order: sde-dpmsolver supports orders 1 and 2 only")
        ep1 = torch.exp(h) - 1.0
        x_t = ratio * x - 2.0 * (sigma_t * ep1) * d0
        if d1 is not None:
            x_t = x_t - 2.0 * (sigma_t * (ep1 / h - 1.0)) * d1 if heun else x_t - (sigma_t * ep1) * d1
        return x_t + sigma_t * torch.sqrt(torch.exp(2 * h) - 1.0) * noise
    raise ValueError(f"algorithm_type: expected one of {ALGORITHMS}, got {algorithm!r}")


def multistep_differences(outputs, lambdas, lambda_t):
    """Divided differences for a multistep update from the last 1-3 points.

    outputs / lambdas: oldest first, the current point last. Returns (h, d0, d1, d2); d1, d2 are None when
    fewer points are given. d1 is scaled to h (so the step formulas read as in the DPM-Solver paper).
    """
    m0, l0 = outputs[-1], lambdas[-1]
    h = lambda_t - l0
    if len(outputs) == 1:
        return h, m0, None, None
    m1, l1 = outputs[-2], lambdas[-2]
    r0 = (l0 - l1) / h
    d1_0 = (1.0 / r0) * (m0 - m1)
    if len(outputs) == 2:
        return h, m0, d1_0, None
    m2, l2 = outputs[-3], lambdas[-3]
    r1 = (l1 - l2) / h
    d1_1 = (1.0 / r1) * (m1 - m2)
    d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
    d2 = (1.0 / (r0 + r1)) * (d1_0 - d1_1)
    return h, m0, d1, d2


def singlestep_differences(outputs, lambdas, lambda_t, heun: bool):
    """Divided differences for a singlestep update that started at the oldest of 1-3 points.

    The intermediate points were reached inside the same step; the base is outputs[0] at lambdas[0].
    Returns (h, d0, d1, d2) measured from the base point. For third order with the midpoint rule,
    DPM-Solver-3 uses only the latest first difference (d2 is None).
    """
    base, lb = outputs[0], lambdas[0]
    h = lambda_t - lb
    if len(outputs) == 1:
        return h, base, None, None
    if len(outputs) == 2:
        r0 = (lambdas[1] - lb) / h
        return h, base, (1.0 / r0) * (outputs[1] - base), None
    r1, r0 = (lambdas[1] - lb) / h, (lambdas[2] - lb) / h
    d1_0 = (1.0 / r1) * (outputs[1] - base)
    d1_1 = (1.0 / r0) * (outputs[2] - base)
    if not heun:
        return h, base, d1_1, None
    d1 = (r0 * d1_0 - r1 * d1_1) / (r0 - r1)
    d2 = 2.0 * (d1_1 - d1_0) / (r0 - r1)
    return h, base, d1, d2


# ---- DEIS (log-rho) -----------------------------------------------------------------------------------------
def deis_coefficients(rho_t: torch.Tensor, rhos: list) -> list:
    """Weights of the multistep log-rho DEIS update (Zhang & Chen 2022, arXiv:2204.13902), for 2 or 3 points.

    rho = sigma / alpha; `rhos` are the points whose noise predictions eps_j are stored, newest (the current
    point) first. Weight j is the integral over rho, from rhos[0] to rho_t, of the Lagrange basis polynomial
    in log rho that is 1 at rhos[j] and 0 at the other points, so that
    x_t = alpha_t * (x_s / alpha_s + sum_j weight_j * eps_j). With u = log rho, the antiderivative of a
    polynomial L(u) over rho is rho * (L - L' + L''). The polynomials are written out, and the other points
    taken in turn after j, as diffusers writes them: a third-order step that extrapolates far in log rho
    (a last step to a tiny sigma) amplifies rounding, and the same float32 operations keep it diffusers' rounding.
    """
    n = len(rhos)
    if n not in (2, 3):
        raise ValueError(f"rhos: DEIS weights need 2 or 3 points, got {n}")
    logs = [torch.log(r) for r in rhos]
    log_t = torch.log(rho_t)

    def antiderivative(rho, u, log_j, others):
        if n == 2:
            (c,) = others
            return rho * (-c + u - 1) / (log_j - c)
        c, d = others
        poly = c * (d - u + 1) - d * u + d + u**2 - 2 * u + 2  # (u - c)(u - d) - (2u - c - d) + 2
        return rho * poly / ((log_j - c) * (log_j - d))

    weights = []
    for j, log_j in enumerate(logs):
        others = [logs[(j + k) % n] for k in range(1, n)]
        weights.append(antiderivative(rho_t, log_t, log_j, others) - antiderivative(rhos[0], logs[0], log_j, others))
    return weights


# ---- UniPC --------------------------------------------------------------------------------------------------
def unipc_coefficients(hh: torch.Tensor, order: int, variant: str):
    """(h*phi_1(hh), B(hh), b) for UniPC: b_i = i! * h*phi_{i+1}(hh) / B(hh), i = 1..order.

    hh is -h for data prediction and h for noise prediction; variant 'bh1' takes B(h) = hh,
    'bh2' takes B(h) = e^hh - 1.
    """
    if variant == "bh1":
        b_h = hh
    elif variant == "bh2":
        b_h = torch.expm1(hh)
    else:
        raise ValueError(f"solver_type: expected 'bh1' or 'bh2', got {variant!r}")
    h_phi_1 = torch.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1
    factorial, b = 1, []
    for i in range(1, order + 1):
        b.append(h_phi_k * factorial / b_h)
        factorial *= i + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    return h_phi_1, b_h, torch.stack(b)


def unipc_update(x, ratio, scale_t, hh, m0, rks, diffs, variant, corrector_output=None):
    """One UniPC predictor (UniP) or, given the model output at the new point, corrector (UniC) update.

    x: sample at the start point; ratio: sigma_t/sigma_s (data) or alpha_t/alpha_s (noise); scale_t: alpha_t
    (data) or sigma_t (noise); m0: converted output at the start point; rks: the earlier points' lambda
    offsets divided by h; diffs: (m_k - m0) / r_k for those points (newest first). The order is
    len(rks) + 1 for the predictor and len(rks) + 1 for the corrector too (which adds the new point).
    """
    if corrector_output is None and bool(hh == 0):
        return x  # zero-length step (repeated final sigma): exact, where the coefficients would be 0/0
    order = len(rks) + 1
    device = x.device
    h_phi_1, b_h, b = unipc_coefficients(hh, order, variant)
    r = torch.stack(list(rks) + [torch.ones((), device=device)])
    vander = torch.stack([torch.pow(r, i) for i in range(order)])
    x_t = ratio * x - scale_t * h_phi_1 * m0
    if corrector_output is None:
        if not diffs:
            return x_t  # first order: the B(h) term vanishes (kept finite even where B(h) is infinite)
        rhos = torch.full((1,), 0.5, dtype=x.dtype, device=device) if order == 2 else (
            torch.linalg.solve(vander[:-1, :-1], b[:-1]).to(device=device, dtype=x.dtype)
        )
        res = torch.einsum("k,bkc...->bc...", rhos, torch.stack(diffs, dim=1))
        return x_t - scale_t * b_h * res
    rhos = torch.full((1,), 0.5, dtype=x.dtype, device=device) if order == 1 else (
        torch.linalg.solve(vander, b).to(device=device, dtype=x.dtype)
    )
    res = torch.einsum("k,bkc...->bc...", rhos[:-1], torch.stack(diffs, dim=1)) if diffs else 0
    return x_t - scale_t * b_h * (res + rhos[-1] * (corrector_output - m0))


# ---- schedules particular to this family -------------------------------------------------------------------
def solver_timesteps(spacing: str, n: int, last_timestep: int, num_train_timesteps: int, steps_offset: int = 0):
    """Descending int64 timesteps as the DPM-Solver family spaces them (n + 1 points, the final 0 dropped).

    last_timestep is num_train_timesteps, or fewer where lambda_min_clipped cuts off the noisiest steps.
    """
    if spacing == "linspace":
        return np.linspace(0, last_timestep - 1, n + 1).round()[::-1][:-1].copy().astype(np.int64)
    if spacing == "leading":
        ratio = last_timestep // (n + 1)
        return (np.arange(0, n + 1) * ratio).round()[::-1][:-1].copy().astype(np.int64) + steps_offset
    if spacing == "trailing":
        ratio = num_train_timesteps / n
        return np.arange(last_timestep, 0, -ratio).round().copy().astype(np.int64) - 1
    raise ValueError(f"timestep_spacing: expected 'linspace', 'leading' or 'trailing', got {spacing!r}")


def lu_sigmas(log_sigmas_desc: np.ndarray, n: int) -> np.ndarray:
    """Sigmas evenly spaced in lambda (Lu et al., DPM-Solver++ section 'uniform lambda'), noisiest first."""
    hi, lo = log_sigmas_desc[0].item(), log_sigmas_desc[-1].item()
    ramp = np.linspace(0, 1, n)
    return np.exp(hi + ramp * (lo - hi))
