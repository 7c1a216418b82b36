"""impasto's schedulers against diffusers' on the same fake model: equal timesteps, sigmas and samples."""
import pytest
import torch

import diffusers
import impasto
from sched_utils import compare, diffusers_lms

torch.set_num_threads(1)
# diffusers' schedulers call numpy on tensors, which floods the log with numpy 2 deprecation notices
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

SIGMA_LADDERS = [dict(use_karras_sigmas=True), dict(use_exponential_sigmas=True)]
SPACINGS = [
    dict(timestep_spacing="linspace"),
    dict(timestep_spacing="leading", steps_offset=1),
    dict(timestep_spacing="trailing"),
]
PREDICTIONS = [dict(prediction_type="v_prediction"), dict(prediction_type="sample")]
ZERO_SNR = [dict(rescale_betas_zero_snr=True, timestep_spacing="trailing", prediction_type="v_prediction")]
SD = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
KDPM2_CASES = [
    {},
    dict(timestep_spacing="leading", steps_offset=1, prediction_type="v_prediction"),
    dict(timestep_spacing="trailing", use_karras_sigmas=True, **SD),
    dict(timestep_spacing="linspace", use_exponential_sigmas=True),
]

CASES = {
    "DDIMScheduler": [{}, SD, *SPACINGS, *PREDICTIONS, *ZERO_SNR, dict(clip_sample=False),
                      dict(set_alpha_to_one=False, **SD), dict(thresholding=True, sample_max_value=1.5),
                      dict(beta_schedule="squaredcos_cap_v2", clip_sample_range=0.5)],
    "DDPMScheduler": [{}, *SPACINGS, *PREDICTIONS, *ZERO_SNR, dict(variance_type="fixed_large"),
                      dict(variance_type="fixed_small_log", clip_sample=False), dict(thresholding=True),
                      dict(beta_schedule="sigmoid")],
    "PNDMScheduler": [{}, dict(skip_prk_steps=True, **SD), dict(skip_prk_steps=True, steps_offset=1),
                      dict(timestep_spacing="trailing", prediction_type="v_prediction"),
                      dict(timestep_spacing="linspace", set_alpha_to_one=True)],
    "LMSDiscreteScheduler": [{}, SD, *SPACINGS, *PREDICTIONS, *SIGMA_LADDERS],
    "EulerDiscreteScheduler": [{}, SD, *SPACINGS, *PREDICTIONS, *SIGMA_LADDERS, *ZERO_SNR,
                               dict(final_sigmas_type="sigma_min", use_karras_sigmas=True),
                               dict(interpolation_type="log_linear"),
                               dict(timestep_type="continuous", prediction_type="v_prediction"),
                               dict(use_karras_sigmas=True, sigma_min=0.1, sigma_max=10.0)],
    "EulerAncestralDiscreteScheduler": [{}, SD, *SPACINGS, PREDICTIONS[0], *ZERO_SNR],
    "HeunDiscreteScheduler": [{}, SD, *SPACINGS, *PREDICTIONS, *SIGMA_LADDERS, dict(clip_sample=True),
                              dict(beta_schedule="exp")],
    # diffusers' KDPM2 takes seconds to build: fewer, combined cases
    "KDPM2DiscreteScheduler": KDPM2_CASES,
    "KDPM2AncestralDiscreteScheduler": KDPM2_CASES,
}


def _pair(name, kw):
    theirs = diffusers_lms() if name == "LMSDiscreteScheduler" else getattr(diffusers, name)
    return getattr(impasto, name)(**kw), theirs(**kw)


@pytest.mark.parametrize("name,kw", [(n, kw) for n, cases in CASES.items() for kw in cases],
                         ids=lambda v: v if isinstance(v, str) else "-".join(f"{k}={v[k]}" for k in v) or "default")
def test_same_schedule_and_samples(name, kw):
    ours, theirs = _pair(name, kw)
    for n in (10, 7):
        compare(ours, theirs, n)


@pytest.mark.parametrize("name", ["EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler",
                                  "HeunDiscreteScheduler", "KDPM2DiscreteScheduler",
                                  "KDPM2AncestralDiscreteScheduler", "LMSDiscreteScheduler", "LCMScheduler"])
def test_img2img_begin_index(name):
    ours, theirs = _pair(name, {})
    begin = 2 * ours.order
    n = 4 if name == "LCMScheduler" else 10
    compare(ours, theirs, n, begin_index=begin)
    # add_noise at the begin index, as img2img pipelines use it
    ours.set_timesteps(n)
    theirs.set_timesteps(n)
    for s in (ours, theirs):
        s.set_begin_index(begin)
    x0 = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(3))
    noise = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(4))
    t = ours.timesteps[begin:begin + 1].repeat(2)
    torch.testing.assert_close(ours.add_noise(x0, noise, t), theirs.add_noise(x0, noise, t))


def test_ddim_eta_and_clipped_output():
    for step_kwargs in (dict(eta=0.5), dict(eta=1.0, use_clipped_model_output=True)):
        compare(*_pair("DDIMScheduler", {}), 10, step_kwargs=step_kwargs)
    compare(*_pair("DDIMScheduler", dict(timestep_spacing="trailing", **SD)), 5, step_kwargs=dict(eta=0.3))


def test_euler_churn_draws_noise_like_diffusers():
    compare(*_pair("EulerDiscreteScheduler", {}), 10, step_kwargs=dict(s_churn=1.0, s_tmin=0.5, s_tmax=10.0))


@pytest.mark.parametrize("name,set_kwargs", [
    ("EulerDiscreteScheduler", dict(timesteps=[999, 800, 500, 250, 50])),
    ("EulerDiscreteScheduler", dict(sigmas=[14.0, 6.0, 2.0, 0.5, 0.1, 0.0])),
    ("HeunDiscreteScheduler", dict(timesteps=[999, 700, 400, 100])),
    ("DDPMScheduler", dict(timesteps=[999, 600, 300, 50, 0])),
    ("LCMScheduler", dict(timesteps=[999, 759, 499, 259])),
])
def test_custom_timesteps_and_sigmas(name, set_kwargs):
    compare(*_pair(name, {}), set_kwargs=set_kwargs)


@pytest.mark.parametrize("kw,n", [({}, 4), (dict(prediction_type="v_prediction", rescale_betas_zero_snr=True), 8),
                                  (dict(clip_sample=True, set_alpha_to_one=False), 4),
                                  (dict(original_inference_steps=100, timestep_scaling=5.0), 2),
                                  (dict(thresholding=True), 4)])
def test_lcm(kw, n):
    compare(*_pair("LCMScheduler", kw), n)
    compare(*_pair("LCMScheduler", kw), set_kwargs=dict(num_inference_steps=n, strength=0.5))


@pytest.mark.parametrize("name", ["DDIMScheduler", "DDPMScheduler", "PNDMScheduler", "LCMScheduler"])
def test_alpha_add_noise_and_velocity(name):
    ours, theirs = _pair(name, dict(beta_schedule="scaled_linear"))
    x0 = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0, 500, 999])
    torch.testing.assert_close(ours.add_noise(x0, noise, t), theirs.add_noise(x0, noise, t))
    if hasattr(theirs, "get_velocity"):
        torch.testing.assert_close(ours.get_velocity(x0, noise, t), theirs.get_velocity(x0, noise, t))


def test_initial_state_matches():
    for name in CASES:
        ours, theirs = _pair(name, {})
        if name != "PNDMScheduler":
            assert ours.timesteps.shape == theirs.timesteps.shape, name
            torch.testing.assert_close(ours.timesteps.double(), theirs.timesteps.double(), atol=1e-4, rtol=0)
        assert float(ours.init_noise_sigma) == pytest.approx(float(theirs.init_noise_sigma), rel=1e-6), name
        assert ours.order == theirs.order and len(ours) == len(theirs)
        torch.testing.assert_close(ours.alphas_cumprod, theirs.alphas_cumprod)


@pytest.mark.parametrize("variance_type", ["learned", "learned_range"])
def test_ddpm_learned_variance(variance_type):
    """Models that predict their variance return 2x channels: eps and the variance (interpolation) values."""
    ours, theirs = _pair("DDPMScheduler", dict(variance_type=variance_type))
    results = []
    for s in (ours, theirs):
        s.set_timesteps(5)
        x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
        gen = torch.Generator().manual_seed(1)
        for t in s.timesteps:
            eps = torch.tanh(x)
            var = torch.full_like(x, 0.3) if variance_type == "learned_range" else torch.full_like(x, 0.01)
            x = s.step(torch.cat([eps, var], dim=1), t, x, generator=gen).prev_sample
        results.append(x)
    torch.testing.assert_close(results[0], results[1])


def test_few_steps():
    for name in CASES:
        kw = dict(skip_prk_steps=True) if name == "PNDMScheduler" else {}
        ours, theirs = _pair(name, kw)
        for n in (1, 2, 3):
            compare(ours, theirs, n)
    with pytest.raises(ValueError, match="skip_prk_steps"):
        impasto.PNDMScheduler().set_timesteps(3)


@pytest.mark.parametrize("name", ["EulerAncestralDiscreteScheduler", "DDPMScheduler"])
def test_generator_per_sample(name):
    """A list of generators seeds each sample of the batch on its own, as diffusers' randn_tensor does."""
    ours, theirs = _pair(name, {})
    results = []
    for s in (ours, theirs):
        s.set_timesteps(5)
        x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0)) * s.init_noise_sigma
        gens = [torch.Generator().manual_seed(10), torch.Generator().manual_seed(11)]
        for t in s.timesteps:
            x = s.step(torch.tanh(s.scale_model_input(x, t)), t, x, generator=gens).prev_sample
        results.append(x)
    torch.testing.assert_close(results[0], results[1])
