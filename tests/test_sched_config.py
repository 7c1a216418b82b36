"""Scheduler configs: diffusers round trips, from_config swaps, compatibles, bad values, copies, names."""
import json
import threading

import pytest
import torch

import diffusers
import impasto
from impasto.schedulers.names import A1111_SAMPLERS
from sched_utils import SHAPE, compare, diffusers_lms, run_loop

torch.set_num_threads(1)
# diffusers' schedulers call numpy on tensors, which floods the log with numpy 2 deprecation notices
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

MINE = ["DDIMScheduler", "DDPMScheduler", "PNDMScheduler", "LMSDiscreteScheduler", "EulerDiscreteScheduler",
        "EulerAncestralDiscreteScheduler", "HeunDiscreteScheduler", "KDPM2DiscreteScheduler",
        "KDPM2AncestralDiscreteScheduler", "LCMScheduler"]
SD_CONFIG = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1,
                 clip_sample=False, set_alpha_to_one=False, skip_prk_steps=True, num_train_timesteps=1000,
                 trained_betas=None)


def _diffusers_cls(name):
    return diffusers_lms() if name == "LMSDiscreteScheduler" else getattr(diffusers, name)


def _own(config):
    return {k: v for k, v in config.items() if not k.startswith("_")}


@pytest.mark.parametrize("name", MINE)
def test_config_round_trips_with_diffusers(name, tmp_path):
    ours = getattr(impasto, name).from_config(dict(SD_CONFIG, prediction_type="v_prediction"))
    ours.save_pretrained(tmp_path / "ours")
    data = json.loads((tmp_path / "ours" / "scheduler_config.json").read_text())
    assert data["_class_name"] == name
    theirs = _diffusers_cls(name).from_pretrained(tmp_path / "ours")
    for key, value in _own(theirs.config).items():
        assert ours.config[key] == value, key
    # and back: diffusers saves into a pipeline-style subfolder, impasto reads it
    theirs.save_pretrained(tmp_path / "pipe" / "scheduler")
    back = getattr(impasto, name).from_pretrained(tmp_path / "pipe", subfolder="scheduler")
    assert _own(back.config).items() >= _own(theirs.config).items()
    n = 4 if name == "LCMScheduler" else 6
    back.set_timesteps(n)
    theirs.set_timesteps(n)
    torch.testing.assert_close(back.timesteps.double(), theirs.timesteps.double())


def test_from_pretrained_overrides_and_unused(tmp_path):
    diffusers.DDIMScheduler(**{k: v for k, v in SD_CONFIG.items() if k != "skip_prk_steps"}).save_pretrained(tmp_path)
    s, unused = impasto.EulerDiscreteScheduler.from_pretrained(tmp_path, return_unused_kwargs=True,
                                                               use_karras_sigmas=True, foo=1)
    assert s.config.use_karras_sigmas and s.config.beta_schedule == "scaled_linear"
    assert unused["foo"] == 1 and "clip_sample" in unused  # as diffusers: unknown kwargs and unused config keys


@pytest.mark.parametrize("target", ["EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler",
                                    "DPMSolverMultistepScheduler", "LMSDiscreteScheduler", "DDIMScheduler",
                                    "HeunDiscreteScheduler", "KDPM2AncestralDiscreteScheduler", "PNDMScheduler"])
def test_swap_like_users_do(target):
    """pipe.scheduler = X.from_config(pipe.scheduler.config), from a PNDM config as in SD checkpoints."""
    src_ours = impasto.PNDMScheduler(**{k: v for k, v in SD_CONFIG.items() if k not in ("clip_sample",)})
    src_theirs = diffusers.PNDMScheduler(**{k: v for k, v in SD_CONFIG.items() if k not in ("clip_sample",)})
    ours = getattr(impasto, target).from_config(src_ours.config)
    theirs = _diffusers_cls(target).from_config(src_theirs.config)
    for key, value in _own(theirs.config).items():
        assert ours.config[key] == value, key
    if target != "DPMSolverMultistepScheduler":  # that class belongs to another test area
        compare(ours, theirs, 8)
    # swapping back keeps the keys the middle class did not know
    again = impasto.PNDMScheduler.from_config(ours.config)
    assert again.config.skip_prk_steps is True and again.config.set_alpha_to_one is False


def test_compatibles_follow_diffusers():
    for name in MINE:
        ours = {c.__name__ for c in getattr(impasto, name)().compatibles}
        theirs = {c.__name__ for c in _diffusers_cls(name)._get_compatibles()}
        assert ours == {n for n in theirs if n in impasto._EXPORTS}, name
        assert name in ours
    assert {c.__name__ for c in impasto.LCMScheduler().compatibles} == {"LCMScheduler"}


@pytest.mark.parametrize("name,kwargs,key", [
    ("DDIMScheduler", dict(beta_schedule="cubic"), "beta_schedule"),
    ("EulerDiscreteScheduler", dict(beta_schedule="laplace"), "beta_schedule"),
    ("DDPMScheduler", dict(prediction_type="noise"), "prediction_type"),
    ("EulerAncestralDiscreteScheduler", dict(prediction_type="sample"), "prediction_type"),
    ("LMSDiscreteScheduler", dict(timestep_spacing="uniform"), "timestep_spacing"),
    ("DDPMScheduler", dict(variance_type="big"), "variance_type"),
    ("EulerDiscreteScheduler", dict(final_sigmas_type="one"), "final_sigmas_type"),
    ("EulerDiscreteScheduler", dict(interpolation_type="cubic"), "interpolation_type"),
    ("HeunDiscreteScheduler", dict(use_karras_sigmas=True, use_exponential_sigmas=True), "use_karras_sigmas"),
])
def test_bad_config_names_key_and_choices(name, kwargs, key):
    with pytest.raises(ValueError, match=key) as info:
        getattr(impasto, name)(**kwargs)
    if "sigmas" not in key:
        assert "expected one of" in str(info.value)


def test_bad_set_timesteps_arguments():
    for name in MINE:
        s = getattr(impasto, name)()
        with pytest.raises(ValueError, match="num_inference_steps"):
            s.set_timesteps(1001)
    with pytest.raises(ValueError, match="timesteps= or sigmas="):
        impasto.EulerDiscreteScheduler().set_timesteps(timesteps=[999, 500], sigmas=[10.0, 1.0, 0.0])
    with pytest.raises(ValueError, match="timesteps"):
        impasto.EulerDiscreteScheduler(use_karras_sigmas=True).set_timesteps(timesteps=[999, 500])
    with pytest.raises(ValueError, match="descending"):
        impasto.DDPMScheduler().set_timesteps(timesteps=[10, 500])
    with pytest.raises(ValueError, match="set_timesteps"):
        impasto.DDIMScheduler().step(torch.zeros(1, 1, 2, 2), 999, torch.zeros(1, 1, 2, 2))
    with pytest.raises(ValueError, match="timestep"):
        s = impasto.EulerDiscreteScheduler()
        s.set_timesteps(5)
        s.step(torch.zeros(1, 1, 2, 2), 3, torch.zeros(1, 1, 2, 2))


def test_outputs_tuple_and_len():
    s = impasto.EulerDiscreteScheduler()
    s.set_timesteps(4)
    x = torch.randn(SHAPE)
    t = s.timesteps[0]
    out = s.step(x, t, s.scale_model_input(x, t))
    assert out[0] is out.prev_sample and out.to_tuple()[1] is out.pred_original_sample
    s2 = impasto.EulerDiscreteScheduler()
    s2.set_timesteps(4)
    tup = s2.step(x, t, s2.scale_model_input(x, t), return_dict=False)
    assert isinstance(tup, tuple) and torch.equal(tup[0], out.prev_sample)
    assert len(s) == 1000
    assert s.step_index == 1 and s.begin_index is None


@pytest.mark.parametrize("name", ["EulerAncestralDiscreteScheduler", "PNDMScheduler", "HeunDiscreteScheduler"])
def test_copies_are_independent_and_thread_safe(name):
    base = getattr(impasto, name)(beta_schedule="scaled_linear")
    expected = run_loop(base.copy(), 6)[2]
    results = {}

    def work(i):
        results[i] = run_loop(base.fresh(), 6)[2]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for i in range(3):
        assert torch.equal(results[i], expected)
    c = base.copy()
    assert type(c) is type(base) and dict(c.config) == dict(base.config) and c is not base
    c.set_timesteps(5)
    assert base.num_inference_steps != 5



def test_copies_keep_values_set_after_construction():
    # a defaulted key changed later (a user's register_to_config, a pipeline's config fix-up) must survive the
    # copy every pipeline call makes, while a class swap still gives the other class its defaults
    s = impasto.DDIMScheduler()
    s.register_to_config(timestep_spacing="trailing", clip_sample=False)
    c = s.copy()
    assert c.config.timestep_spacing == "trailing" and c.config.clip_sample is False
    assert dict(c.config) == dict(s.config)
    assert impasto.EulerDiscreteScheduler.from_config(c.config).config.timestep_spacing == "linspace"

EXPECTED_NAMES = {
    "Euler": ("EulerDiscreteScheduler", {}),
    "Euler a": ("EulerAncestralDiscreteScheduler", {}),
    "LMS Karras": ("LMSDiscreteScheduler", {"use_karras_sigmas": True}),
    "DPM2 a Karras": ("KDPM2AncestralDiscreteScheduler", {"use_karras_sigmas": True}),
    "DPM++ SDE Karras": ("DPMSolverSDEScheduler", {"use_karras_sigmas": True}),
    "DPM++ 2M Karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True, "algorithm_type": "dpmsolver++"}),
    "DPM++ 2M SDE": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}),
    "PLMS": ("PNDMScheduler", {"skip_prk_steps": True}),
    "DDIM": ("DDIMScheduler", {}),
    "UniPC": ("UniPCMultistepScheduler", {}),
    "LCM": ("LCMScheduler", {}),
}


def test_scheduler_from_name():
    sd = impasto.PNDMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012).config
    for name, (cls_name, options) in EXPECTED_NAMES.items():
        s = impasto.scheduler_from_name(name, sd)
        assert type(s).__name__ == cls_name, name
        assert s.config.beta_schedule == "scaled_linear"
        for key, value in options.items():
            assert s.config[key] == value, (name, key)
    for name in A1111_SAMPLERS:  # every listed name builds
        impasto.scheduler_from_name(name)
    assert type(impasto.scheduler_from_name("  euler A ")).__name__ == "EulerAncestralDiscreteScheduler"
    assert type(impasto.scheduler_from_name("HeunDiscreteScheduler")).__name__ == "HeunDiscreteScheduler"
    assert impasto.scheduler_from_name("Euler", sd, timestep_spacing="trailing").config.timestep_spacing == "trailing"
    with pytest.raises(ValueError, match="'DPM\\+\\+ 2M Karras'"):
        impasto.scheduler_from_name("DPM++ 9M")
