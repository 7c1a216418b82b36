"""Noise schedules: betas -> alphas_cumprod -> sigmas, timestep spacings and sigma ladders.

Pure functions on tensors / ndarrays (no configs), with diffusers 0.42.1's exact arithmetic so that
impasto's schedulers produce the same timesteps and sigmas bit for bit (or to float rounding):

- `make_betas(beta_schedule, beta_start, beta_end, num_train_timesteps, trained_betas)` -> float32 tensor
- `rescale_zero_terminal_snr(betas)`                 -> betas whose last alpha_cumprod is exactly 0
- `alphas_cumprod(betas)`                            -> cumulative product of 1 - betas
- `sigmas_from_alphas_cumprod(alphas_cumprod)`      -> ((1 - a) / a) ** 0.5, in training order (t = 0 first)
- `spaced_timesteps(spacing, n, num_train_timesteps, steps_offset)` -> descending float64 ndarray
- `interp_sigmas(timesteps, train_sigmas)`          -> sigmas at (fractional) timesteps, linear in t
- `karras_sigmas / exponential_sigmas / beta_sigmas(sigma_min, sigma_max, n)` -> descending ladders
- `sigma_to_t(sigma, log_sigmas)`                    -> fractional timestep, interpolating on log-sigmas
- `check_choice(owner, key, value, allowed)`         -> ValueError naming the key and the allowed values
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np
import torch

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
TIMESTEP_SPACINGS = ("linspace", "leading", "trailing")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def check_choice(owner: str, key: str, value, allowed: Iterable) -> None:
    """Raise `ValueError` naming `owner`'s config `key` and the allowed values when `value` is not one of them."""
    allowed = tuple(allowed)
    if value not in allowed:
        names = ", ".join(repr(a) for a in allowed)
        raise ValueError(f"{owner}: {key}={value!r} is not supported; expected one of {names}")


# ---- betas ------------------------------------------------------------------------------------------------
def _alpha_bar(kind: str):
    if kind == "cosine":
        return lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
    if kind == "exp":
        return lambda t: math.exp(t * -12.0)
    if kind == "laplace":

        def laplace(t):
            lmb = -0.5 * math.copysign(1, 0.5 - t) * math.log(1 - 2 * math.fabs(0.5 - t) + 1e-6)
            snr = math.exp(lmb)
            return math.sqrt(snr / (1 + snr))

        return laplace
    raise ValueError(f"alpha_transform_type={kind!r} is not supported; expected 'cosine', 'exp' or 'laplace'")


def betas_for_alpha_bar(num_train_timesteps: int, max_beta: float = 0.999, kind: str = "cosine") -> torch.Tensor:
    """Betas that make alphas_cumprod follow a continuous alpha_bar(t), t in [0, 1] (GLIDE's cosine by default)."""
    fn = _alpha_bar(kind)
    n = num_train_timesteps
    betas = [min(1 - fn((i + 1) / n) / fn(i / n), max_beta) for i in range(n)]
    return torch.tensor(betas, dtype=torch.float32)


def make_betas(
    beta_schedule: str,
    beta_start: float,
    beta_end: float,
    num_train_timesteps: int,
    trained_betas: Sequence[float] | np.ndarray | None = None,
    allowed: Sequence[str] = BETA_SCHEDULES,
    owner: str = "scheduler",
) -> torch.Tensor:
    """The training betas (float32). `trained_betas` wins when given; otherwise `beta_schedule`, one of `allowed`:

    linear (beta_start..beta_end), scaled_linear (linear in sqrt(beta), Stable Diffusion's), squaredcos_cap_v2
    (cosine alpha_bar), and, where a scheduler allows them, exp, laplace (alpha_bar variants) and sigmoid.
    """
    if trained_betas is not None:
        return torch.tensor(np.asarray(trained_betas), dtype=torch.float32)
    check_choice(owner, "beta_schedule", beta_schedule, allowed)
    n = num_train_timesteps
    if beta_schedule == "linear":
        return torch.linspace(beta_start, beta_end, n, dtype=torch.float32)
    if beta_schedule == "scaled_linear":
        return torch.linspace(beta_start**0.5, beta_end**0.5, n, dtype=torch.float32) ** 2
    if beta_schedule == "squaredcos_cap_v2":
        return betas_for_alpha_bar(n)
    if beta_schedule in ("exp", "laplace"):
        return betas_for_alpha_bar(n, kind=beta_schedule)
    # sigmoid (GeoDiff)
    return torch.sigmoid(torch.linspace(-6, 6, n)) * (beta_end - beta_start) + beta_start


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Rescale betas so the last timestep has zero SNR (Lin et al. 2023, arXiv:2305.08891, algorithm 1)."""
    root = torch.cumprod(1.0 - betas, dim=0).sqrt()
    first, last = root[0].clone(), root[-1].clone()
    root = (root - last) * (first / (first - last))
    bar = root**2
    alphas = torch.cat([bar[0:1], bar[1:] / bar[:-1]])
    return 1 - alphas


def alphas_cumprod(betas: torch.Tensor) -> torch.Tensor:
    """prod_{s<=t} (1 - beta_s)."""
    return torch.cumprod(1.0 - betas, dim=0)


def sigmas_from_alphas_cumprod(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Karras sigmas of the training schedule, ((1 - a) / a) ** 0.5, in training order (smallest first)."""
    return ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5


# ---- timesteps ----------------------------------------------------------------------------------------------
def spaced_timesteps(
    spacing: str, num_inference_steps: int, num_train_timesteps: int, steps_offset: int = 0, owner: str = "scheduler"
) -> np.ndarray:
    """Descending inference timesteps as float64 (table 2 of arXiv:2305.08891).

    linspace: evenly from num_train_timesteps - 1 down to 0 (not rounded; integer schedulers round it);
    leading: multiples of num_train_timesteps // n, plus steps_offset; trailing: from num_train_timesteps - 1
    down in steps of num_train_timesteps / n, rounded.
    """
    check_choice(owner, "timestep_spacing", spacing, TIMESTEP_SPACINGS)
    n, total = num_inference_steps, num_train_timesteps
    if spacing == "linspace":
        return np.linspace(0, total - 1, n)[::-1].copy()
    if spacing == "leading":
        ratio = total // n
        return (np.arange(0, n) * ratio).round()[::-1].astype(np.float64) + steps_offset
    ratio = total / n
    return np.round(np.arange(total, 0, -ratio)) - 1


# ---- sigmas -------------------------------------------------------------------------------------------------
def interp_sigmas(timesteps: np.ndarray, train_sigmas) -> np.ndarray:
    """Sigmas at (fractional) timesteps, linearly interpolated in t over the training sigmas."""
    train_sigmas = np.asarray(train_sigmas)
    return np.interp(timesteps, np.arange(0, len(train_sigmas)), train_sigmas)


def karras_sigmas(sigma_min: float, sigma_max: float, n: int, rho: float = 7.0) -> np.ndarray:
    """Karras et al. (2022) ladder: evenly spaced in sigma ** (1 / rho), from sigma_max down to sigma_min."""
    ramp = np.linspace(0, 1, n)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (hi + ramp * (lo - hi)) ** rho


def exponential_sigmas(sigma_min: float, sigma_max: float, n: int) -> np.ndarray:
    """Ladder evenly spaced in log sigma, from sigma_max down to sigma_min."""
    return np.exp(np.linspace(math.log(sigma_max), math.log(sigma_min), n))


def _betacf(a: float, b: float, x: float) -> float:
    # continued fraction for the incomplete beta function (modified Lentz)
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        for num in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-16:
            break
    return h


def beta_cdf(x: float, a: float, b: float) -> float:
    """Regularized incomplete beta I_x(a, b): the CDF of Beta(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def beta_ppf(q: float, a: float, b: float) -> float:
    """Inverse of `beta_cdf` (the quantile of Beta(a, b)): Newton steps kept inside a shrinking bracket,
    falling back to bisection, to float64 resolution."""
    if q <= 0.0:
        return 0.0
    if q >= 1.0:
        return 1.0
    lo, hi, x = 0.0, 1.0, 0.5
    log_norm = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
    for _ in range(200):
        f = beta_cdf(x, a, b) - q
        if f == 0.0:
            return x
        if f < 0:
            lo = x
        else:
            hi = x
        pdf = math.exp(log_norm + (a - 1) * math.log(x) + (b - 1) * math.log1p(-x))
        step = x - f / pdf if pdf > 0 else -1.0
        x_new = step if lo < step < hi else 0.5 * (lo + hi)
        if abs(x_new - x) <= 1e-16 * max(x, 1e-300) or x_new in (lo, hi):
            return x_new
        x = x_new
    return x


def beta_sigmas(sigma_min: float, sigma_max: float, n: int, alpha: float = 0.6, beta: float = 0.6) -> np.ndarray:
    """Ladder at the Beta(alpha, beta) quantiles of 1 - linspace(0, 1, n) (arXiv:2407.12173), sigma_max first."""
    quantiles = [beta_ppf(q, alpha, beta) for q in 1 - np.linspace(0, 1, n)]
    return np.array([sigma_min + p * (sigma_max - sigma_min) for p in quantiles])


def ladder(kind: str, in_sigmas: np.ndarray, n: int, sigma_min: float | None = None, sigma_max: float | None = None):
    """Replace interpolated sigmas (descending) by a `kind` ladder ('karras', 'exponential', 'beta') over the same
    range, or over [sigma_min, sigma_max] where those are given."""
    lo = sigma_min if sigma_min is not None else float(in_sigmas[-1])
    hi = sigma_max if sigma_max is not None else float(in_sigmas[0])
    if kind == "karras":
        return karras_sigmas(lo, hi, n)
    if kind == "exponential":
        return exponential_sigmas(lo, hi, n)
    if kind == "beta":
        return beta_sigmas(lo, hi, n)
    raise ValueError(f"kind={kind!r} is not supported; expected 'karras', 'exponential' or 'beta'")


def sigma_to_t(sigma, log_sigmas: np.ndarray) -> np.ndarray:
    """Fractional training timestep(s) of `sigma`, by linear interpolation on the log of the training sigmas.

    `log_sigmas` is ascending in t (np.log of `sigmas_from_alphas_cumprod`). Works element-wise on arrays and
    keeps their dtype arithmetic (torch tensors in, torch float arithmetic out), so the result equals
    diffusers' per-sigma `_sigma_to_t`.
    """
    if isinstance(sigma, torch.Tensor):
        logs = torch.as_tensor(log_sigmas)
        log_sigma = torch.log(torch.clamp(sigma.reshape(-1), min=1e-10))
        dists = log_sigma[None, :] - logs[:, None]
        low = torch.cumsum((dists >= 0).long(), dim=0).argmax(dim=0).clamp(max=logs.shape[0] - 2)
        high = low + 1
        w = ((logs[low] - log_sigma) / (logs[low] - logs[high])).clamp(0, 1)
        return ((1 - w) * low + w * high).reshape(sigma.shape)
    sigma = np.asarray(sigma)
    log_sigmas = np.asarray(log_sigmas)
    flat = sigma.reshape(-1)
    log_sigma = np.log(np.maximum(flat, 1e-10))
    dists = log_sigma[None, :] - log_sigmas[:, None]
    low = np.cumsum(dists >= 0, axis=0).argmax(axis=0).clip(max=log_sigmas.shape[0] - 2)
    high = low + 1
    w = (log_sigmas[low] - log_sigma) / (log_sigmas[low] - log_sigmas[high])
    w = np.clip(w, 0, 1)
    return ((1 - w) * low + w * high).reshape(sigma.shape)
