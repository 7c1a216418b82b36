"""ControlNetModel and the SD ControlNet pipelines against diffusers on tiny seeded-random models (float32, CPU).

The ControlNets are diffusers' `from_unet` of the tiny UNets with every parameter jittered, so the zero convs are
not zero and the control image changes the result.
"""
from __future__ import annotations

import functools
import json
import tempfile
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

import impasto
import tiny
from pipeline_utils import TOL, gen, max_diff
from unet_utils import CONFIGS, inputs, make_reference

pytestmark = pytest.mark.usefixtures("one_thread")
PROMPT = "a red square on a blue circle"
MODEL_TOL = 1e-4
UNET_ONLY = ("up_block_types", "sample_size")  # UNet config keys a ControlNet does not take


# ---- the model -----------------------------------------------------------------------------------------------
def controlnet_config(name: str, **extra) -> dict:
    return {**{k: v for k, v in CONFIGS[name].items() if k not in UNET_ONLY},
            "conditioning_embedding_out_channels": (8, 16), **extra}


@functools.lru_cache(maxsize=None)
def model_pair(name: str, extra: tuple = ()):
    folder = Path(tempfile.mkdtemp(prefix="impasto-cn-"))
    ref = make_reference("ControlNetModel", controlnet_config(name, **dict(extra)), folder)
    return ref, impasto.ControlNetModel.from_pretrained(folder), folder


def model_inputs(name: str) -> dict:
    kw = inputs(name)
    kw["controlnet_cond"] = torch.rand(2, 3, 32, 32, generator=gen(3))
    return kw


def residual_diff(a, b) -> float:
    assert len(a[0]) == len(b[0])
    return max([max_diff(x, y) for x, y in zip(a[0], b[0])] + [max_diff(a[1], b[1])])


@pytest.mark.parametrize("name,extra", [
    ("sd1", ()), ("sd2", ()), ("sdxl", ()),
    ("sd1", (("global_pool_conditions", True), ("controlnet_conditioning_channel_order", "bgr"))),
])
def test_model_matches_diffusers(name, extra):
    ref, mine, folder = model_pair(name, extra)
    assert list(mine.state_dict()) == list(ref.state_dict())
    for key, value in json.loads((folder / "config.json").read_text()).items():
        if not key.startswith("_"):
            assert mine.config[key] == value or list(mine.config[key]) == value, key
    kw = model_inputs(name)
    for call in (dict(), dict(conditioning_scale=0.5), dict(guess_mode=True), dict(guess_mode=True,
                                                                                  conditioning_scale=0.3)):
        with torch.no_grad():
            a = ref(**kw, **call, return_dict=False)
            b = mine(**kw, **call, return_dict=False)
            out = mine(**kw, **call)
        assert residual_diff(a, b) < MODEL_TOL, call
        assert out.mid_block_res_sample.shape == a[1].shape and len(out.down_block_res_samples) == len(a[0])


def test_model_save_roundtrip(tmp_path):
    import diffusers

    ref, mine, _ = model_pair("sd1")
    mine.save_pretrained(tmp_path)
    again = diffusers.ControlNetModel.from_pretrained(tmp_path).eval()
    assert list(again.state_dict()) == list(ref.state_dict())
    kw = model_inputs("sd1")
    with torch.no_grad():
        assert residual_diff(again(**kw, return_dict=False), mine(**kw, return_dict=False)) < MODEL_TOL


# lllyasviel/control_v11p_sd15_canny's config.json, key for key, with the widths shrunk
CANNY_LIKE = {
    "_class_name": "ControlNetModel", "_diffusers_version": "0.16.0.dev0",
    "_name_or_path": "/home/patrick/controlnet_v1_1/control_v11p_sd15_canny", "act_fn": "silu",
    "attention_head_dim": 8, "block_out_channels": [32, 32, 64, 64], "class_embed_type": None,
    "conditioning_embedding_out_channels": [8, 8, 16, 16], "controlnet_conditioning_channel_order": "rgb",
    "cross_attention_dim": 32, "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                                   "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4, "layers_per_block": 2,
    "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 8, "num_class_embeds": None,
    "only_cross_attention": False, "projection_class_embeddings_input_dim": None,
    "resnet_time_scale_shift": "default", "upcast_attention": False, "use_linear_projection": False,
}


def test_canny_like_folder_loads_as_it_is(tmp_path):
    """A folder holding a real ControlNet's config.json (old diffusers version, 8x conditioning embedding) and
    diffusers-written weights."""
    import diffusers

    (tmp_path / "config.json").write_text(json.dumps(CANNY_LIKE, indent=2))
    torch.manual_seed(0)
    ref = diffusers.ControlNetModel.from_config(diffusers.ControlNetModel.load_config(tmp_path)).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    ref.save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(CANNY_LIKE, indent=2))  # the hub file, not diffusers' rewrite
    mine = impasto.ControlNetModel.from_pretrained(tmp_path)
    g = gen(2)
    kw = dict(sample=torch.randn(1, 4, 8, 8, generator=g), timestep=torch.tensor(500),
              encoder_hidden_states=torch.randn(1, 77, 32, generator=g), controlnet_cond=torch.rand(1, 3, 64, 64,
                                                                                              generator=g))
    with torch.no_grad():
        a, b = ref(**kw, return_dict=False), mine(**kw, return_dict=False)
    assert len(b[0]) == 12 and residual_diff(a, b) < MODEL_TOL
    with pytest.raises(ValueError, match="from_single_file"):
        impasto.ControlNetModel.from_single_file(tmp_path / "diffusion_pytorch_model.safetensors")


@pytest.mark.parametrize("name", ["sd1", "sd2"])
def test_from_unet_matches_diffusers(tmp_path, name):
    import diffusers

    unet_ref = make_reference("UNet2DConditionModel", CONFIGS[name], tmp_path)
    unet = impasto.UNet2DConditionModel.from_pretrained(tmp_path)
    ref = diffusers.ControlNetModel.from_unet(unet_ref, conditioning_embedding_out_channels=(8, 16)).eval()
    mine = impasto.ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 16)).eval()
    public = lambda cfg: json.loads(json.dumps({k: v for k, v in cfg.items() if not k.startswith("_")}))  # noqa
    assert public(mine.config) == public(ref.config)
    ref_state, state = ref.state_dict(), mine.state_dict()
    assert list(state) == list(ref_state)
    random = ("controlnet_cond_embedding.conv_in.", "controlnet_cond_embedding.blocks.")
    for key, value in state.items():
        if key.startswith(random):  # freshly initialised in both libraries
            assert value.shape == ref_state[key].shape and value.abs().sum() > 0, key
        else:
            assert torch.equal(value, ref_state[key]), key
    assert all(state[k].abs().sum() == 0 for k in state if k.startswith(("controlnet_down_blocks",
                                                                          "controlnet_mid_block",
                                                                          "controlnet_cond_embedding.conv_out")))
    mine.load_state_dict(ref_state)
    with torch.no_grad():  # zero convs: no residual yet; give them values to compare the whole path
        for m in (ref, mine):
            torch.manual_seed(1)
            for k, p in m.named_parameters():
                if k.startswith(("controlnet_down", "controlnet_mid", "controlnet_cond_embedding.conv_out")):
                    p.add_(torch.randn_like(p) * 0.1)
        kw = model_inputs(name)
        assert residual_diff(ref(**kw, return_dict=False), mine(**kw, return_dict=False)) < MODEL_TOL


@pytest.mark.parametrize("key,value", [
    ("class_embed_type", "timestep"), ("mid_block_type", None), ("down_block_types", ("CrossAttnDownBlock2D",
                                                                                      "SimpleCrossAttnDownBlock2D")),
    ("encoder_hid_dim", 16), ("addition_embed_type", "text"), ("controlnet_conditioning_channel_order", "brg"),
])
def test_unsupported_config_keys_are_refused(key, value):
    with pytest.raises(ValueError, match=key):
        impasto.ControlNetModel(**controlnet_config("sd1", **{key: value}))


# ---- the pipelines -------------------------------------------------------------------------------------------
def _components(variant: str) -> dict:
    comps = tiny.make_sd_components(variant)
    widths = {"sd1": (8, 16), "sd2": (8, 16, 16)}[variant]  # one stride-2 conv per VAE downsampling
    import diffusers

    torch.manual_seed(1)
    cn = diffusers.ControlNetModel.from_unet(comps["unet"], conditioning_embedding_out_channels=widths)
    with torch.no_grad():
        for p in cn.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    comps["controlnet"] = cn.eval()
    return comps


class Pair:
    def __init__(self, variant: str):
        import diffusers

        root = Path(tempfile.mkdtemp(prefix="impasto-cn-pipe-"))
        self.ref = diffusers.StableDiffusionControlNetPipeline(**_components(variant), requires_safety_checker=False)
        self.ref.set_progress_bar_config(disable=True)
        self.folder = tiny.save_folder(self.ref, root / variant)
        self.mine = impasto.DiffusionPipeline.from_pretrained(self.folder)
        self.mine.set_progress_bar_config(disable=True)

    def img2img(self):
        import diffusers

        ref = diffusers.StableDiffusionControlNetImg2ImgPipeline(**self.ref.components, requires_safety_checker=False)
        mine = impasto.StableDiffusionControlNetImg2ImgPipeline(**self.mine.components, requires_safety_checker=False)
        for p in (ref, mine):
            p.set_progress_bar_config(disable=True)
        return ref, mine


@functools.lru_cache(maxsize=None)
def pair(variant: str) -> Pair:
    return Pair(variant)


def control(seed: int = 5, size=(32, 32)) -> torch.Tensor:
    return torch.rand(1, 3, *size, generator=gen(seed))


def pil_control(height=40, width=48) -> PIL.Image.Image:
    return PIL.Image.fromarray((np.random.RandomState(0).rand(height, width, 3) * 255).astype("uint8"))


def run_both(ref, mine, **kw):
    kw = {"prompt": PROMPT, "num_inference_steps": 3, "output_type": "np", **kw}
    return ref(**kw, generator=gen(0)).images, mine(**kw, generator=gen(0)).images


CASES = {
    "default": dict(),
    "guidance 1": dict(guidance_scale=1.0),
    "guess_mode": dict(guess_mode=True),
    "scale 0.5": dict(controlnet_conditioning_scale=0.5),
    "window 0.2-0.8": dict(control_guidance_start=0.2, control_guidance_end=0.8, num_inference_steps=5),
    "2 per prompt": dict(num_images_per_prompt=2, prompt=[PROMPT, "green"], negative_prompt=["dark", "ugly"]),
    "PIL 40x48 at 32x32": dict(image=pil_control(), height=32, width=32),
    "PIL own size": dict(image=pil_control()),
}


@pytest.mark.parametrize("case", list(CASES))
def test_pipeline_matches_diffusers(case):
    p = pair("sd1")
    assert type(p.mine) is impasto.StableDiffusionControlNetPipeline
    assert type(p.mine.controlnet) is impasto.ControlNetModel
    kw = {"image": control(), **CASES[case]}
    a, b = run_both(p.ref, p.mine, **kw)
    assert a.shape == b.shape and max_diff(a, b) < TOL


@pytest.mark.parametrize("case", ["default", "guess_mode"])
def test_pipeline_sd2_matches_diffusers(case):
    p = pair("sd2")
    a, b = run_both(p.ref, p.mine, image=control(), **CASES[case])
    assert max_diff(a, b) < TOL


def test_control_acts_and_scale_zero_is_plain_sd():
    p = pair("sd1")
    full = p.mine(PROMPT, image=control(), num_inference_steps=3, output_type="np", generator=gen(0)).images
    off_ref, off = run_both(p.ref, p.mine, image=control(), controlnet_conditioning_scale=0.0)
    plain_pipe = impasto.StableDiffusionPipeline(**{k: v for k, v in p.mine.components.items() if k != "controlnet"})
    plain_pipe.set_progress_bar_config(disable=True)
    plain = plain_pipe(PROMPT, num_inference_steps=3, output_type="np", generator=gen(0)).images
    assert max_diff(full, off) > 10 * TOL  # the ControlNet changes the image
    assert max_diff(off_ref, off) < TOL and max_diff(off, plain) == 0.0  # zero residuals: plain SD, exactly


def test_img2img_matches_diffusers():
    ref, mine = pair("sd1").img2img()
    init = torch.rand(1, 3, 32, 32, generator=gen(7))
    for kw in (dict(control_image=control()), dict(control_image=control(), guess_mode=True, strength=0.6),
               dict(control_image=pil_control(), height=32, width=32, num_images_per_prompt=2)):
        a, b = run_both(ref, mine, image=init, num_inference_steps=4, **kw)
        assert a.shape == b.shape and max_diff(a, b) < TOL, kw


def test_save_load_roundtrip(tmp_path):
    p = pair("sd1")
    p.mine.save_pretrained(tmp_path / "saved")
    index = json.loads((tmp_path / "saved" / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionControlNetPipeline"
    assert index["controlnet"] == ["diffusers", "ControlNetModel"]
    again = impasto.DiffusionPipeline.from_pretrained(tmp_path / "saved")
    again.set_progress_bar_config(disable=True)
    kw = dict(image=control(), num_inference_steps=3, output_type="np")
    a = p.mine(PROMPT, generator=gen(0), **kw).images
    assert max_diff(a, again(PROMPT, generator=gen(0), **kw).images) == 0.0


def test_from_pretrained_with_controlnet_argument(tmp_path):
    """As users call it: an SD folder plus a ControlNet loaded from its own folder."""
    p = pair("sd1")
    sd_folder = tiny.save_folder(tiny.make_sd_pipeline("sd1"), tmp_path / "sd")
    with pytest.raises(ValueError, match="controlnet"):
        impasto.StableDiffusionControlNetPipeline.from_pretrained(sd_folder)
    cn = impasto.ControlNetModel.from_pretrained(p.folder / "controlnet")
    pipe = impasto.StableDiffusionControlNetPipeline.from_pretrained(sd_folder, controlnet=cn)
    pipe.set_progress_bar_config(disable=True)
    a, b = run_both(p.ref, pipe, image=control())
    assert max_diff(a, b) < TOL
    sd = impasto.StableDiffusionPipeline.from_pretrained(sd_folder)
    via_pipe = impasto.StableDiffusionControlNetPipeline.from_pipe(sd, controlnet=cn)
    assert via_pipe.unet is sd.unet and via_pipe.controlnet is cn


def test_bad_inputs_name_the_argument():
    mine = pair("sd1").mine
    kw = dict(num_inference_steps=2, output_type="np")
    for bad, name in [
        (dict(), "image"),
        (dict(image="edges.png"), "image"),
        (dict(image=[control(), control()]), "image"),  # two images for one prompt
        (dict(image=control(), control_guidance_start=0.8, control_guidance_end=0.8), "control_guidance_start"),
        (dict(image=control(), control_guidance_end=1.5), "control_guidance_end"),
        (dict(image=control(), controlnet_conditioning_scale=[1.0]), "controlnet_conditioning_scale"),
    ]:
        with pytest.raises(ValueError, match=name):
            mine(PROMPT, **bad, **kw)
    _, i2i = pair("sd1").img2img()
    with pytest.raises(ValueError, match="control_image"):
        i2i(PROMPT, image=control(), **kw)
    comps = mine.components
    with pytest.raises(ValueError, match="controlnet"):
        impasto.StableDiffusionControlNetPipeline(**{**comps, "controlnet": comps["unet"]})


@pytest.mark.parametrize("name", ["EulerDiscreteScheduler", "HeunDiscreteScheduler", "DPMSolverMultistepScheduler"])
def test_schedulers_and_window_match_diffusers(name):
    """A second-order scheduler's doubled ladder sets the steps of the control window, as in diffusers."""
    from pipeline_utils import scheduler_pair

    p = pair("sd1")
    before = p.ref.scheduler, p.mine.scheduler
    p.ref.scheduler, p.mine.scheduler = scheduler_pair(name, dict(p.ref.scheduler.config))
    try:
        a, b = run_both(p.ref, p.mine, image=control(), num_inference_steps=4, control_guidance_start=0.1,
                        control_guidance_end=0.7)
    finally:
        p.ref.scheduler, p.mine.scheduler = before
    assert max_diff(a, b) < TOL
