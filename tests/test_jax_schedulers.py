"""Flax schedulers against impasto's torch schedulers: the same sampling loop over a fixed non-linear "model"."""
import json

import numpy as np
import pytest
import torch

jax = pytest.importorskip("jax")
pytest.importorskip("flax")
import jax.numpy as jnp  # noqa: E402

import impasto  # noqa: E402
from impasto.jax import schedulers as S  # noqa: E402

SD = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000, steps_offset=1)
CASES = [
    ("DDIMScheduler", dict(clip_sample=False, set_alpha_to_one=False)),
    ("DDIMScheduler", dict(clip_sample=False, prediction_type="v_prediction", timestep_spacing="trailing")),
    ("PNDMScheduler", dict(skip_prk_steps=True, set_alpha_to_one=False)),
    ("PNDMScheduler", dict(skip_prk_steps=False, set_alpha_to_one=False)),
    ("LMSDiscreteScheduler", {}),
    ("LMSDiscreteScheduler", dict(use_karras_sigmas=True, prediction_type="v_prediction")),
    ("EulerDiscreteScheduler", dict(timestep_spacing="leading")),
    ("EulerDiscreteScheduler", dict(use_karras_sigmas=True)),
    ("DPMSolverMultistepScheduler", {}),
    ("DPMSolverMultistepScheduler", dict(solver_order=3, use_karras_sigmas=True, solver_type="heun")),
    ("DPMSolverMultistepScheduler", dict(algorithm_type="dpmsolver", final_sigmas_type="sigma_min")),
]


def model(x, t):
    return np.tanh(x) * 0.7 + 0.3 * np.cos(x * (1 + float(t) / 500))


def torch_loop(name, cfg, n, begin, x0):
    sched = getattr(impasto, name).from_config(cfg)
    sched.set_timesteps(n)
    if begin:
        sched.set_begin_index(begin)
    x = torch.from_numpy(x0) * sched.init_noise_sigma
    for t in sched.timesteps[begin:]:
        inp = sched.scale_model_input(x, t)
        x = sched.step(torch.from_numpy(model(inp.numpy(), t).astype(np.float32)), t, x, return_dict=False)[0]
    return x.numpy()


@pytest.mark.parametrize("name,kw", CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CASES)])
@pytest.mark.parametrize("begin", [0, 3])
def test_loop_matches_torch(name, kw, begin):
    cfg = dict(SD, **kw)
    x0 = np.random.default_rng(0).standard_normal((1, 4, 4, 4)).astype(np.float32)
    ref = torch_loop(name, cfg, 8, begin, x0)
    sched = S.scheduler_class(name).from_config(cfg)
    state = sched.set_timesteps(sched.create_state(), 8, x0.shape, begin_index=begin)
    x = jnp.asarray(x0) * state.init_noise_sigma
    for _ in range(state.num_steps):
        t = state.timesteps[state.step_index]
        inp = sched.scale_model_input(state, x, t)
        x, state = sched.step(state, jnp.asarray(model(np.asarray(inp), t), jnp.float32), t, x).to_tuple()
    assert np.abs(np.asarray(x) - ref).max() < 2e-5 * max(1.0, np.abs(ref).max())


def test_fori_loop_under_jit_equals_python_loop():
    sched = S.FlaxEulerDiscreteScheduler(**SD)
    state = sched.set_timesteps(sched.create_state(), 6, (2, 3))
    x0 = jnp.ones((2, 3)) * state.init_noise_sigma

    def body(_, carry):
        x, st = carry
        out = jnp.sin(sched.scale_model_input(st, x)) + st.timesteps[st.step_index] / 1000
        return sched.step(st, out, None, x, return_dict=False)

    jitted = jax.jit(lambda x, st: jax.lax.fori_loop(0, st.timesteps.shape[0], body, (x, st)))(x0, state)
    carry = (x0, state)
    for i in range(6):
        carry = body(i, carry)
    assert int(jitted[1].step_index) == 6
    assert np.abs(np.asarray(jitted[0]) - np.asarray(carry[0])).max() < 1e-5


def test_add_noise_and_begin_index_match_torch():
    cfg = dict(SD, use_karras_sigmas=True)
    torch_sched = impasto.DPMSolverMultistepScheduler.from_config(cfg)
    torch_sched.set_timesteps(10)
    torch_sched.set_begin_index(4)
    x0, noise = torch.randn(1, 4, 2, 2), torch.randn(1, 4, 2, 2)
    ref = torch_sched.add_noise(x0, noise, torch_sched.timesteps[4:5]).numpy()
    sched = S.FlaxDPMSolverMultistepScheduler(**cfg)
    state = sched.set_begin_index(sched.set_timesteps(sched.create_state(), 10, (1, 4, 2, 2)), 4)
    assert state.num_steps == 6 and state.history.shape == (7, 1, 4, 2, 2)
    np.testing.assert_allclose(np.asarray(state.timesteps), torch_sched.timesteps[4:].numpy())
    out = sched.add_noise(state, jnp.asarray(x0.numpy()), jnp.asarray(noise.numpy()))
    assert np.abs(np.asarray(out) - ref).max() < 1e-5


def test_from_pretrained_and_class_names(tmp_path):
    (tmp_path / "scheduler").mkdir()
    cfg = dict(SD, _class_name="PNDMScheduler", skip_prk_steps=True)
    (tmp_path / "scheduler" / "scheduler_config.json").write_text(json.dumps(cfg))
    sched, state = S.FlaxPNDMScheduler.from_pretrained(tmp_path, subfolder="scheduler")
    assert sched.config["skip_prk_steps"] is True and state.alphas_cumprod.shape == (1000,)
    assert S.scheduler_class("FlaxLMSDiscreteScheduler") is S.FlaxLMSDiscreteScheduler
    with pytest.raises(ValueError, match="no Flax version"):
        S.scheduler_class("HeunDiscreteScheduler")


@pytest.mark.parametrize("cls,kw,key", [
    (S.FlaxDDIMScheduler, dict(clip_sample=True), "clip_sample"),
    (S.FlaxDDIMScheduler, dict(clip_sample=False, thresholding=True), "thresholding"),
    (S.FlaxDPMSolverMultistepScheduler, dict(algorithm_type="sde-dpmsolver++"), "algorithm_type"),
])
def test_non_linear_configs_refused(cls, kw, key):
    with pytest.raises(ValueError, match=key):
        cls(**SD, **kw)


def test_bad_steps_refused():
    sched = S.FlaxDDIMScheduler(**SD, clip_sample=False)
    with pytest.raises(ValueError, match="num_inference_steps"):
        sched.set_timesteps(sched.create_state(), 0)
    with pytest.raises(ValueError, match="begin_index"):
        sched.set_timesteps(sched.create_state(), 5, begin_index=5)
