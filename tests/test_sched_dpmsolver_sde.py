"""DPMSolverSDEScheduler ("DPM++ SDE") and its Brownian interval against diffusers and torchsde (the oracles).

torchsde is only needed by these tests (diffusers' scheduler draws its noise from it); impasto reimplements the
Brownian interval in impasto/core/brownian.py. Without torchsde the parity tests are skipped.
"""
import numpy as np
import pytest
import torch

import diffusers
import impasto
from impasto.core.brownian import BrownianInterval, BrownianNoiseSampler
from sched_utils import SHAPE, run_loop

torch.set_num_threads(1)
# diffusers' schedulers call numpy on tensors (numpy 2 deprecation notices); torchsde warns when a query at
# sigma_max lies a rounding error above the interval's rounded end
pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning"), pytest.mark.filterwarnings("ignore::UserWarning")]

NAME = "DPMSolverSDEScheduler"
SD = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)


def _torchsde():
    return pytest.importorskip("torchsde")


def _oracle_interval(t0, t1, size, entropy, dtype=None):
    """torchsde's interval with the arguments diffusers' BatchedBrownianTree gives it."""
    return _torchsde().BrownianInterval(t0=t0, t1=t1, size=size, dtype=dtype, entropy=entropy, tol=1e-6,
                                        pool_size=24, halfway_tree=True)


def _scheduler_queries(sigmas):
    """The (ta, tb) pairs DPMSolverSDEScheduler asks for over a descending ladder: midpoint half, then full step."""
    out = []
    for s, s_next in zip(sigmas[:-1], sigmas[1:]):
        mid = float(np.exp(-(-np.log(s) + 0.5 * (np.log(s) - np.log(s_next)))))
        out += [(mid, s), (s_next, s)]
    return out


# SD's sigma range (float32 values, not on the 1e-6 grid the interval rounds its ends to)
T0, T1 = 0.029167532920837402, 14.614641189575195


def _query_orders():
    rng = np.random.default_rng(0)
    ladder = [T1, 9.7222, 6.1, 3.3, 1.6, 0.72, 0.29, T0]
    random_pairs = [tuple(sorted(rng.uniform(T0, T1, 2))) for _ in range(25)]
    nested = [(T0, T1), (1.0, 2.0), (1.5, 1.75), (0.5, 10.0), (1.5, 1.75), (1.0, 2.0), (7.0, 7.000002)]
    return {
        "scheduler": _scheduler_queries(ladder),
        "scheduler-reversed": _scheduler_queries(ladder)[::-1],
        "random": random_pairs,
        "nested-and-repeated": nested,
        "ends-and-outside": [(T0, T0), (0.0, 0.1), (14.0, 20.0), (T0, T1), (-1.0, 30.0), (T1 - 1e-7, T1)],
    }


# ---- the Brownian interval alone ------------------------------------------------------------------------------
@pytest.mark.parametrize("order", list(_query_orders()))
@pytest.mark.parametrize("entropy", [0, 1234, 2**63 - 2])
def test_brownian_interval_matches_torchsde(order, entropy):
    queries = _query_orders()[order]
    theirs = _oracle_interval(T0, T1, (2, 3, 4), entropy)
    ours = BrownianInterval(T0, T1, (2, 3, 4), entropy=entropy)
    for ta, tb in queries:
        a, b = ours(ta, tb), theirs(ta, tb)
        assert a.dtype == b.dtype and a.shape == b.shape
        assert torch.equal(a, b), (ta, tb, (a - b).abs().max().item())


def test_brownian_interval_dtype_and_statistics():
    theirs = _oracle_interval(T0, T1, (4096,), 7, dtype=torch.float64)
    ours = BrownianInterval(T0, T1, (4096,), dtype=torch.float64, entropy=7)
    for ta, tb in [(T0, T1), (1.0, 2.5), (0.75, 0.8)]:
        w = ours(ta, tb)
        assert w.dtype == torch.float64 and torch.equal(w, theirs(ta, tb))
        assert float(w.std()) == pytest.approx((tb - ta) ** 0.5, rel=0.05)  # a Brownian increment's spread
    # increments over adjacent pieces add up
    torch.testing.assert_close(ours(T0, 1.2) + ours(1.2, T1), ours(T0, T1))


def test_noise_sampler_batched_seeds_match_diffusers():
    _torchsde()
    from diffusers.schedulers.scheduling_dpmsolver_sde import BrownianTreeNoiseSampler

    x = torch.zeros(SHAPE)
    for seed in (5, [5, 9]):
        ours = BrownianNoiseSampler(x, 0.03, 14.6, seed)
        theirs = BrownianTreeNoiseSampler(x, 0.03, 14.6, seed)
        for s, s_next in [(14.6, 6.0), (6.0, 0.5), (0.5, 6.0)]:
            a = ours(torch.tensor(s), torch.tensor(s_next))
            assert a.shape == x.shape and torch.equal(a, theirs(torch.tensor(s), torch.tensor(s_next)))
    with pytest.raises(ValueError, match="noise_sampler_seed"):
        BrownianNoiseSampler(x, 0.03, 14.6, [1, 2, 3])


# ---- the scheduler against diffusers' --------------------------------------------------------------------------
def _run(scheduler, n, global_seed=0, **kw):
    torch.manual_seed(global_seed)  # noise_sampler_seed=None draws its seed from the global generator
    return run_loop(scheduler, n, **kw)


def _compare(kw, n, atol=0.0, exact_schedule=True, **run_kw):
    """Both schedulers through the same loop; the same torch operations in the same order give bitwise equal
    samples, so the default tolerance is 0."""
    _torchsde()
    ours, theirs = impasto.DPMSolverSDEScheduler(**kw), diffusers.DPMSolverSDEScheduler(**kw)
    t1, s1, x1, p1 = _run(ours, n, **run_kw)
    t2, s2, x2, p2 = _run(theirs, n, **run_kw)
    assert t1.dtype == t2.dtype and t1.shape == t2.shape
    if exact_schedule:
        assert torch.equal(t1, t2) and torch.equal(s1, s2)
    else:
        torch.testing.assert_close(t1, t2, atol=1e-4, rtol=0)
        torch.testing.assert_close(s1, s2, atol=0, rtol=1e-6)
    assert torch.isfinite(x1).all()
    diff = (x1 - x2).abs().max().item()
    assert diff <= atol * max(1.0, x2.abs().max().item()), diff
    for a, b in zip(p1, p2):
        torch.testing.assert_close(a, b, atol=atol * max(1.0, b.abs().max().item()), rtol=0)
    return diff


CASES = [
    {},
    SD,
    dict(use_karras_sigmas=True, **SD),
    dict(timestep_spacing="leading", steps_offset=1, **SD),
    dict(timestep_spacing="trailing"),
    dict(prediction_type="v_prediction", timestep_spacing="trailing", **SD),
    dict(noise_sampler_seed=42),
    dict(noise_sampler_seed=2**40 + 3, use_exponential_sigmas=True),
    dict(beta_schedule="squaredcos_cap_v2"),
]


@pytest.mark.parametrize("kw", CASES, ids=lambda kw: "-".join(f"{k}={v}" for k, v in kw.items()) or "default")
def test_same_schedule_and_samples(kw):
    for n in (10, 7):
        _compare(kw, n)


def test_beta_sigmas():
    pytest.importorskip("scipy")  # diffusers' beta ladder needs scipy; impasto computes the quantiles itself
    _compare(dict(use_beta_sigmas=True, **SD), 8, atol=1e-5, exact_schedule=False)


def test_default_seed_comes_from_the_global_generator():
    a = _run(impasto.DPMSolverSDEScheduler(), 6, global_seed=1)[2]
    b = _run(impasto.DPMSolverSDEScheduler(), 6, global_seed=1)[2]
    c = _run(impasto.DPMSolverSDEScheduler(), 6, global_seed=2)[2]
    assert torch.equal(a, b) and not torch.allclose(a, c)
    _compare({}, 6, global_seed=2)


def test_few_steps_batch_and_options():
    for n in (1, 2, 3):
        _compare(dict(noise_sampler_seed=3), n)
    _compare(dict(noise_sampler_seed=3, use_karras_sigmas=True), 5, step_kwargs=dict(s_noise=0.5))
    _compare(dict(noise_sampler_seed=[3, 4]), 5)  # one Brownian path per sample of the batch (SHAPE[0] == 2)
    _compare(dict(noise_sampler_seed=3), 4, dtype=torch.float64)


def test_img2img_begin_index_and_add_noise():
    kw = dict(noise_sampler_seed=11, **SD)
    _compare(kw, 10, begin_index=4)  # strength 0.6: the pipeline starts at step 2 of 10, index 2 * order
    ours, theirs = impasto.DPMSolverSDEScheduler(**kw), diffusers.DPMSolverSDEScheduler(**kw)
    x0 = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(3))
    noise = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(4))
    for s in (ours, theirs):
        s.set_timesteps(10)
        s.set_begin_index(4)
    t = ours.timesteps[4:5].repeat(2)
    assert torch.equal(ours.add_noise(x0, noise, t), theirs.add_noise(x0, noise, t))
    fresh = [impasto.DPMSolverSDEScheduler(**kw), diffusers.DPMSolverSDEScheduler(**kw)]
    for s in fresh:
        s.set_timesteps(10)
    t = fresh[0].timesteps[[0, 3, 8]]
    assert torch.equal(fresh[0].add_noise(x0[:1].repeat(3, 1, 1, 1), noise[:1].repeat(3, 1, 1, 1), t),
                       fresh[1].add_noise(x0[:1].repeat(3, 1, 1, 1), noise[:1].repeat(3, 1, 1, 1), t))


def test_initial_state_and_halves():
    _torchsde()
    ours, theirs = impasto.DPMSolverSDEScheduler(**SD), diffusers.DPMSolverSDEScheduler(**SD)
    assert torch.equal(ours.timesteps, theirs.timesteps) and torch.equal(ours.sigmas, theirs.sigmas)
    assert ours.order == theirs.order == 2 and len(ours) == len(theirs) == 1000
    for spacing in ("linspace", "leading"):
        a = impasto.DPMSolverSDEScheduler(timestep_spacing=spacing)
        b = diffusers.DPMSolverSDEScheduler(timestep_spacing=spacing)
        a.set_timesteps(5)
        b.set_timesteps(5)
        assert float(a.init_noise_sigma) == float(b.init_noise_sigma)
    s = impasto.DPMSolverSDEScheduler(noise_sampler_seed=0)
    s.set_timesteps(3)
    assert len(s.timesteps) == 5 and len(s.sigmas) == 6
    x = torch.randn(SHAPE) * s.init_noise_sigma
    states = []
    for t in s.timesteps:
        states.append(s.state_in_first_order)
        x = s.step(s.scale_model_input(x, t), t, x).prev_sample
    assert states == [True, False, True, False, True] and s.step_index == 5 and torch.isfinite(x).all()


# ---- config, names, swaps --------------------------------------------------------------------------------------
def test_config_round_trip_and_swaps(tmp_path):
    _torchsde()
    cfg = dict(SD, steps_offset=1, prediction_type="v_prediction", noise_sampler_seed=7, use_karras_sigmas=True)
    ours = impasto.DPMSolverSDEScheduler(**cfg)
    ours.save_pretrained(tmp_path)
    theirs = diffusers.DPMSolverSDEScheduler.from_pretrained(tmp_path)
    for key, value in theirs.config.items():
        if not key.startswith("_"):
            assert ours.config[key] == value, key
    back = impasto.DPMSolverSDEScheduler.from_pretrained(tmp_path)
    assert {k: v for k, v in back.config.items() if not k.startswith("_")} == {
        k: v for k, v in ours.config.items() if not k.startswith("_")}
    # from a PNDM config, as SD checkpoints carry, and back
    pndm = impasto.PNDMScheduler(skip_prk_steps=True, set_alpha_to_one=False, **SD)
    swapped = impasto.DPMSolverSDEScheduler.from_config(pndm.config)
    assert swapped.config.beta_schedule == "scaled_linear" and swapped.config.noise_sampler_seed is None
    assert impasto.PNDMScheduler.from_config(swapped.config).config.skip_prk_steps is True
    names = {c.__name__ for c in ours.compatibles}
    assert NAME in names and "EulerDiscreteScheduler" in names
    assert NAME in {c.__name__ for c in impasto.EulerDiscreteScheduler().compatibles}
    assert names == {c.__name__ for c in diffusers.DPMSolverSDEScheduler._get_compatibles()} & set(impasto._EXPORTS)


def test_a1111_names():
    sd = impasto.PNDMScheduler(**SD).config
    plain = impasto.scheduler_from_name("DPM++ SDE", sd)
    karras = impasto.scheduler_from_name("dpm++ sde karras", sd, noise_sampler_seed=3)
    assert type(plain).__name__ == type(karras).__name__ == NAME
    assert not plain.config.use_karras_sigmas and karras.config.use_karras_sigmas
    assert karras.config.noise_sampler_seed == 3 and karras.config.beta_schedule == "scaled_linear"
    assert type(impasto.scheduler_from_name(NAME)).__name__ == NAME


@pytest.mark.parametrize("kwargs,key", [
    (dict(prediction_type="sample"), "prediction_type"),
    (dict(timestep_spacing="uniform"), "timestep_spacing"),
    (dict(beta_schedule="cubic"), "beta_schedule"),
    (dict(use_karras_sigmas=True, use_beta_sigmas=True), "use_karras_sigmas"),
    (dict(noise_sampler_seed=-1), "noise_sampler_seed"),
    (dict(noise_sampler_seed=1.5), "noise_sampler_seed"),
])
def test_bad_config(kwargs, key):
    with pytest.raises(ValueError, match=key):
        impasto.DPMSolverSDEScheduler(**kwargs)


def test_bad_arguments_and_copies():
    s = impasto.DPMSolverSDEScheduler(noise_sampler_seed=4)
    with pytest.raises(ValueError, match="num_inference_steps"):
        s.set_timesteps(1001)
    s.set_timesteps(4)
    with pytest.raises(ValueError, match="timestep"):
        s.step(torch.zeros(SHAPE), 3, torch.zeros(SHAPE))
    s.noise_sampler_seed = 9  # diffusers reads the attribute; copies keep it
    c = s.copy()
    assert type(c) is type(s) and c.noise_sampler_seed == 9 and c.config.noise_sampler_seed == 4
    assert torch.equal(run_loop(c, 4)[2], run_loop(s.fresh(), 4)[2])
    assert s.num_inference_steps == 4 and c.noise_sampler is not s.noise_sampler


# ---- in a pipeline -------------------------------------------------------------------------------------------
PROMPT = "a red square on a blue circle"


def test_pipelines_match_diffusers():
    """Tiny seeded SD pipeline with this scheduler swapped in: the same images as diffusers' (txt2img with a
    fixed noise_sampler_seed, txt2img with the default seed under the same global seed, img2img)."""
    _torchsde()
    from pipeline_utils import gen, max_diff, shared_pair

    pair = shared_pair("sd1")
    pair.set_scheduler(NAME)  # scheduler_pair fixes noise_sampler_seed
    assert type(pair.mine.scheduler).__module__.startswith("impasto.")
    a, b = pair.run_both(prompt=PROMPT, guidance_scale=6.0, num_inference_steps=3)
    assert max_diff(a.images, b.images) < 1e-4
    images = []
    for pipe, cls in ((pair.ref, diffusers.DPMSolverSDEScheduler), (pair.mine, impasto.DPMSolverSDEScheduler)):
        pipe.scheduler = cls.from_config(dict(pair.scheduler_config, use_karras_sigmas=True))
        torch.manual_seed(123)
        images.append(pipe(PROMPT, num_inference_steps=2, output_type="np", generator=gen(1)).images)
    assert max_diff(*images) < 1e-4
    pair.set_scheduler(NAME)
    ref, mine = pair.img2img()
    ref.scheduler, mine.scheduler = pair.ref.scheduler, pair.mine.scheduler
    image = torch.rand(1, 3, 32, 32, generator=gen(1))
    a, b = pair.run_both(ref, mine, prompt=PROMPT, image=image, strength=0.6, num_inference_steps=4)
    assert max_diff(a.images, b.images) < 1e-4
