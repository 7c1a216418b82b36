"""DEISMultistepScheduler and TCDScheduler against diffusers: same timesteps, sigmas and samples on the fake model
(and the same noise for TCD's gamma > 0 from the same generator), through StableDiffusionPipeline too; configs,
swaps and bad input."""
import json

import pytest
import torch

import diffusers
import impasto
from impasto.schedulers.tcd import TCDSchedulerOutput
from impasto.tasks.denoise import step_kwargs
from sched_utils import SHAPE, compare, run_loop

torch.set_num_threads(1)
# diffusers' DEIS calls numpy on tensors (numpy 2 deprecation notices)
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

SD = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
PROMPT = "a red square on a blue circle"


def _own(config):
    return {k: v for k, v in config.items() if not k.startswith("_")}


def deis(**config):
    return impasto.DEISMultistepScheduler(**config), diffusers.DEISMultistepScheduler(**config)


def tcd(**config):
    return impasto.TCDScheduler(**config), diffusers.TCDScheduler(**config)


# ---- DEIS ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("lower_order_final", [True, False])
def test_deis_orders(order, lower_order_final):
    for steps in (4, 10, 18):  # 18: lower_order_final only acts below 15 steps
        compare(*deis(solver_order=order, lower_order_final=lower_order_final), steps)


@pytest.mark.parametrize("config", [
    dict(use_karras_sigmas=True, solver_order=3),
    dict(use_karras_sigmas=True, **SD),
    dict(use_exponential_sigmas=True),
    dict(use_beta_sigmas=True, solver_order=3),
    dict(timestep_spacing="linspace", steps_offset=1),
    dict(timestep_spacing="leading", steps_offset=1, **SD),
    dict(timestep_spacing="trailing", solver_order=3),
    dict(prediction_type="v_prediction", **SD),
    dict(prediction_type="sample", thresholding=True, sample_max_value=1.5, solver_order=3),
    dict(thresholding=True, dynamic_thresholding_ratio=0.9),
    dict(beta_schedule="squaredcos_cap_v2", solver_order=3),
    dict(use_flow_sigmas=True, prediction_type="flow_prediction", flow_shift=3.0, solver_order=3),
])
def test_deis_options(config):
    for steps in (7, 12):
        compare(*deis(**config), steps)


def test_deis_dynamic_shift_mu():
    config = dict(use_flow_sigmas=True, prediction_type="flow_prediction", use_dynamic_shifting=True)
    compare(*deis(**config), set_kwargs=dict(num_inference_steps=6, mu=0.7))


def test_deis_img2img_begin_index_and_add_noise():
    ours, theirs = deis(solver_order=3, **SD)
    compare(ours, theirs, 10, begin_index=4)
    x0 = torch.randn(SHAPE, generator=torch.Generator().manual_seed(3))
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(4))
    for begin in (None, 3):
        for s in (ours, theirs):
            s.set_timesteps(10)
            if begin is not None:
                s.set_begin_index(begin)
        t = ours.timesteps[[3, 6]]
        torch.testing.assert_close(ours.add_noise(x0, noise, t), theirs.add_noise(x0, noise, t.clone()))
    assert torch.equal(ours.scale_model_input(x0, t[0]), x0)


def test_deis_state_matches():
    ours, theirs = deis(**SD)
    for name in ("alphas_cumprod", "alpha_t", "sigma_t", "lambda_t", "sigmas", "timesteps"):
        torch.testing.assert_close(getattr(ours, name).double(), getattr(theirs, name).double(), msg=name)
    assert ours.init_noise_sigma == theirs.init_noise_sigma == 1.0
    assert ours.order == theirs.order == 1 and len(ours) == len(theirs) == 1000
    # the deprecated positional form convert_model_output(output, timestep, sample) still works
    ours.set_timesteps(5)
    ours._init_step_index(ours.timesteps[0])
    x = torch.randn(SHAPE)
    assert torch.equal(ours.convert_model_output(x, None, x), ours.convert_model_output(x, sample=x))


@pytest.mark.parametrize("source,target", [
    ("DPMSolverMultistepScheduler", "DEISMultistepScheduler"),
    ("UniPCMultistepScheduler", "DEISMultistepScheduler"),
    ("DEISMultistepScheduler", "DPMSolverMultistepScheduler"),
    ("DEISMultistepScheduler", "UniPCMultistepScheduler"),
    ("PNDMScheduler", "DEISMultistepScheduler"),
])
def test_deis_swaps_like_diffusers(source, target):
    kw = dict(SD, solver_order=3) if source != "PNDMScheduler" else dict(SD, skip_prk_steps=True, steps_offset=1)
    ours = getattr(impasto, target).from_config(getattr(impasto, source)(**kw).config)
    theirs = getattr(diffusers, target).from_config(getattr(diffusers, source)(**kw).config)
    for key, value in _own(theirs.config).items():
        assert ours.config[key] == value, key
    compare(ours, theirs, 8)


# ---- TCD ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("gamma", [0.0, 0.3, 0.7, 1.0])
def test_tcd_gamma_and_seeds(gamma):
    for seed in (0, 1, 7):
        compare(*tcd(), 4, seed=seed, step_kwargs=dict(eta=gamma))
    if gamma > 0:  # the noise really comes from the generator
        a = run_loop(impasto.TCDScheduler(), 4, seed=0, step_kwargs=dict(eta=gamma))[2]
        b = run_loop(impasto.TCDScheduler(), 4, seed=1, step_kwargs=dict(eta=gamma))[2]
        assert not torch.allclose(a, b)


@pytest.mark.parametrize("config,set_kwargs", [
    ({}, dict(num_inference_steps=1)),
    ({}, dict(num_inference_steps=8)),
    (dict(original_inference_steps=100), dict(num_inference_steps=6)),
    ({}, dict(num_inference_steps=6, original_inference_steps=100)),  # explicit: every training timestep
    ({}, dict(num_inference_steps=4, strength=0.5)),
    ({}, dict(num_inference_steps=3, original_inference_steps=20, strength=0.6)),
    (dict(prediction_type="v_prediction", rescale_betas_zero_snr=True, timestep_spacing="trailing"),
     dict(num_inference_steps=4)),
    (dict(prediction_type="sample", beta_schedule="linear", beta_start=0.0001, beta_end=0.02),
     dict(num_inference_steps=4)),
    (dict(set_alpha_to_one=False, steps_offset=1), dict(num_inference_steps=5)),
    ({}, dict(timesteps=[999, 759, 499, 259])),
    ({}, dict(timesteps=[999, 700, 450, 300, 100], strength=0.6)),
])
def test_tcd_schedules(config, set_kwargs):
    for gamma in (0.3, 0.8):
        compare(*tcd(**config), set_kwargs=set_kwargs, step_kwargs=dict(eta=gamma))


def test_tcd_outputs_img2img_and_noise_helpers():
    ours, theirs = tcd()
    compare(ours, theirs, 6, begin_index=2)
    for s in (ours, theirs):
        s.set_timesteps(4)
    x, t = torch.randn(SHAPE), ours.timesteps[0]
    a = ours.step(x, t, x, eta=0.0)
    b = theirs.step(x, t, x, eta=0.0)
    assert isinstance(a, TCDSchedulerOutput)
    torch.testing.assert_close(a.pred_noised_sample, b.pred_noised_sample)
    prev, noised = ours.step(x, ours.timesteps[1], x, eta=0.0, return_dict=False)
    assert noised.shape == prev.shape == SHAPE
    x0 = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(1))
    ts = torch.tensor([0, 500, 999])
    torch.testing.assert_close(ours.add_noise(x0, noise, ts), theirs.add_noise(x0, noise, ts))
    torch.testing.assert_close(ours.get_velocity(x0, noise, ts), theirs.get_velocity(x0, noise, ts))
    assert ours.previous_timestep(ours.timesteps[1]) == theirs.previous_timestep(theirs.timesteps[1])
    assert ours.init_noise_sigma == theirs.init_noise_sigma and ours.order == theirs.order == 1
    # pipelines pass their eta (TCD's gamma) and generator, as diffusers' prepare_extra_step_kwargs does
    assert set(step_kwargs(ours, None, 0.3)) == {"eta", "generator"}


def test_tcd_generator_per_sample():
    results = []
    for s in tcd():
        s.set_timesteps(4)
        x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
        gens = [torch.Generator().manual_seed(10), torch.Generator().manual_seed(11)]
        for t in s.timesteps:
            x = s.step(torch.tanh(x), t, x, eta=0.5, generator=gens).prev_sample
        results.append(x)
    torch.testing.assert_close(results[0], results[1])


# ---- configs shared by both -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["DEISMultistepScheduler", "TCDScheduler"])
def test_config_round_trips_and_compatibles(name, tmp_path):
    ours = getattr(impasto, name)(prediction_type="v_prediction", steps_offset=1, **SD)
    ours.save_pretrained(tmp_path / "ours")
    assert json.loads((tmp_path / "ours" / "scheduler_config.json").read_text())["_class_name"] == name
    theirs = getattr(diffusers, name).from_pretrained(tmp_path / "ours")
    assert _own(theirs.config) == _own(ours.config)
    theirs.save_pretrained(tmp_path / "back")
    back = getattr(impasto, name).from_pretrained(tmp_path / "back")
    assert _own(back.config) == _own(ours.config)
    expected = {c.__name__ for c in getattr(diffusers, name)._get_compatibles()} & set(impasto._EXPORTS)
    assert {c.__name__ for c in ours.compatibles} == expected
    assert type(impasto.scheduler_from_name(name, SD)).__name__ == name
    copy = ours.copy()
    assert type(copy) is type(ours) and dict(copy.config) == dict(ours.config)


def test_existing_schedulers_list_deis_as_diffusers_does():
    for name in ("DPMSolverMultistepScheduler", "EulerDiscreteScheduler", "UniPCMultistepScheduler"):
        assert "DEISMultistepScheduler" in {c.__name__ for c in getattr(impasto, name)().compatibles}
    assert {c.__name__ for c in impasto.TCDScheduler().compatibles} == {"TCDScheduler"}
    assert {c.__name__ for c in impasto.LCMScheduler().compatibles} == {"LCMScheduler"}


# ---- bad input ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("config,key", [
    (dict(algorithm_type="sde-dpmsolver++"), "algorithm_type"),
    (dict(solver_type="rk4"), "solver_type"),
    (dict(solver_order=4), "solver_order"),
    (dict(solver_order=0), "solver_order"),
    (dict(prediction_type="score"), "prediction_type"),
    (dict(timestep_spacing="even"), "timestep_spacing"),
    (dict(beta_schedule="cubic"), "beta_schedule"),
    (dict(use_karras_sigmas=True, use_exponential_sigmas=True), "use_karras_sigmas"),
])
def test_deis_bad_config(config, key):
    with pytest.raises(ValueError, match=key):
        impasto.DEISMultistepScheduler(**config)


def test_deis_bad_calls():
    s = impasto.DEISMultistepScheduler()
    with pytest.raises(ValueError, match="set_timesteps"):
        s.step(torch.zeros(SHAPE), 999, torch.zeros(SHAPE))
    for n in (0, 1001, 2.5):
        with pytest.raises(ValueError, match="num_inference_steps"):
            s.set_timesteps(n)
    with pytest.raises(ValueError, match="num_inference_steps"):
        s.set_timesteps()
    with pytest.raises(ValueError, match="mu"):
        s.set_timesteps(5, mu=0.5)
    with pytest.raises(TypeError):  # as in diffusers: DEIS takes no custom timesteps
        s.set_timesteps(timesteps=[999, 500])


@pytest.mark.parametrize("config,call,key", [
    ({}, dict(num_inference_steps=60), "original_inference_steps"),
    ({}, dict(num_inference_steps=8, strength=0.1), "num_inference_steps"),
    ({}, dict(num_inference_steps=0), "num_inference_steps"),
    ({}, dict(), "num_inference_steps"),
    ({}, dict(num_inference_steps=4, timesteps=[999, 500]), "num_inference_steps"),
    ({}, dict(timesteps=[500, 999]), "descending"),
    ({}, dict(timesteps=[1000, 500]), "timesteps"),
    (dict(original_inference_steps=2000), dict(num_inference_steps=4), "original_inference_steps"),
])
def test_tcd_bad_set_timesteps(config, call, key):
    with pytest.raises(ValueError, match=key):
        impasto.TCDScheduler(**config).set_timesteps(**call)


def test_tcd_bad_step():
    s = impasto.TCDScheduler()
    with pytest.raises(ValueError, match="set_timesteps"):
        s.step(torch.zeros(SHAPE), 999, torch.zeros(SHAPE))
    s.set_timesteps(4)
    for eta in (-0.1, 1.5):
        with pytest.raises(ValueError, match="eta"):
            s.step(torch.zeros(SHAPE), s.timesteps[0], torch.zeros(SHAPE), eta=eta)
    with pytest.raises(ValueError, match="beta_schedule"):
        impasto.TCDScheduler(beta_schedule="cubic")
    with pytest.raises(ValueError, match="prediction_type"):
        impasto.TCDScheduler(prediction_type="flow_prediction")


# ---- through StableDiffusionPipeline -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sd1():
    from pipeline_utils import shared_pair

    return shared_pair("sd1")


def _use(pair, name, **config):
    cfg = dict(pair.scheduler_config, **config)
    pair.ref.scheduler = getattr(diffusers, name).from_config(cfg)
    pair.mine.scheduler = getattr(impasto, name).from_config(cfg)


@pytest.mark.parametrize("name,config,call", [
    ("DEISMultistepScheduler", {}, dict(num_inference_steps=3)),
    ("DEISMultistepScheduler", dict(solver_order=3, lower_order_final=False, use_karras_sigmas=True),
     dict(num_inference_steps=4)),
    ("TCDScheduler", {}, dict(num_inference_steps=2)),  # the pipeline's eta=0.0: deterministic
    ("TCDScheduler", {}, dict(num_inference_steps=4, eta=0.3)),
])
def test_pipeline_parity(sd1, name, config, call):
    from pipeline_utils import TOL, max_diff

    _use(sd1, name, **config)
    a, b = sd1.run_both(prompt=PROMPT, guidance_scale=5.0, **call)
    assert a.images.shape == (1, 32, 32, 3)
    assert max_diff(a.images, b.images) < TOL
    assert type(sd1.mine.scheduler).__module__.startswith("impasto.")


@pytest.mark.parametrize("name", ["DEISMultistepScheduler", "TCDScheduler"])
def test_img2img_pipeline_parity(sd1, name):
    from pipeline_utils import TOL, max_diff

    _use(sd1, name)
    ref, mine = sd1.img2img()
    image = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    a, b = sd1.run_both(ref, mine, prompt=PROMPT, image=image, strength=0.6, num_inference_steps=4, eta=0.3)
    assert max_diff(a.images, b.images) < TOL


def test_pipeline_rejects_custom_timesteps_for_deis(sd1):
    _use(sd1, "DEISMultistepScheduler")
    with pytest.raises(ValueError, match="timesteps"):
        sd1.mine(PROMPT, timesteps=[999, 500], output_type="np")
