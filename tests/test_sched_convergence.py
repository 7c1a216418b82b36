"""Each deterministic sampler converges to the exact probability-flow ODE solution at its promised order.

Data x0 ~ N(MU, S^2) elementwise: the exact denoiser is E[x0 | x0 + sigma n = x] = MU + S^2/(S^2+sigma^2) (x - MU),
and the ODE maps x(sigma_max) to MU + (x - MU) S / sqrt(S^2 + sigma_max^2) at sigma = 0.
"""
import math

import numpy as np
import pytest
import torch

import impasto

torch.set_num_threads(1)
MU, S = 0.5, 0.5
STEPS = [5, 10, 20, 40]


def gaussian_model(scheduler, prediction_type):
    """The exact model for the Gaussian data: input x / sqrt(sigma^2 + 1) at timestep t, sigma(t) read on the
    training log-sigmas (the inverse of the schedulers' sigma -> t map)."""
    a = scheduler.alphas_cumprod.double()
    log_sigmas = torch.log(((1 - a) / a) ** 0.5).numpy()

    def model(x_in, t):
        sigma = math.exp(np.interp(float(t), np.arange(len(log_sigmas)), log_sigmas))
        x = x_in.double() * (sigma**2 + 1) ** 0.5
        x0 = MU + S**2 / (S**2 + sigma**2) * (x - MU)
        eps = (x - x0) / sigma
        if prediction_type == "epsilon":
            out = eps
        elif prediction_type == "sample":
            out = x0
        else:
            alpha = 1 / (sigma**2 + 1)
            out = alpha**0.5 * eps - (1 - alpha) ** 0.5 * x0
        return out.to(x_in.dtype)

    return model, math.exp(log_sigmas[-1])


def final_error(name, n, prediction_type="epsilon", **config):
    scheduler = getattr(impasto, name)(prediction_type=prediction_type, **config)
    model, sigma_max = gaussian_model(scheduler, prediction_type)
    scheduler.set_timesteps(n)
    z = torch.randn(64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    if hasattr(scheduler, "sigmas"):  # sigma form: x = x0 + sigma * noise, scaled by init_noise_sigma
        assert float(scheduler.sigmas[0]) == pytest.approx(sigma_max, rel=1e-5)
        x = z * float(scheduler.init_noise_sigma)
    else:  # alpha form, starting at t = 999 (trailing spacing)
        assert int(scheduler.timesteps[0]) == 999
        x = z * sigma_max / (sigma_max**2 + 1) ** 0.5
    x = x.float()
    for t in scheduler.timesteps:
        x = scheduler.step(model(scheduler.scale_model_input(x, t), t), t, x).prev_sample
    exact = MU + (z * sigma_max - MU) * S / (S**2 + sigma_max**2) ** 0.5
    return (x.double() - exact).abs().max().item()


CASES = [
    # name, config, prediction type, (min order, max order)
    ("EulerDiscreteScheduler", dict(use_karras_sigmas=True), "epsilon", (0.8, 1.3)),
    ("EulerDiscreteScheduler", dict(timestep_spacing="trailing"), "v_prediction", (0.8, 1.3)),
    ("DDIMScheduler", dict(timestep_spacing="trailing", clip_sample=False), "epsilon", (0.8, 1.3)),
    ("DDIMScheduler", dict(timestep_spacing="trailing", clip_sample=False), "sample", (0.8, 1.3)),
    ("HeunDiscreteScheduler", dict(use_karras_sigmas=True), "epsilon", (1.8, 4.0)),
    ("HeunDiscreteScheduler", dict(use_karras_sigmas=True), "v_prediction", (1.8, 4.0)),
    ("KDPM2DiscreteScheduler", dict(use_karras_sigmas=True), "epsilon", (1.8, 4.0)),
    ("LMSDiscreteScheduler", dict(use_karras_sigmas=True), "epsilon", (2.0, 5.0)),
    ("PNDMScheduler", dict(timestep_spacing="trailing", skip_prk_steps=True), "epsilon", (1.8, 5.0)),
]


@pytest.mark.parametrize("name,config,prediction_type,orders", CASES, ids=lambda v: str(v) if isinstance(v, str) else "")
def test_converges_at_promised_order(name, config, prediction_type, orders):
    errors = [final_error(name, n, prediction_type, **config) for n in STEPS]
    assert all(e1 > e2 for e1, e2 in zip(errors, errors[1:])), errors
    # least-squares slope of log error against log steps over the finer three
    slope = -np.polyfit(np.log(STEPS[1:]), np.log(errors[1:]), 1)[0]
    lo, hi = orders
    assert lo <= slope <= hi, (slope, errors)
