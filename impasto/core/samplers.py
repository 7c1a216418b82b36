"""Sampler maths shared by the schedulers, as small pure functions on tensors.

Two parameterisations appear in diffusers' schedulers:
- "alpha" form (DDPM, DDIM, PNDM, LCM): x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps, with a_t = alphas_cumprod[t];
- "sigma" form (Euler, Heun, LMS, KDPM2, ...): x = x0 + sigma eps, with sigma = sqrt((1 - a_t) / a_t); the
  model sees x / sqrt(sigma^2 + 1), which is the alpha-form sample.
Every function keeps diffusers' order of operations, so results agree to float rounding.
"""
from __future__ import annotations

import numpy as np
import torch


# ---- what the model predicts -> x0 ------------------------------------------------------------------------
def alpha_predictions(model_output, sample, alpha_prod_t, prediction_type: str):
    """(x0, eps) from a model output in the alpha form; prediction_type is epsilon | sample | v_prediction."""
    beta_prod_t = 1 - alpha_prod_t
    if prediction_type == "epsilon":
        return (sample - beta_prod_t**0.5 * model_output) / alpha_prod_t**0.5, model_output
    if prediction_type == "sample":
        return model_output, (sample - alpha_prod_t**0.5 * model_output) / beta_prod_t**0.5
    if prediction_type == "v_prediction":
        x0 = alpha_prod_t**0.5 * sample - beta_prod_t**0.5 * model_output
        return x0, alpha_prod_t**0.5 * model_output + beta_prod_t**0.5 * sample
    raise ValueError(f"prediction_type={prediction_type!r}: expected 'epsilon', 'sample' or 'v_prediction'")


def sigma_x0(model_output, sample, sigma, prediction_type: str):
    """x0 from a model output in the sigma form (sample = x0 + sigma * eps, unscaled)."""
    if prediction_type == "epsilon":
        return sample - sigma * model_output
    if prediction_type == "v_prediction":
        return model_output * (-sigma / (sigma**2 + 1) ** 0.5) + sample / (sigma**2 + 1)
    if prediction_type in ("sample", "original_sample"):
        return model_output
    raise ValueError(f"prediction_type={prediction_type!r}: expected 'epsilon', 'sample' or 'v_prediction'")


def threshold_sample(sample: torch.Tensor, ratio: float, max_value: float) -> torch.Tensor:
    """Dynamic thresholding (Imagen): clamp each sample to its `ratio` quantile of |x| (at least 1, at most
    `max_value`) and divide by it."""
    dtype = sample.dtype
    batch, channels, *rest = sample.shape
    if dtype not in (torch.float32, torch.float64):
        sample = sample.float()
    flat = sample.reshape(batch, channels * int(np.prod(rest)))
    s = torch.quantile(flat.abs(), ratio, dim=1).clamp(min=1, max=max_value).unsqueeze(1)
    flat = torch.clamp(flat, -s, s) / s
    return flat.reshape(batch, channels, *rest).to(dtype)


def clip_or_threshold(x0, config):
    """Apply a scheduler config's `thresholding` or `clip_sample` (+ range) to a predicted x0."""
    if config.get("thresholding", False):
        return threshold_sample(x0, config["dynamic_thresholding_ratio"], config["sample_max_value"])
    if config.get("clip_sample", False):
        return x0.clamp(-config["clip_sample_range"], config["clip_sample_range"])
    return x0


# ---- alpha-form steps ---------------------------------------------------------------------------------------
def ddim_variance(alpha_prod_t, alpha_prod_t_prev):
    """sigma_t^2 of DDIM (eq. 16 of arXiv:2010.02502) before scaling by eta^2."""
    return (1 - alpha_prod_t_prev) / (1 - alpha_prod_t) * (1 - alpha_prod_t / alpha_prod_t_prev)


def ddim_step(x0, eps, alpha_prod_t_prev, std_dev_t):
    """Deterministic part of the DDIM update: sqrt(a_prev) x0 + sqrt(1 - a_prev - std^2) eps."""
    direction = (1 - alpha_prod_t_prev - std_dev_t**2) ** 0.5 * eps
    return alpha_prod_t_prev**0.5 * x0 + direction


def ddpm_posterior_mean(x0, sample, alpha_prod_t, alpha_prod_t_prev):
    """Mean of q(x_prev | x_t, x0) (eq. 7 of arXiv:2006.11239)."""
    beta_prod_t, beta_prod_t_prev = 1 - alpha_prod_t, 1 - alpha_prod_t_prev
    alpha_t = alpha_prod_t / alpha_prod_t_prev
    x0_coeff = alpha_prod_t_prev**0.5 * (1 - alpha_t) / beta_prod_t
    sample_coeff = alpha_t**0.5 * beta_prod_t_prev / beta_prod_t
    return x0_coeff * x0 + sample_coeff * sample


def pndm_transfer(sample, eps, alpha_prod_t, alpha_prod_t_prev):
    """PNDM's transfer phi(x_t, eps, t, t_prev) (eq. 9 of arXiv:2202.09778)."""
    beta_prod_t, beta_prod_t_prev = 1 - alpha_prod_t, 1 - alpha_prod_t_prev
    sample_coeff = (alpha_prod_t_prev / alpha_prod_t) ** 0.5
    denom = alpha_prod_t * beta_prod_t_prev**0.5 + (alpha_prod_t * beta_prod_t * alpha_prod_t_prev) ** 0.5
    return sample_coeff * sample - (alpha_prod_t_prev - alpha_prod_t) * eps / denom


def adams_bashforth(ets: list):
    """Linear multistep combination of the last 1-4 eps (newest last), as PLMS uses."""
    if len(ets) == 1:
        return ets[-1]
    if len(ets) == 2:
        return (3 * ets[-1] - ets[-2]) / 2
    if len(ets) == 3:
        return (23 * ets[-1] - 16 * ets[-2] + 5 * ets[-3]) / 12
    return 1 / 24 * (55 * ets[-1] - 59 * ets[-2] + 37 * ets[-3] - 9 * ets[-4])


def _expand(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    values = values.flatten()
    return values.reshape(values.shape + (1,) * (like.ndim - 1))


def add_noise_alpha(alphas_cumprod: torch.Tensor, original, noise, timesteps) -> torch.Tensor:
    """Forward process q(x_t | x0) at integer timesteps: sqrt(a_t) x0 + sqrt(1 - a_t) noise."""
    a = alphas_cumprod.to(device=original.device, dtype=original.dtype)[timesteps.to(original.device)]
    return _expand(a**0.5, original) * original + _expand((1 - a) ** 0.5, original) * noise


def velocity_alpha(alphas_cumprod: torch.Tensor, sample, noise, timesteps) -> torch.Tensor:
    """v-prediction target: sqrt(a_t) noise - sqrt(1 - a_t) x0."""
    a = alphas_cumprod.to(device=sample.device, dtype=sample.dtype)[timesteps.to(sample.device)]
    return _expand(a**0.5, sample) * noise - _expand((1 - a) ** 0.5, sample) * sample


def add_noise_sigma(sigmas: torch.Tensor, original, noise) -> torch.Tensor:
    """Forward process in the sigma form: x0 + sigma noise (one sigma per sample)."""
    return original + noise * _expand(sigmas, original)


# ---- sigma-form steps ---------------------------------------------------------------------------------------
def euler_step(sample, x0, sigma_hat, sigma_next):
    """One Euler step of the probability-flow ODE dx/dsigma = (x - x0) / sigma, from sigma_hat to sigma_next."""
    derivative = (sample - x0) / sigma_hat
    return sample + derivative * (sigma_next - sigma_hat)


def ancestral_sigmas(sigma_from, sigma_to):
    """(sigma_up, sigma_down) of an ancestral step (k-diffusion, eta = 1): deterministic step to sigma_down,
    then fresh noise of std sigma_up, so that sigma_down^2 + sigma_up^2 = sigma_to^2."""
    sigma_up = (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5
    sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
    return sigma_up, sigma_down


def heun_correct(first_derivative, second_derivative):
    """Heun's second-order correction: the mean of the slopes at both ends."""
    return (first_derivative + second_derivative) / 2


def lms_coefficient(sigmas, order: int, t: int, current_order: int) -> float:
    """Integral from sigmas[t] to sigmas[t+1] of the Lagrange basis polynomial that is 1 at
    sigmas[t - current_order] and 0 at the other sigmas[t - k], k < order (exact Gauss-Legendre quadrature)."""
    s = [float(v) for v in sigmas]
    a, b = s[t], s[t + 1]
    nodes, weights = np.polynomial.legendre.leggauss(max(order, 1))
    tau = 0.5 * (b - a) * nodes + 0.5 * (a + b)
    prod = np.ones_like(tau)
    for k in range(order):
        if k != current_order:
            prod *= (tau - s[t - k]) / (s[t - current_order] - s[t - k])
    return float(0.5 * (b - a) * np.sum(weights * prod))
