"""hires_fix (A1111's Hires. fix) against the same two passes written with diffusers' pipelines."""
import numpy as np
import pytest
import torch.nn.functional as F

import impasto

from pipeline_utils import gen, max_diff, shared_pair
from sdxl_utils import sdxl_pair

pytestmark = pytest.mark.usefixtures("one_thread")
PROMPT = "a red square on a blue circle"


def diffusers_hires(ref, img2img_cls, scale, strength, upscaler, steps, hires_steps=None, **kw):
    """The recipe by hand with diffusers: txt2img to latents (or images), upscale, img2img."""
    import diffusers

    g = gen(0)
    if upscaler.startswith("latent"):
        latents = ref(PROMPT, num_inference_steps=steps, output_type="latent", generator=g, **kw).images
        h, w = latents.shape[-2:]
        size = (int(h * scale), int(w * scale))
        image = F.interpolate(latents, size=size, mode="bicubic" if upscaler == "latent-bicubic" else "bilinear",
                              antialias=False)
    else:
        first = ref(PROMPT, num_inference_steps=steps, output_type="pil", generator=g, **kw).images
        image = [im.resize((int(im.width * scale), int(im.height * scale)), 1) for im in first]  # 1 = LANCZOS
    second = getattr(diffusers, img2img_cls)(**ref.components)
    second.set_progress_bar_config(disable=True)
    kw.pop("height", None), kw.pop("width", None)
    return second(PROMPT, image=image, strength=strength, num_inference_steps=hires_steps or steps,
                  output_type="np", generator=g, **kw).images


@pytest.mark.parametrize("upscaler, scale, strength, extra", [
    ("latent", 2.0, 0.7, {}),
    ("latent-bicubic", 1.5, 0.5, dict(negative_prompt="blurry", num_images_per_prompt=2)),
    ("lanczos", 2.0, 0.6, dict(hires_steps=4)),
], ids=["latent", "bicubic-batch", "lanczos"])
def test_sd_matches_diffusers_recipe(upscaler, scale, strength, extra):
    pair = shared_pair("sd1")
    pair.set_scheduler("EulerDiscreteScheduler")
    extra = dict(extra)
    hires_steps = extra.pop("hires_steps", None)
    want = diffusers_hires(pair.ref, "StableDiffusionImg2ImgPipeline", scale, strength, upscaler, 3, hires_steps,
                           **extra)
    got = impasto.hires_fix(pair.mine, PROMPT, scale=scale, strength=strength, upscaler=upscaler,
                            hires_steps=hires_steps, num_inference_steps=3, generator=gen(0), output_type="np",
                            **extra).images
    base = pair.mine.unet.config.sample_size * pair.mine.vae_scale_factor
    assert got.shape == (extra.get("num_images_per_prompt", 1), int(base * scale), int(base * scale), 3)
    assert max_diff(got, want) < 1e-3, max_diff(got, want)


def test_sdxl_matches_diffusers_recipe():
    pair = sdxl_pair()
    want = diffusers_hires(pair.ref, "StableDiffusionXLImg2ImgPipeline", 2.0, 0.7, "latent", 2, height=32,
                           width=32)
    got = impasto.hires_fix(pair.mine, PROMPT, num_inference_steps=2, height=32, width=32, generator=gen(0),
                            output_type="np").images
    assert got.shape == (1, 64, 64, 3) and max_diff(got, want) < 1e-3


def test_second_pass_generator_and_bad_input():
    pair = shared_pair("sd1")
    pipe = pair.mine
    pair.set_scheduler("EulerDiscreteScheduler")
    kw = dict(num_inference_steps=2, output_type="np")
    a = impasto.hires_fix(pipe, PROMPT, generator=gen(0), hires_generator=gen(1), **kw).images
    b = impasto.hires_fix(pipe, PROMPT, generator=gen(0), hires_generator=gen(1), **kw).images
    c = impasto.hires_fix(pipe, PROMPT, generator=gen(0), hires_generator=gen(2), **kw).images
    assert np.array_equal(a, b) and np.abs(a - c).max() > 1e-3
    img2img = impasto.StableDiffusionImg2ImgPipeline.from_pipe(pipe)
    for kwargs, word in [(dict(scale=0), "scale"), (dict(strength=0.0), "strength"), (dict(strength=1.5), "strength"),
                         (dict(upscaler="ESRGAN"), "upscaler"), (dict(hires_steps=0), "hires_steps"),
                         (dict(scale=0.1), "scale")]:
        with pytest.raises(ValueError, match=word):
            impasto.hires_fix(pipe, PROMPT, **kwargs, **kw)
    with pytest.raises(ValueError, match="pipe: hires_fix takes a text-to-image pipeline"):
        impasto.hires_fix(img2img, PROMPT, **kw)
