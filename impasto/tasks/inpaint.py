"""Inpainting: repaint the white part of a mask, keep the rest (diffusers' semantics).

Two kinds of UNet:
- 9 input channels (inpainting UNets): every step sees [latents, mask, masked-image latents] concatenated.
- 4 input channels (any UNet): after every step the known region is replaced by the image latents noised
  to the next step's level (un-noised after the last step): latents = (1 - m) * image_t + m * latents.
`padding_mask_crop=p` works on the mask's bounding box (grown by p pixels, widened to the output's aspect
ratio) and pastes the result back onto the original image.
"""
from __future__ import annotations

import logging

import numpy as np
import PIL.Image
import PIL.ImageOps
import torch
import torch.nn.functional as F

from ..core.noise import randn_tensor
from .vae import encode

logger = logging.getLogger("impasto")


# ---- masks and crops ------------------------------------------------------------------------------------
def mask_size(mask) -> tuple[int, int] | None:
    """(height, width) of a mask given as PIL / numpy (H,W | H,W,1 | B,H,W | B,H,W,1) / torch (H,W | 1,H,W |
    B,1,H,W) or a list of them; None for an empty list."""
    item = mask[0] if isinstance(mask, list) else mask
    if isinstance(item, PIL.Image.Image):
        return item.height, item.width
    if isinstance(item, np.ndarray):
        if item.ndim == 4 or (item.ndim == 3 and item.shape[-1] == 1):
            return tuple(item.shape[-3:-1])
        return tuple(item.shape[-2:])
    if isinstance(item, torch.Tensor):
        return tuple(item.shape[-2:])
    raise ValueError(f"mask_image: expected a PIL image, numpy array or torch tensor, got {type(item).__name__}")


def image_size(image) -> tuple[int, int]:
    item = image[0] if isinstance(image, list) else image
    if isinstance(item, PIL.Image.Image):
        return item.height, item.width
    if isinstance(item, np.ndarray):
        return tuple(item.shape[-3:-1]) if item.ndim >= 3 else tuple(item.shape)
    return tuple(item.shape[-2:])


def check_mask(image, mask_image, latent_channels: int = 4, crop: bool = False):
    """ValueError naming mask_image when it is missing. A mask of another size than the image is resized to the
    output size with it, as diffusers does, with a warning; with `crop` (padding_mask_crop reads its box off the
    mask and cuts the image there) it is an error (latent images are exempt: their size is in latent pixels)."""
    if mask_image is None:
        raise ValueError("mask_image: required for inpainting (white = repaint, black = keep)")
    if isinstance(mask_image, list) and not mask_image:
        raise ValueError("mask_image: got an empty list")
    msize = mask_size(mask_image)
    item = image[0] if isinstance(image, list) else image
    if isinstance(item, torch.Tensor) and item.ndim >= 3 and item.shape[-3] == latent_channels:
        return
    isize = image_size(image)
    if tuple(isize) == tuple(msize):
        return
    message = f"mask_image: size {msize[0]}x{msize[1]} (HxW) differs from the image's {isize[0]}x{isize[1]}"
    if crop:
        raise ValueError(f"{message}; padding_mask_crop needs a mask of the image's size")
    logger.warning("%s; both are resized to the output size", message)


def shape_mask(mask):
    """Grayscale arrays/tensors in diffusers' layouts before VaeImageProcessor(do_convert_grayscale=True):
    a 3-D tensor gets a channel axis at 1, a 3-D array one at the end (or a batch axis if it already ends in 1)."""
    if isinstance(mask, torch.Tensor) and mask.ndim == 3:
        return mask.unsqueeze(1)
    if isinstance(mask, np.ndarray) and mask.ndim == 3:
        return mask[None] if mask.shape[-1] == 1 else mask[..., None]
    return mask


def get_crop_region(mask_image: PIL.Image.Image, width: int, height: int, pad: int = 0) -> tuple[int, int, int, int]:
    """(x1, y1, x2, y2): the bounding box of the mask's non-zero pixels grown by `pad` and then widened (or
    heightened) to the width/height aspect ratio, kept inside the image."""
    mask = np.array(mask_image.convert("L"))
    h, w = mask.shape
    cols, rows = np.flatnonzero(mask.any(axis=0)), np.flatnonzero(mask.any(axis=1))
    left, right = (cols[0], cols[-1] + 1) if cols.size else (w, 0)
    top, bottom = (rows[0], rows[-1] + 1) if rows.size else (h, 0)
    x1, y1 = int(max(left - pad, 0)), int(max(top - pad, 0))
    x2, y2 = int(min(right + pad, w)), int(min(bottom + pad, h))
    if x2 <= x1 or y2 <= y1:
        raise ValueError("mask_image: the mask is empty (all black), so padding_mask_crop has no region to crop; "
                         "paint the area to repaint white or leave padding_mask_crop=None")
    target = width / height
    if (x2 - x1) / (y2 - y1) > target:
        y1, y2 = _grow(y1, y2, int((x2 - x1) / target - (y2 - y1)), h)
    else:
        x1, x2 = _grow(x1, x2, int((y2 - y1) * target - (x2 - x1)), w)
    return x1, y1, x2, y2


def _grow(lo: int, hi: int, extra: int, limit: int) -> tuple[int, int]:
    lo, hi = lo - extra // 2, hi + extra - extra // 2
    if hi >= limit:
        lo, hi = lo - (hi - limit), limit
    if lo < 0:
        lo, hi = 0, hi - lo
    return lo, min(hi, limit)


def apply_overlay(processor, mask: PIL.Image.Image, init_image: PIL.Image.Image, image: PIL.Image.Image,
                  crop_coords=None) -> PIL.Image.Image:
    """Paste the generated `image` (of the crop region, if given) onto `init_image`, keeping the original
    pixels where the mask is black."""
    width, height = init_image.width, init_image.height
    kept = PIL.Image.new("RGBa", (width, height))
    kept.paste(init_image.convert("RGBA").convert("RGBa"), mask=PIL.ImageOps.invert(mask.convert("L")))
    kept = kept.convert("RGBA")
    if crop_coords is not None:
        x, y, x2, y2 = crop_coords
        base = PIL.Image.new("RGBA", (width, height))
        base.paste(processor.resize(image, height=y2 - y, width=x2 - x, resize_mode="crop"), (x, y))
        image = base.convert("RGB")
    image = image.convert("RGBA")
    image.alpha_composite(kept)
    return image.convert("RGB")


# ---- latents -----------------------------------------------------------------------------------------
def encode_image(vae, image: torch.Tensor, generator, upcast: bool = False) -> torch.Tensor:
    """Scaled latents of images in [-1, 1]; `upcast` encodes a float16 VAE in float32 (SDXL's force_upcast)."""
    dtype = image.dtype
    if upcast and vae.config.force_upcast:
        vae_dtype = vae.dtype
        vae.to(torch.float32)
        try:
            latents = encode(vae, image.float(), generator)
        finally:
            vae.to(vae_dtype)
    else:
        latents = encode(vae, image, generator)
    latents = latents.to(dtype)
    mean, std = getattr(vae.config, "latents_mean", None), getattr(vae.config, "latents_std", None)
    if mean is not None and std is not None:  # standardised latents, as the SDXL decode expects them
        shape = (1, len(mean), 1, 1)
        mean = torch.tensor(mean).view(shape).to(latents.device, dtype)
        std = torch.tensor(std).view(shape).to(latents.device, dtype)
        return (latents - mean) * vae.config.scaling_factor / std
    return vae.config.scaling_factor * latents


def _batch(x: torch.Tensor, batch: int, name: str) -> torch.Tensor:
    if x.shape[0] < batch:
        if batch % x.shape[0]:
            raise ValueError(f"{name}: cannot repeat {x.shape[0]} to the batch of {batch} "
                             "(prompts x num_images_per_prompt)")
        x = x.repeat(batch // x.shape[0], 1, 1, 1)
    return x


def prepare_latents(vae, scheduler, shape, dtype, device, generator, latents=None, image=None, timestep=None,
                    is_strength_max: bool = True, add_noise: bool = True, need_image_latents: bool = False,
                    latent_channels: int = 4, upcast: bool = False):
    """(latents, noise, image latents or None). Strength 1: pure noise x init_noise_sigma; else the image latents
    noised to `timestep`; add_noise=False (denoising_start): the image latents as they are."""
    batch = shape[0]
    if isinstance(generator, list) and len(generator) != batch:
        raise ValueError(f"generator: got a list of {len(generator)} generators for an effective batch of {batch} "
                         "(prompts x num_images_per_prompt)")
    image_latents = None
    if image.shape[1] == latent_channels:
        image_latents = _batch(image.to(device=device, dtype=dtype), batch, "image")
    elif need_image_latents or (latents is None and not is_strength_max) or not add_noise:
        image_latents = _batch(encode_image(vae, image.to(device=device, dtype=dtype), generator, upcast), batch,
                               "image")
    if latents is not None and add_noise:
        noise = latents.to(device)
        return noise * scheduler.init_noise_sigma, noise, image_latents
    noise = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
    if not add_noise:
        if latents is not None:
            logger.warning("latents: not used with denoising_start (the image latents are continued); pass the "
                           "first pipeline's latents as image")
        return image_latents, noise, image_latents
    if is_strength_max:
        return noise * scheduler.init_noise_sigma, noise, image_latents
    return scheduler.add_noise(image_latents, noise, timestep), noise, image_latents


def prepare_mask_latents(vae, mask: torch.Tensor, masked_image, batch: int, latent_hw, dtype, device, generator,
                         guided: bool, latent_channels: int = 4, upcast: bool = False):
    """(mask at latent size, masked-image latents or None), repeated to the batch and doubled for guidance."""
    mask = F.interpolate(mask, size=tuple(latent_hw)).to(device=device, dtype=dtype)
    mask = _batch(mask, batch, "mask_image")
    mask = torch.cat([mask, mask]) if guided else mask
    if masked_image is None:
        return mask, None
    masked_image = masked_image.to(device=device, dtype=dtype)
    if masked_image.shape[1] != latent_channels:
        masked_image = encode_image(vae, masked_image, generator, upcast)
    latents = _batch(masked_image, batch, "masked_image_latents")
    latents = torch.cat([latents, latents]) if guided else latents
    return mask, latents.to(device=device, dtype=dtype)


def concat_input(x: torch.Tensor, state: dict) -> torch.Tensor:
    """The 9-channel UNet input: [scaled latents, mask, masked-image latents]."""
    return torch.cat([x, state["mask"], state["masked_image_latents"]], dim=1)


def blend_known(scheduler, timesteps, image_latents: torch.Tensor, noise: torch.Tensor, pipe):
    """The 4-channel UNet's `after_step`: keep the known region, noised to the next step's level."""
    def after_step(i: int, state: dict):
        mask = state["mask"]
        if pipe.do_classifier_free_guidance:
            mask = mask.chunk(2)[0]
        known = image_latents
        if i < len(timesteps) - 1:
            known = scheduler.add_noise(image_latents, noise, torch.tensor([timesteps[i + 1]]))
        state["latents"] = (1 - mask) * known + mask * state["latents"]
    return after_step


def check_unet_channels(unet, latent_channels: int, mask, masked_image_latents):
    channels = unet.config.in_channels
    if channels == 4:
        return
    if channels != 9:
        raise ValueError(f"unet: inpainting needs a UNet with 4 or 9 input channels, got {channels}")
    got = latent_channels + mask.shape[1] + masked_image_latents.shape[1]
    if got != channels:
        raise ValueError(f"masked_image_latents: the UNet takes {channels} channels but latents ({latent_channels}) + "
                         f"mask ({mask.shape[1]}) + masked image ({masked_image_latents.shape[1]}) give {got}")
