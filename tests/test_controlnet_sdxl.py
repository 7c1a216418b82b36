"""StableDiffusionXLControlNetPipeline, StableDiffusionXLControlNetImg2ImgPipeline and MultiControlNetModel
against diffusers on tiny seeded-random models (float32, CPU). The ControlNets are diffusers' `from_unet` of the
tiny UNets, every parameter jittered."""
from __future__ import annotations

import functools
import json
import tempfile
from pathlib import Path

import pytest
import torch

import impasto
import tiny
from pipeline_utils import TOL, gen, max_diff
from test_controlnet import PROMPT, control, pair, pil_control, run_both

pytestmark = pytest.mark.usefixtures("one_thread")


def jittered_controlnet(unet, seed: int):
    import diffusers

    torch.manual_seed(seed)
    cn = diffusers.ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 16))
    with torch.no_grad():
        for p in cn.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return cn.eval()


class XLPair:
    def __init__(self):
        import diffusers

        comps = tiny.make_sd_components("sdxl")
        comps["controlnet"] = jittered_controlnet(comps["unet"], 1)
        self.ref = diffusers.StableDiffusionXLControlNetPipeline(**comps)
        self.ref.set_progress_bar_config(disable=True)
        self.folder = tiny.save_folder(self.ref, Path(tempfile.mkdtemp(prefix="impasto-cn-xl-")) / "sdxl")
        self.mine = impasto.DiffusionPipeline.from_pretrained(self.folder)
        self.mine.set_progress_bar_config(disable=True)
        self.second = jittered_controlnet(comps["unet"], 2)  # a second net for the multi tests

    def multi(self):
        import diffusers

        folder = Path(tempfile.mkdtemp(prefix="impasto-cn-xl2-"))
        self.second.save_pretrained(folder)
        ref = diffusers.StableDiffusionXLControlNetPipeline(
            **{**self.ref.components, "controlnet": [self.ref.controlnet, self.second]})
        mine = impasto.StableDiffusionXLControlNetPipeline(
            **{**self.mine.components, "controlnet": [self.mine.controlnet,
                                                      impasto.ControlNetModel.from_pretrained(folder)]})
        for p in (ref, mine):
            p.set_progress_bar_config(disable=True)
        return ref, mine


@functools.lru_cache(maxsize=None)
def xl_pair() -> XLPair:
    return XLPair()


XL_CASES = {
    "default": dict(),
    "guess_mode": dict(guess_mode=True),
    "scale 0.5": dict(controlnet_conditioning_scale=0.5),
    "window 0.2-0.8": dict(control_guidance_start=0.2, control_guidance_end=0.8, num_inference_steps=5),
    "sizes": dict(original_size=(64, 48), crops_coords_top_left=(4, 2), target_size=(40, 40),
                  negative_original_size=(24, 24), negative_crops_coords_top_left=(1, 1),
                  negative_target_size=(32, 16), prompt_2="blue", negative_prompt="dark"),
    "PIL 40x48 at 32x32, denoising_end": dict(image=pil_control(), height=32, width=32, denoising_end=0.6),
}


@pytest.mark.parametrize("case", list(XL_CASES))
def test_sdxl_matches_diffusers(case):
    p = xl_pair()
    assert type(p.mine) is impasto.StableDiffusionXLControlNetPipeline
    kw = {"image": control(), "num_inference_steps": 2, **XL_CASES[case]}
    a, b = run_both(p.ref, p.mine, **kw)
    assert a.shape == b.shape and max_diff(a, b) < TOL


def test_sdxl_control_acts():
    p = xl_pair()
    kw = dict(image=control(), num_inference_steps=2, output_type="np")
    full = p.mine(PROMPT, generator=gen(0), **kw).images
    off = p.mine(PROMPT, generator=gen(0), controlnet_conditioning_scale=0.0, **kw).images
    assert max_diff(full, off) > 10 * TOL
    seen = []

    def callback(pipe, i, t, tensors):
        seen.append(tuple(tensors["image"].shape))
        return {"image": torch.zeros_like(tensors["image"])}  # a black control image from step 2 on

    a = p.ref(PROMPT, generator=gen(0), callback_on_step_end=lambda pipe, i, t, k: {"image": torch.zeros_like(
        k["image"])}, callback_on_step_end_tensor_inputs=["image"], **kw).images
    b = p.mine(PROMPT, generator=gen(0), callback_on_step_end=callback, callback_on_step_end_tensor_inputs=["image"],
               **kw).images
    assert seen == [(2, 3, 32, 32)] * 2 and max_diff(a, b) < TOL
    plain = impasto.StableDiffusionXLPipeline(**{k: v for k, v in p.mine.components.items() if k != "controlnet"})
    again = impasto.StableDiffusionXLControlNetPipeline.from_pipe(plain, controlnet=p.mine.controlnet)
    assert again.unet is plain.unet and again.controlnet is p.mine.controlnet


def test_sdxl_img2img_matches_diffusers():
    import diffusers

    p = xl_pair()
    ref = diffusers.StableDiffusionXLControlNetImg2ImgPipeline(**p.ref.components)
    mine = impasto.StableDiffusionXLControlNetImg2ImgPipeline(**p.mine.components)
    for q in (ref, mine):
        q.set_progress_bar_config(disable=True)
    init = torch.rand(1, 3, 32, 32, generator=gen(7))
    for kw in (dict(control_image=control()), dict(control_image=control(), guess_mode=True, strength=0.6),
               dict(control_image=pil_control(), height=32, width=32, num_images_per_prompt=2,
                    original_size=(64, 64), target_size=(48, 40), control_guidance_end=0.5)):
        a, b = run_both(ref, mine, image=init, num_inference_steps=3, **kw)
        assert a.shape == b.shape and max_diff(a, b) < TOL, kw


def test_sdxl_img2img_refiner_matches_diffusers():
    """requires_aesthetics_score (a refiner UNet, no first text encoder): the time ids carry aesthetic scores."""
    import diffusers

    comps = tiny.make_sdxl_refiner_components()
    comps["controlnet"] = jittered_controlnet(comps["unet"], 3)
    ref = diffusers.StableDiffusionXLControlNetImg2ImgPipeline(**comps, requires_aesthetics_score=True,
                                                               force_zeros_for_empty_prompt=False)
    ref.set_progress_bar_config(disable=True)
    folder = tiny.save_folder(ref, Path(tempfile.mkdtemp(prefix="impasto-cn-xlr-")) / "refiner")
    mine = impasto.DiffusionPipeline.from_pretrained(folder)
    mine.set_progress_bar_config(disable=True)
    assert type(mine) is impasto.StableDiffusionXLControlNetImg2ImgPipeline and mine.text_encoder is None
    kw = dict(image=torch.rand(1, 3, 32, 32, generator=gen(7)), control_image=control(), num_inference_steps=3,
              aesthetic_score=7.0, negative_aesthetic_score=2.0)
    # diffusers 0.42.1 fails on the default original_size here (torch.Size + a float score): give it
    a, b = run_both(ref, mine, original_size=(32, 32), **kw)
    assert max_diff(a, b) < TOL
    again = mine(PROMPT, generator=gen(0), output_type="np", **kw).images  # impasto takes the default
    assert max_diff(again, b) == 0.0


# ---- several ControlNets --------------------------------------------------------------------------------------
MULTI = dict(image=[control(5), control(6)], controlnet_conditioning_scale=[0.8, 0.5],
             control_guidance_start=[0.0, 0.25], control_guidance_end=[0.75, 1.0], num_inference_steps=4)


def sd_multi():
    import diffusers

    p = pair("sd1")
    torch.manual_seed(2)
    second = diffusers.ControlNetModel.from_unet(p.ref.unet, conditioning_embedding_out_channels=(8, 16))
    with torch.no_grad():
        for q in second.parameters():
            q.add_(torch.randn_like(q) * 0.05)
    folder = Path(tempfile.mkdtemp(prefix="impasto-cn2-"))
    second.eval().save_pretrained(folder)
    nets = [p.mine.controlnet, impasto.ControlNetModel.from_pretrained(folder)]
    return p, [p.ref.controlnet, second], nets


@functools.lru_cache(maxsize=None)
def sd_multi_pipes():
    import diffusers

    p, ref_nets, nets = sd_multi()
    ref = diffusers.StableDiffusionControlNetPipeline(**{**p.ref.components, "controlnet": ref_nets},
                                                      requires_safety_checker=False)
    mine = impasto.StableDiffusionControlNetPipeline(**{**p.mine.components, "controlnet": nets},
                                                     requires_safety_checker=False)
    for q in (ref, mine):
        q.set_progress_bar_config(disable=True)
    return ref, mine


@pytest.mark.parametrize("case", ["windows", "guess_mode", "nested per prompt"])
def test_multi_sd_matches_diffusers(case):
    ref, mine = sd_multi_pipes()
    assert type(mine.controlnet) is impasto.MultiControlNetModel
    kw = dict(MULTI)
    if case == "guess_mode":
        kw.update(guess_mode=True, controlnet_conditioning_scale=0.7)
    if case == "nested per prompt":
        kw.update(prompt=[PROMPT, "green"], image=[[control(5), control(6)], [control(7), control(8)]])
    a, b = run_both(ref, mine, **kw)
    assert a.shape == b.shape and max_diff(a, b) < TOL


def test_multi_sd_img2img_matches_diffusers():
    import diffusers

    ref_t, mine_t = sd_multi_pipes()
    ref = diffusers.StableDiffusionControlNetImg2ImgPipeline(**ref_t.components, requires_safety_checker=False)
    mine = impasto.StableDiffusionControlNetImg2ImgPipeline(**mine_t.components, requires_safety_checker=False)
    for q in (ref, mine):
        q.set_progress_bar_config(disable=True)
    kw = {**MULTI, "control_image": MULTI["image"], "image": torch.rand(1, 3, 32, 32, generator=gen(7))}
    a, b = run_both(ref, mine, **kw)
    assert max_diff(a, b) < TOL


def test_multi_sdxl_matches_diffusers():
    import diffusers

    ref, mine = xl_pair().multi()
    a, b = run_both(ref, mine, **{**MULTI, "num_inference_steps": 3})
    assert a.shape == b.shape and max_diff(a, b) < TOL
    ref = diffusers.StableDiffusionXLControlNetImg2ImgPipeline(**ref.components)
    mine = impasto.StableDiffusionXLControlNetImg2ImgPipeline(**mine.components)
    for q in (ref, mine):
        q.set_progress_bar_config(disable=True)
    kw = {**MULTI, "control_image": MULTI["image"], "image": torch.rand(1, 3, 32, 32, generator=gen(7))}
    a, b = run_both(ref, mine, **kw)
    assert max_diff(a, b) < TOL


def test_multi_save_load_layout(tmp_path):
    import diffusers

    ref, mine = sd_multi_pipes()
    mine.save_pretrained(tmp_path / "saved")
    index = json.loads((tmp_path / "saved" / "model_index.json").read_text())
    assert index["controlnet"] == ["diffusers", "MultiControlNetModel"]
    assert (tmp_path / "saved" / "controlnet_1" / "config.json").is_file()
    assert not (tmp_path / "saved" / "controlnet_2").exists()
    again = impasto.DiffusionPipeline.from_pretrained(tmp_path / "saved")
    assert type(again.controlnet) is impasto.MultiControlNetModel and len(again.controlnet.nets) == 2
    theirs = diffusers.StableDiffusionControlNetPipeline.from_pretrained(tmp_path / "saved")
    assert len(theirs.controlnet.nets) == 2
    again.set_progress_bar_config(disable=True)
    kw = dict(MULTI, num_inference_steps=2, output_type="np")
    assert max_diff(mine(PROMPT, generator=gen(0), **kw).images, again(PROMPT, generator=gen(0), **kw).images) == 0


def test_multi_bad_inputs_name_the_argument():
    _, mine = sd_multi_pipes()
    kw = dict(num_inference_steps=2, output_type="np")
    two = [control(5), control(6)]
    for bad, name in [
        (dict(image=control()), "image"),  # one image for two nets
        (dict(image=[control()]), "image"),
        (dict(image=[control(), control(), control()]), "image"),
        (dict(image=[[control(), control()], [control()]], prompt=[PROMPT, PROMPT]), "image"),
        (dict(image=two, controlnet_conditioning_scale=[1.0]), "controlnet_conditioning_scale"),
        (dict(image=two, controlnet_conditioning_scale=[1.0, "x"]), "controlnet_conditioning_scale"),
        (dict(image=two, control_guidance_start=[0.0]), "control_guidance_start"),
        (dict(image=two, control_guidance_end=[1.0, 1.0, 1.0]), "control_guidance_end"),
        (dict(image=two, control_guidance_start=[0.0, 0.6], control_guidance_end=[1.0, 0.5]),
         "control_guidance_start"),
    ]:
        with pytest.raises(ValueError, match=name):
            mine(**{"prompt": PROMPT, **bad, **kw})
    with pytest.raises(ValueError, match="controlnet"):
        impasto.StableDiffusionControlNetPipeline(**{**mine.components, "controlnet": []})
    with pytest.raises(ValueError, match="controlnet"):
        impasto.StableDiffusionControlNetPipeline(**{**mine.components, "controlnet": [mine.unet]})


def test_sdxl_bad_inputs_name_the_argument():
    p = xl_pair()
    kw = dict(num_inference_steps=2, output_type="np")
    for bad, name in [
        (dict(), "image"),
        (dict(image=[control(), control()]), "image"),  # two images for one prompt
        (dict(image=control(), controlnet_conditioning_scale=[1.0, 0.5]), "controlnet_conditioning_scale"),
        (dict(image=control(), control_guidance_start=0.5, control_guidance_end=0.2), "control_guidance_start"),
        (dict(image=control(), original_size=(32,)), "original_size"),
        (dict(image=control(), prompt=None, prompt_2="x", prompt_embeds=torch.zeros(1, 77, 64)), "prompt_2"),
    ]:
        with pytest.raises(ValueError, match=name):
            p.mine(**{"prompt": PROMPT, **bad, **kw})
    i2i = impasto.StableDiffusionXLControlNetImg2ImgPipeline(**p.mine.components)
    with pytest.raises(ValueError, match="control_image"):
        i2i(PROMPT, image=control(), **kw)
    with pytest.raises(ValueError, match="strength"):
        i2i(PROMPT, image=control(), control_image=control(), strength=1.5, **kw)
    _, multi = p.multi()
    with pytest.raises(ValueError, match="control_guidance_end"):
        multi(PROMPT, image=[control(), control()], control_guidance_end=[1.0], **kw)
