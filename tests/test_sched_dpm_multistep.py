"""DPMSolverMultistepScheduler against diffusers on the same model outputs, plus config/API behaviour."""
import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from impasto.schedulers.dpmsolver_multistep import DPMSolverMultistepScheduler  # noqa: E402
from impasto.schedulers.unipc import UniPCMultistepScheduler  # noqa: E402
from sched_utils import SHAPE, compare, run_loop  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


def pair(**config):
    return DPMSolverMultistepScheduler(**config), diffusers.DPMSolverMultistepScheduler(**config)


ALGORITHM_CASES = [
    (order, algorithm, solver_type)
    for order in (1, 2, 3)
    for algorithm in ("dpmsolver++", "dpmsolver", "sde-dpmsolver++", "sde-dpmsolver")
    for solver_type in ("midpoint", "heun")
    if not (algorithm == "sde-dpmsolver" and order == 3)
]


@pytest.mark.parametrize("order,algorithm,solver_type", ALGORITHM_CASES)
@pytest.mark.parametrize("steps", [10, 18])
def test_orders_algorithms_solver_types(order, algorithm, solver_type, steps):
    config = dict(solver_order=order, algorithm_type=algorithm, solver_type=solver_type)
    if not algorithm.endswith("++"):
        config["final_sigmas_type"] = "sigma_min"
    ours, theirs = pair(**config)
    # SDE variants draw their noise from the generator that run_loop passes: same seed -> same samples
    compare(ours, theirs, steps)


@pytest.mark.parametrize(
    "config",
    [
        dict(use_karras_sigmas=True),
        dict(use_karras_sigmas=True, solver_order=3, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
        dict(use_exponential_sigmas=True),
        dict(use_lu_lambdas=True),
        dict(use_lu_lambdas=True, beta_schedule="squaredcos_cap_v2"),
        dict(euler_at_final=True, solver_order=3),
        dict(final_sigmas_type="sigma_min", solver_order=3),
        dict(final_sigmas_type="sigma_min", lower_order_final=False),
        dict(prediction_type="v_prediction"),
        dict(prediction_type="v_prediction", rescale_betas_zero_snr=True, timestep_spacing="trailing"),
        dict(prediction_type="sample", thresholding=True, sample_max_value=1.5),
        dict(timestep_spacing="leading", steps_offset=1),
        dict(timestep_spacing="trailing"),
        dict(timestep_spacing="linspace", steps_offset=1),
        dict(lambda_min_clipped=-5.1, beta_schedule="squaredcos_cap_v2"),
        dict(use_flow_sigmas=True, prediction_type="flow_prediction", flow_shift=3.0),
        dict(algorithm_type="sde-dpmsolver++", use_karras_sigmas=True, solver_order=3),
    ],
)
def test_schedules_and_options(config):
    ours, theirs = pair(**config)
    compare(ours, theirs, 12)


def test_many_steps_keep_full_order_to_the_end():
    ours, theirs = pair(solver_order=3)
    compare(ours, theirs, 25)


def test_custom_timesteps():
    ours, theirs = pair(solver_order=3)
    compare(ours, theirs, set_kwargs=dict(timesteps=[999, 850, 700, 501, 300, 120, 10]))


def test_begin_index_like_img2img():
    ours, theirs = pair()
    compare(ours, theirs, 10, begin_index=4)


def test_variance_noise_is_used():
    ours, theirs = pair(algorithm_type="sde-dpmsolver++")
    outs = []
    for sched in (ours, theirs):
        sched.set_timesteps(6)
        x = torch.ones(SHAPE)
        for i, t in enumerate(sched.timesteps):
            noise = torch.full(SHAPE, 0.1 * i)
            x = sched.step(0.5 * x, t, x, variance_noise=noise).prev_sample
        outs.append(x)
    torch.testing.assert_close(outs[0], outs[1], atol=1e-6, rtol=0)


def test_generator_seed_reproduces_and_differs():
    a = run_loop(DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++"), 8, seed=3)[2]
    b = run_loop(DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++"), 8, seed=3)[2]
    c = run_loop(DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++"), 8, seed=4)[2]
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_add_noise_and_attributes_match():
    ours, theirs = pair(use_karras_sigmas=True)
    for sched in (ours, theirs):
        sched.set_timesteps(10)
    assert ours.init_noise_sigma == theirs.init_noise_sigma == 1.0
    assert ours.order == theirs.order == 1
    assert len(ours) == len(theirs) == 1000
    torch.testing.assert_close(ours.alphas_cumprod, theirs.alphas_cumprod)
    torch.testing.assert_close(ours.lambda_t, theirs.lambda_t)
    x0, noise = torch.randn(SHAPE), torch.randn(SHAPE)
    t = ours.timesteps[[2, 7]]
    torch.testing.assert_close(ours.add_noise(x0, noise, t), theirs.add_noise(x0, noise, t.clone()))
    assert torch.equal(ours.scale_model_input(x0, t[0]), x0)


def test_step_before_set_timesteps_raises():
    with pytest.raises(ValueError, match="set_timesteps"):
        DPMSolverMultistepScheduler().step(torch.zeros(SHAPE), 999, torch.zeros(SHAPE))


@pytest.mark.parametrize(
    "config,key",
    [
        (dict(algorithm_type="ddim"), "algorithm_type"),
        (dict(solver_type="rk4"), "solver_type"),
        (dict(final_sigmas_type="one"), "final_sigmas_type"),
        (dict(prediction_type="score"), "prediction_type"),
        (dict(timestep_spacing="even"), "timestep_spacing"),
        (dict(beta_schedule="cubic"), "beta_schedule"),
        (dict(algorithm_type="dpmsolver"), "final_sigmas_type"),
        (dict(algorithm_type="sde-dpmsolver", final_sigmas_type="sigma_min", solver_order=3), "solver_order"),
        (dict(solver_order=4), "solver_order"),
        (dict(use_karras_sigmas=True, use_exponential_sigmas=True), "use_karras_sigmas"),
    ],
)
def test_bad_config_raises_naming_the_key(config, key):
    with pytest.raises(ValueError, match=key):
        DPMSolverMultistepScheduler(**config)


def test_bad_set_timesteps_raises():
    sched = DPMSolverMultistepScheduler(use_karras_sigmas=True)
    with pytest.raises(ValueError, match="timesteps"):
        sched.set_timesteps(timesteps=[900, 500, 100])
    with pytest.raises(ValueError):
        sched.set_timesteps(10, timesteps=[900, 500, 100])
    with pytest.raises(ValueError, match="num_inference_steps"):
        sched.set_timesteps(1001)


def test_config_round_trip_and_swaps(tmp_path):
    ours = DPMSolverMultistepScheduler(solver_order=3, use_karras_sigmas=True, algorithm_type="sde-dpmsolver++")
    ours.save_pretrained(tmp_path)
    theirs = diffusers.DPMSolverMultistepScheduler.from_pretrained(tmp_path)
    back = DPMSolverMultistepScheduler.from_pretrained(tmp_path)
    for key, value in theirs.config.items():
        if not key.startswith("_"):
            assert back.config[key] == value, key
            assert ours.config[key] == value, key
    # a UniPC config swaps in with its solver_type mapped, as diffusers does, and back again
    unipc = UniPCMultistepScheduler(solver_type="bh1")
    swapped = DPMSolverMultistepScheduler.from_config(unipc.config)
    ref = diffusers.DPMSolverMultistepScheduler.from_config(diffusers.UniPCMultistepScheduler(solver_type="bh1").config)
    assert swapped.config.solver_type == ref.config.solver_type == "midpoint"
    assert UniPCMultistepScheduler.from_config(swapped.config).config.solver_type == "bh2"
    euler = diffusers.EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    compare(DPMSolverMultistepScheduler.from_config(euler.config),
            diffusers.DPMSolverMultistepScheduler.from_config(euler.config), 8)
    assert DPMSolverMultistepScheduler in ours.compatibles and UniPCMultistepScheduler in ours.compatibles


def test_copy_gives_independent_runs():
    sched = DPMSolverMultistepScheduler(solver_order=3)
    reference = run_loop(sched.copy(), 8)[2]
    a, b = sched.copy(), sched.copy()
    for s in (a, b):
        s.set_timesteps(8)
    xa = xb = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    from sched_utils import fake_model

    for t in a.timesteps:  # interleave two runs: neither sees the other's history
        xa = a.step(fake_model(xa, t), t, xa).prev_sample
        xb = b.step(fake_model(xb, t), t, xb).prev_sample
    assert torch.equal(xa, reference) and torch.equal(xb, reference)


def test_convert_model_output_call_styles():
    ours, theirs = pair(prediction_type="v_prediction")
    for sched in (ours, theirs):
        sched.set_timesteps(5)
        sched._step_index = 2
    out, x = torch.randn(SHAPE), torch.randn(SHAPE)
    expected = theirs.convert_model_output(out, sample=x)
    torch.testing.assert_close(ours.convert_model_output(out, sample=x), expected)
    torch.testing.assert_close(ours.convert_model_output(out, ours.timesteps[2], x), expected)
    with pytest.raises(ValueError, match="sample"):
        ours.convert_model_output(out)


@pytest.mark.parametrize("solver_type", ["midpoint", "heun"])
def test_repeated_final_sigma_is_a_no_op(solver_type):
    # Karras ladders end at sigma_min, and final_sigmas_type='sigma_min' repeats it: the last step has h = 0.
    # diffusers' third-order/heun coefficients are 0/0 there (NaN); impasto returns the sample unchanged.
    config = dict(use_karras_sigmas=True, final_sigmas_type="sigma_min", solver_order=3, solver_type=solver_type)
    ours, theirs = pair(**config)
    from sched_utils import fake_model

    xs = []
    for sched in (ours, theirs):
        sched.set_timesteps(16)
        x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
        for t in sched.timesteps[:-1]:
            x = sched.step(fake_model(x, t), t, x).prev_sample
        xs.append(x)
    torch.testing.assert_close(xs[0], xs[1], atol=1e-5, rtol=0)
    t = ours.timesteps[-1]
    assert ours.sigmas[-1] == ours.sigmas[-2]
    assert torch.equal(ours.step(fake_model(xs[0], t), t, xs[0]).prev_sample, xs[0])


@pytest.mark.parametrize(
    "ours_cls,name,config",
    [
        (DPMSolverMultistepScheduler, "DPMSolverMultistepScheduler", dict(solver_order=3)),
        (DPMSolverMultistepScheduler, "DPMSolverMultistepScheduler", dict(algorithm_type="sde-dpmsolver++")),
        (UniPCMultistepScheduler, "UniPCMultistepScheduler", dict(solver_order=3)),
    ],
)
def test_half_precision_matches(ours_cls, name, config):
    # model outputs in float16: diffusers computes the update in float32 and casts back; so does impasto
    compare(ours_cls(**config), getattr(diffusers, name)(**config), 10, dtype=torch.float16, atol=1e-3)
