"""SD 1.x and SDXL inpainting parity with diffusers (9- and 4-channel UNets, mask formats, strength,
padding_mask_crop, masked_image_latents), crop-region / overlay helpers, bad input."""
from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch

from pipeline_utils import TOL, gen, max_diff
from sdxl_utils import (image_tensor, inpaint9_pair, mask_tensor, pil_array, refiner_pair, run_both, sd1_pair,
                        sd_inpaint_pair, sdxl_pair, to_pil)

torch.set_num_threads(1)
PROMPT = "a red square on a blue circle"


def _pairs(kind, scheduler=None):
    """(diffusers, impasto) inpainting pipelines: SD 9-channel, SDXL 9-channel, or SDXL base's 4-channel UNet."""
    pair = {"sd": sd_inpaint_pair, "sd4": sd1_pair, "xl9": inpaint9_pair, "xl4": sdxl_pair, "xlr": refiner_pair}[kind]()
    scheduler = scheduler or ("PNDMScheduler" if kind.startswith("sd") else "EulerDiscreteScheduler")
    pair.use_scheduler(scheduler)
    if kind == "sd4":  # SD 1.x's regular 4-channel UNet
        return pair.twin("StableDiffusionInpaintPipeline", requires_safety_checker=False)
    if kind == "xl4":
        return pair.twin("StableDiffusionXLInpaintPipeline")
    if kind == "xlr":  # the refiner: no first text encoder, aesthetic-score time ids
        return pair.twin("StableDiffusionXLInpaintPipeline", requires_aesthetics_score=True,
                         force_zeros_for_empty_prompt=False)
    return pair.ref, pair.mine


def _mask(fmt):
    m = mask_tensor()
    if fmt == "tensor":
        return m
    if fmt == "pil":
        return to_pil(m)
    return m[0, 0].numpy()  # (H, W) array


@pytest.mark.parametrize("kind", ["sd", "sd4", "xl9", "xl4", "xlr"])
@pytest.mark.parametrize("fmt,strength", [("tensor", 1.0), ("pil", 0.7), ("array", 0.9999)])
def test_parity(kind, fmt, strength):
    ref, mine = _pairs(kind)
    image = image_tensor() if fmt != "pil" else to_pil(image_tensor())
    a, b = run_both(ref, mine, prompt=PROMPT, image=image, mask_image=_mask(fmt), strength=strength,
                    num_inference_steps=4)
    assert b.images.shape == a.images.shape
    assert max_diff(a.images, b.images) < TOL


@pytest.mark.parametrize("kind", ["sd", "xl4"])
def test_batch_ancestral_generators(kind):
    """Each image its own generator; an ancestral sampler also draws from them after the VAE encodes."""
    ref, mine = _pairs(kind, "EulerAncestralDiscreteScheduler")
    a, b = run_both(ref, mine, prompt=[PROMPT, "x"], negative_prompt=["y", "z"], image=image_tensor(),
                    mask_image=mask_tensor(), strength=0.8, num_images_per_prompt=2, n_generators=4)
    assert b.images.shape == (4, 32, 32, 3)
    assert max_diff(a.images, b.images) < TOL


@pytest.mark.parametrize("kind", ["xl4", "xlr"])
def test_sdxl_crop_alone_matches_diffusers(kind):
    """The negative time ids' crop, left out: the positive crop (base) or (0, 0) (refiner), as diffusers."""
    ref, mine = _pairs(kind)
    a, b = run_both(ref, mine, prompt=PROMPT, image=image_tensor(), mask_image=mask_tensor(), strength=0.8,
                    crops_coords_top_left=(4, 4))
    assert max_diff(a.images, b.images) < TOL


@pytest.mark.parametrize("kind", ["sd", "xl4"])
def test_mask_of_another_size_is_resized_with_a_warning(kind, caplog):
    ref, mine = _pairs(kind)
    mask = to_pil(mask_tensor(size=24))
    with caplog.at_level("WARNING", logger="impasto"):
        a, b = run_both(ref, mine, prompt=PROMPT, image=image_tensor(), mask_image=mask, strength=0.9)
    assert "mask_image: size 24x24 (HxW) differs from the image's 32x32" in caplog.text
    assert b.images.shape == (1, 32, 32, 3) and max_diff(a.images, b.images) < TOL


@pytest.mark.parametrize("kind", ["sd", "xl9"])
def test_padding_mask_crop(kind):
    ref, mine = _pairs(kind)
    image, mask = to_pil(image_tensor(size=48)), to_pil(mask_tensor(size=48, box=(30, 40, 6, 14)))
    a, b = run_both(ref, mine, prompt=PROMPT, image=image, mask_image=mask, padding_mask_crop=4, height=32,
                    width=32, output_type="pil")
    assert b.images[0].size == (48, 48)
    assert max_diff(pil_array(a.images), pil_array(b.images)) <= 1 / 255 + 1e-6
    kept = np.asarray(b.images[0])[:20]  # far from the mask: the original pixels
    assert np.array_equal(kept, np.asarray(image)[:20])


@pytest.mark.parametrize("kind", ["sd", "xl9"])
def test_masked_image_latents(kind):
    ref, mine = _pairs(kind)
    latents = torch.randn(1, 4, 16, 16, generator=gen(7))
    a, b = run_both(ref, mine, prompt=PROMPT, image=image_tensor(), mask_image=mask_tensor(),
                    masked_image_latents=latents)
    assert max_diff(a.images, b.images) < TOL
    plain = mine(prompt=PROMPT, image=image_tensor(), mask_image=mask_tensor(), num_inference_steps=3,
                 output_type="np", generator=gen(0)).images
    assert max_diff(plain, b.images) > 1e-3


def test_sdxl_inpaint_handoff_and_scores():
    """A 4-channel refiner-style continuation: base inpaint stops at denoising_end, a second call continues."""
    ref, mine = _pairs("xl4")
    kw = dict(prompt=PROMPT, image=image_tensor(), mask_image=mask_tensor(), num_inference_steps=5)

    def run(p):
        lat = p(**kw, denoising_end=0.6, output_type="latent", generator=gen(0)).images
        second = dict(kw, image=lat)  # as diffusers' docs: the latents go in as the image
        return p(**second, denoising_start=0.6, output_type="np", generator=gen(1), guidance_rescale=0.5,
                 original_size=(40, 40)).images

    assert max_diff(run(ref), run(mine)) < TOL


def test_crop_region_and_overlay_match_diffusers():
    from diffusers.image_processor import VaeImageProcessor as Ref

    from impasto.image_processor import VaeImageProcessor
    from impasto.tasks.inpaint import apply_overlay, get_crop_region

    rng = np.random.RandomState(0)
    for h, w, box, (tw, th), pad in [(48, 64, (5, 9, 30, 40), (32, 32), 0), (64, 48, (0, 3, 2, 47), (64, 32), 6),
                                      (40, 40, (38, 40, 0, 40), (16, 48), 3), (50, 70, (10, 20, 60, 70), (24, 8), 2)]:
        arr = np.zeros((h, w), np.uint8)
        arr[box[0]:box[1], box[2]:box[3]] = 255
        mask = PIL.Image.fromarray(arr)
        crop = get_crop_region(mask, tw, th, pad)
        assert crop == Ref.get_crop_region(mask, tw, th, pad=pad)
        init = PIL.Image.fromarray(rng.randint(0, 255, (h, w, 3), np.uint8))
        out = PIL.Image.fromarray(rng.randint(0, 255, (th, tw, 3), np.uint8))
        mine = apply_overlay(VaeImageProcessor(), mask, init, out, crop)
        assert np.array_equal(np.asarray(mine), np.asarray(Ref().apply_overlay(mask, init, out, crop)))


def test_image_processor_helpers_match_diffusers():
    from diffusers.image_processor import VaeImageProcessor as Ref

    from impasto.image_processor import VaeImageProcessor

    rng = np.random.RandomState(1)
    mask = PIL.Image.fromarray((rng.rand(40, 48) > 0.7).astype(np.uint8) * 255)
    rgb = PIL.Image.fromarray(rng.randint(0, 255, (40, 48, 3), np.uint8))
    mine, ref = VaeImageProcessor(), Ref()
    for name in ("convert_to_rgb", "convert_to_grayscale"):
        assert np.array_equal(np.asarray(getattr(mine, name)(rgb)), np.asarray(getattr(ref, name)(rgb)))
    for factor in (1, 4):
        assert np.array_equal(np.asarray(mine.blur(mask, blur_factor=factor)), np.asarray(ref.blur(mask, factor)))
    assert mine.get_crop_region(mask, 32, 32, pad=2) == ref.get_crop_region(mask, 32, 32, pad=2)
    soft = torch.rand(1, 1, 8, 8, generator=gen(0))
    assert torch.equal(mine.binarize(soft.clone()), ref.binarize(soft.clone()))
    out = PIL.Image.fromarray(rng.randint(0, 255, (40, 48, 3), np.uint8))
    assert np.array_equal(np.asarray(mine.apply_overlay(mask, rgb, out)), np.asarray(ref.apply_overlay(mask, rgb, out)))


def test_bad_input():
    _, mine = _pairs("sd")
    _, xl = _pairs("xl9")
    for pipe in (mine, xl):
        with pytest.raises(ValueError, match="mask_image.*padding_mask_crop"):  # the crop box would be misplaced
            pipe(prompt=PROMPT, image=to_pil(image_tensor()), mask_image=to_pil(mask_tensor(size=24)),
                 padding_mask_crop=2, num_inference_steps=2)
        with pytest.raises(ValueError, match="mask_image"):
            pipe(prompt=PROMPT, image=image_tensor(), num_inference_steps=2)
        with pytest.raises(ValueError, match="padding_mask_crop"):
            pipe(prompt=PROMPT, image=image_tensor(), mask_image=mask_tensor(), padding_mask_crop=2)
        with pytest.raises(ValueError, match="strength"):
            pipe(prompt=PROMPT, image=image_tensor(), mask_image=mask_tensor(), strength=1.5)
        with pytest.raises(ValueError, match="mask_image"):  # empty mask: no region to crop
            pipe(prompt=PROMPT, image=to_pil(image_tensor()), mask_image=to_pil(mask_tensor() * 0),
                 padding_mask_crop=2, num_inference_steps=2)
    with pytest.raises(ValueError, match="denoising_start"):
        xl(prompt=PROMPT, image=image_tensor(), mask_image=mask_tensor(), denoising_start=1)
