"""core/schedule.py against diffusers' formulas, and the beta distribution maths against closed forms."""
import math
import types

import numpy as np
import pytest
import torch

import diffusers
import impasto
from diffusers.schedulers import scheduling_euler_discrete as d_euler
from impasto.core import schedule as S
from sched_utils import compare

torch.set_num_threads(1)
# diffusers' schedulers call numpy on tensors, which floods the log with numpy 2 deprecation notices
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.mark.parametrize("schedule", ["linear", "scaled_linear", "squaredcos_cap_v2", "exp", "laplace", "sigmoid"])
def test_betas_equal_diffusers(schedule):
    if schedule in ("laplace", "sigmoid"):
        theirs = diffusers.DDPMScheduler(beta_schedule=schedule, beta_start=0.0001, beta_end=0.02).betas
    elif schedule == "exp":
        theirs = diffusers.HeunDiscreteScheduler(beta_schedule="exp").betas
    else:
        theirs = diffusers.DDIMScheduler(beta_schedule=schedule, beta_start=0.0001, beta_end=0.02).betas
    allowed = S.BETA_SCHEDULES + ("exp", "laplace", "sigmoid")
    ours = S.make_betas(schedule, 0.0001, 0.02, 1000, allowed=allowed)
    assert ours.dtype == torch.float32
    assert torch.equal(ours, theirs)
    if schedule != "exp":  # exp's last alpha_cumprod underflows; diffusers never rescales it
        assert torch.equal(S.rescale_zero_terminal_snr(ours), d_euler.rescale_zero_terminal_snr(theirs))
        assert S.alphas_cumprod(S.rescale_zero_terminal_snr(ours))[-1].item() == pytest.approx(0.0, abs=1e-9)


def test_trained_betas_and_unknown_schedule():
    betas = np.linspace(1e-4, 2e-2, 50)
    assert torch.equal(S.make_betas("ignored", 0, 0, 50, trained_betas=betas), torch.tensor(betas, dtype=torch.float32))
    with pytest.raises(ValueError, match="beta_schedule.*'linear'"):
        S.make_betas("cubic", 1e-4, 2e-2, 1000)


@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
def test_spaced_timesteps_equal_diffusers(spacing):
    for n in (1, 3, 7, 10, 50, 333, 1000):
        ddim = diffusers.DDIMScheduler(timestep_spacing=spacing, steps_offset=1 if spacing == "leading" else 0)
        ddim.set_timesteps(n)
        ours = S.spaced_timesteps(spacing, n, 1000, ddim.config.steps_offset)
        assert np.array_equal(np.round(ours).astype(np.int64), ddim.timesteps.numpy()), (spacing, n)
        euler = diffusers.EulerDiscreteScheduler(timestep_spacing=spacing, steps_offset=ddim.config.steps_offset)
        euler.set_timesteps(n)
        assert np.array_equal(ours.astype(np.float32), euler.timesteps.numpy()), (spacing, n)
    with pytest.raises(ValueError, match="timestep_spacing"):
        S.spaced_timesteps("even", 10, 1000)


def test_sigma_ladders_and_sigma_to_t_equal_diffusers():
    d = diffusers.EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    train = S.sigmas_from_alphas_cumprod(d.alphas_cumprod).numpy()
    log_sigmas = np.log(train)
    lo, hi = float(train[0]), float(train[-1])
    for n in (2, 10, 31):
        assert np.array_equal(S.karras_sigmas(lo, hi, n), d._convert_to_karras(np.array([hi, lo]), n))
        assert np.array_equal(S.exponential_sigmas(lo, hi, n), d._convert_to_exponential(np.array([hi, lo]), n))
    rng = np.random.default_rng(0)
    for dtype in (np.float64, np.float32):
        sig = np.concatenate([rng.uniform(0.001, 20.0, 50), [0.0, lo, hi]]).astype(dtype)
        theirs = np.array([d._sigma_to_t(s, log_sigmas) for s in sig])
        np.testing.assert_array_equal(S.sigma_to_t(sig, log_sigmas), theirs)
    # torch path (used by KDPM2): float32 arithmetic like diffusers' call on tensors
    sig_t = torch.tensor([0.5, 3.0, 14.0])
    t = S.sigma_to_t(sig_t, torch.from_numpy(log_sigmas))
    assert t.dtype == torch.float32
    np.testing.assert_allclose(t.numpy(), S.sigma_to_t(sig_t.numpy(), log_sigmas), rtol=1e-6)
    # round trip: the log-interpolated sigma at t(sigma) is sigma
    t = S.sigma_to_t(np.array([0.1, 1.0, 10.0]), log_sigmas)
    back = np.exp(np.interp(t, np.arange(1000), log_sigmas))
    np.testing.assert_allclose(back, [0.1, 1.0, 10.0], rtol=1e-6)


def test_beta_distribution():
    # Beta(1/2, 1/2) is the arcsine law: cdf = 2/pi asin(sqrt(x)), ppf = sin(pi q / 2)^2
    for x in (1e-4, 0.1, 0.37, 0.5, 0.8, 0.999):
        assert S.beta_cdf(x, 0.5, 0.5) == pytest.approx(2 / math.pi * math.asin(math.sqrt(x)), abs=1e-12)
    for q in (0.01, 0.25, 0.5, 0.9):
        assert S.beta_ppf(q, 0.5, 0.5) == pytest.approx(math.sin(math.pi * q / 2) ** 2, abs=1e-12)
    # Beta(2, 3): cdf is a polynomial
    x = 0.3
    assert S.beta_cdf(x, 2, 3) == pytest.approx(6 * x**2 - 8 * x**3 + 3 * x**4, abs=1e-12)
    for q in (0.05, 0.3, 0.5, 0.95):
        assert S.beta_cdf(S.beta_ppf(q, 0.6, 0.6), 0.6, 0.6) == pytest.approx(q, abs=1e-12)
    ladder = S.beta_sigmas(0.03, 14.6, 9)
    assert ladder[0] == pytest.approx(14.6) and ladder[-1] == pytest.approx(0.03)
    assert np.all(np.diff(ladder) < 0)
    assert ladder[4] == pytest.approx((14.6 + 0.03) / 2)  # symmetric law: the median is the middle


@pytest.fixture
def diffusers_with_beta_ppf(monkeypatch):
    """diffusers needs scipy for beta sigmas; give it impasto's ppf so the rest of its code path can be compared."""
    from diffusers.schedulers import scheduling_heun_discrete as d_heun

    fake = types.SimpleNamespace(stats=types.SimpleNamespace(beta=types.SimpleNamespace(ppf=S.beta_ppf)))
    for mod in (d_euler, d_heun):
        monkeypatch.setattr(mod, "is_scipy_available", lambda: True)
        monkeypatch.setattr(mod, "scipy", fake, raising=False)


@pytest.mark.parametrize("name", ["EulerDiscreteScheduler", "HeunDiscreteScheduler"])
def test_beta_sigmas_wiring(diffusers_with_beta_ppf, name):
    compare(getattr(impasto, name)(use_beta_sigmas=True), getattr(diffusers, name)(use_beta_sigmas=True), 8)
