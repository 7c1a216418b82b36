"""DiffusionPipeline.from_pipe: another pipeline class over the same component objects, as diffusers 0.42.1."""
from __future__ import annotations

import pytest
import torch

from pipeline_utils import TOL, gen, max_diff, shared_pair
from sdxl_utils import image_tensor, mask_tensor, run_both, sdxl_pair

torch.set_num_threads(1)
PROMPT = "a red square on a blue circle"


@pytest.fixture(scope="module")
def pair():
    p = shared_pair("sd1")
    p.set_scheduler("PNDMScheduler")
    return p


def _quiet(pipe):
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _i2i(pipe, **kw):
    kw = {"prompt": PROMPT, "image": image_tensor(), "strength": 0.75, "num_inference_steps": 3, **kw}
    return pipe(**kw, output_type="np", generator=gen(0)).images


def _tensors(pipe) -> set[int]:
    return {t.data_ptr() for _, m in pipe._torch_modules() for t in [*m.parameters(), *m.buffers()]}


def test_components_are_shared(pair):
    import impasto

    new = impasto.StableDiffusionImg2ImgPipeline.from_pipe(pair.mine)
    assert type(new) is impasto.StableDiffusionImg2ImgPipeline
    assert new.components.keys() == pair.mine.components.keys()
    for name, component in pair.mine.components.items():
        assert getattr(new, name) is component, name
    assert _tensors(new) == _tensors(pair.mine)  # no parameter or buffer allocated anew
    assert new.config.requires_safety_checker is False and new.config.unet == pair.mine.config.unet
    assert new.name_or_path == pair.mine.name_or_path is not None
    # the base class keeps the source's class (diffusers' DiffusionPipeline.from_pipe raises instead)
    assert type(impasto.DiffusionPipeline.from_pipe(pair.mine)) is type(pair.mine)


def test_img2img_same_image_as_direct_loaded_and_diffusers(pair):
    import diffusers
    import impasto

    new = _quiet(impasto.StableDiffusionImg2ImgPipeline.from_pipe(pair.mine))
    direct = _quiet(impasto.StableDiffusionImg2ImgPipeline(**pair.mine.components))
    loaded = _quiet(impasto.StableDiffusionImg2ImgPipeline.from_pretrained(pair.folder))
    theirs = _quiet(diffusers.StableDiffusionImg2ImgPipeline.from_pipe(pair.ref))
    image = _i2i(new)
    assert max_diff(image, _i2i(direct)) == 0.0
    assert max_diff(image, _i2i(loaded)) == 0.0
    assert max_diff(image, _i2i(theirs)) < TOL


def test_keyword_overrides_component_and_option(pair):
    import diffusers
    import impasto

    base = pair.mine
    before = base(PROMPT, num_inference_steps=3, output_type="np", generator=gen(0)).images
    ddim = impasto.DDIMScheduler.from_config(base.scheduler.config)
    new = _quiet(impasto.StableDiffusionImg2ImgPipeline.from_pipe(base, scheduler=ddim, requires_safety_checker=True))
    assert new.scheduler is ddim and new.config.scheduler == ["diffusers", "DDIMScheduler"]
    assert new.config.requires_safety_checker is True and new.unet is base.unet
    assert new.scheduler.copy().config.clip_sample is False  # the constructor's fix-up survives a copy
    assert type(base.scheduler).__name__ == "PNDMScheduler" and base.config.scheduler[1] == "PNDMScheduler"
    assert base.config.requires_safety_checker is False
    theirs = _quiet(diffusers.StableDiffusionImg2ImgPipeline.from_pipe(
        pair.ref, scheduler=diffusers.DDIMScheduler.from_config(pair.ref.scheduler.config)))
    image = _i2i(new)
    assert max_diff(image, _i2i(theirs)) < TOL  # DDIM on both sides
    assert max_diff(image, _i2i(_quiet(impasto.StableDiffusionImg2ImgPipeline.from_pipe(base)))) > 10 * TOL  # not PNDM
    after = base(PROMPT, num_inference_steps=3, output_type="np", generator=gen(0)).images
    assert max_diff(before, after) == 0.0  # the source pipeline is unchanged


def test_sd_chain_through_inpaint(pair):
    import diffusers
    import impasto

    inpaint = _quiet(impasto.StableDiffusionInpaintPipeline.from_pipe(pair.mine))
    theirs = _quiet(diffusers.StableDiffusionInpaintPipeline.from_pipe(pair.ref))
    a, b = run_both(theirs, inpaint, prompt=PROMPT, image=image_tensor(), mask_image=mask_tensor(), strength=0.9)
    assert max_diff(a.images, b.images) < TOL
    i2i = _quiet(impasto.StableDiffusionImg2ImgPipeline.from_pipe(inpaint))
    assert max_diff(_i2i(i2i), _i2i(impasto.StableDiffusionImg2ImgPipeline(**pair.mine.components))) == 0.0
    back = _quiet(impasto.StableDiffusionPipeline.from_pipe(i2i))
    assert type(back) is impasto.StableDiffusionPipeline and back.unet is pair.mine.unet


def test_sdxl_txt2img_to_img2img_to_inpaint():
    import diffusers
    import impasto

    xl = sdxl_pair()
    xl.use_scheduler("EulerDiscreteScheduler")
    mine = _quiet(impasto.StableDiffusionXLImg2ImgPipeline.from_pipe(xl.mine))
    theirs = _quiet(diffusers.StableDiffusionXLImg2ImgPipeline.from_pipe(xl.ref))
    assert mine.text_encoder_2 is xl.mine.text_encoder_2 and mine.tokenizer_2 is xl.mine.tokenizer_2
    assert _tensors(mine) == _tensors(xl.mine)
    a, b = run_both(theirs, mine, prompt=PROMPT, image=image_tensor(), strength=0.6)
    assert max_diff(a.images, b.images) < TOL
    direct = _quiet(impasto.StableDiffusionXLImg2ImgPipeline(**xl.mine.components))
    assert max_diff(_i2i(direct, strength=0.6), b.images) == 0.0
    a, b = run_both(_quiet(diffusers.StableDiffusionXLInpaintPipeline.from_pipe(theirs)),
                    _quiet(impasto.StableDiffusionXLInpaintPipeline.from_pipe(mine)),
                    prompt=PROMPT, image=image_tensor(), mask_image=mask_tensor(), strength=0.9)
    assert max_diff(a.images, b.images) < TOL


def test_config_options_travel_as_diffusers():
    """An option the target lacks is kept as `_option` and given back to a later pipeline that takes it."""
    import diffusers
    import impasto

    xl = sdxl_pair()
    for lib, src in ((impasto, xl.mine), (diffusers, xl.ref)):
        scored = lib.StableDiffusionXLImg2ImgPipeline.from_pipe(src, requires_aesthetics_score=True)
        base = lib.StableDiffusionXLPipeline.from_pipe(scored)
        assert "requires_aesthetics_score" not in base.config and base.config["_requires_aesthetics_score"] is True
        assert lib.StableDiffusionXLInpaintPipeline.from_pipe(base).config.requires_aesthetics_score is True
        assert lib.StableDiffusionXLImg2ImgPipeline.from_pipe(src).config.requires_aesthetics_score is False


def test_dtype_and_offload_state(pair, monkeypatch):
    import impasto

    pipe = impasto.StableDiffusionPipeline.from_pretrained(pair.folder).to(torch.bfloat16)  # own weights
    kept = impasto.StableDiffusionImg2ImgPipeline.from_pipe(pipe)
    assert kept.unet.dtype == torch.bfloat16  # diffusers 0.42.1 casts to float32 here (and so the source too)
    cast = impasto.StableDiffusionImg2ImgPipeline.from_pipe(pipe, torch_dtype=torch.float32)
    assert cast.unet is pipe.unet and pipe.unet.dtype == torch.float32 and pipe.vae.dtype == torch.float32

    # offload hooks sit on the shared modules: the new pipeline knows them (CPU stands in for the accelerator)
    monkeypatch.setattr(type(pipe), "_offload_target", lambda self, gpu_id, device: torch.device("cpu"))
    pipe.enable_model_cpu_offload()
    new = _quiet(impasto.StableDiffusionImg2ImgPipeline.from_pipe(pipe))
    assert new._offload_hooks is pipe._offload_hooks and new._execution_device == torch.device("cpu")
    assert _i2i(new, num_inference_steps=2).shape == (1, 32, 32, 3)
    new.remove_all_hooks()
    assert not pipe.unet._forward_pre_hooks


@pytest.mark.parametrize("source,kwargs,error,message", [
    ("int", {}, TypeError, "pipeline: expected a DiffusionPipeline, got int"),
    ("class", {}, TypeError, "got the class StableDiffusionPipeline \\(pass an instance\\)"),
    ("diffusers", {}, TypeError, "got StableDiffusionPipeline from diffusers"),
    ("sd", {"foo": 1}, TypeError, "foo is neither a component nor an option of StableDiffusionImg2ImgPipeline"),
    ("sd", {"dtype": torch.float16, "torch_dtype": torch.float16}, ValueError, "dtype, torch_dtype"),
    ("sd", {"torch_dtype": "float77"}, ValueError, "torch_dtype: expected a torch.dtype"),
    ("sd", {"custom_pipeline": "lpw_stable_diffusion"}, ValueError, "custom_pipeline"),
])
def test_bad_input(pair, source, kwargs, error, message):
    import impasto

    src = {"int": 42, "class": impasto.StableDiffusionPipeline, "diffusers": pair.ref, "sd": pair.mine}[source]
    with pytest.raises(error, match=message):
        impasto.StableDiffusionImg2ImgPipeline.from_pipe(src, **kwargs)


def test_missing_component_is_named(pair):
    import diffusers
    import impasto

    with pytest.raises(ValueError, match="StableDiffusionXLPipeline needs text_encoder_2, tokenizer_2, which "
                                         "StableDiffusionPipeline does not have"):
        impasto.StableDiffusionXLPipeline.from_pipe(pair.mine)
    with pytest.raises(ValueError):  # diffusers raises too, listing every expected component
        diffusers.StableDiffusionXLPipeline.from_pipe(pair.ref)
    with pytest.raises(TypeError, match="foo"):
        diffusers.StableDiffusionImg2ImgPipeline.from_pipe(pair.ref, foo=1)
    xl = impasto.StableDiffusionXLPipeline.from_pipe(pair.mine, text_encoder_2=pair.mine.text_encoder,
                                                     tokenizer_2=pair.mine.tokenizer)
    assert xl.text_encoder_2 is xl.text_encoder and xl.config["_requires_safety_checker"] is False
