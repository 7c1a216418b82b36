"""LDMSuperResolutionPipeline: CompVis' 4x latent diffusion upscaler (`CompVis/ldm-super-resolution-4x-openimages`).

The low-resolution image (in [-1, 1]) lives at the latent resolution: each step the UNet2DModel sees
`cat([latents, image], channels)`, and the VQModel decodes the final latents to the full resolution.
Images larger than the model was trained on can be denoised in overlapping tiles (`tile_size`), whose noise
predictions are blended with linear ramps each step, then decoded in tiles.
"""
from __future__ import annotations

import logging

import numpy as np
import PIL.Image
import torch

from ..core.noise import randn_tensor
from ..tasks.denoise import step_kwargs
from .latent_diffusion import check_output_type, to_output
from .outputs import ImagePipelineOutput
from .pipeline_utils import DiffusionPipeline

logger = logging.getLogger("impasto")

SIZE_MULTIPLE = 32  # PIL inputs are resized down to a multiple of 32, as the reference preprocessing


def pil_to_tensor(image: PIL.Image.Image) -> torch.Tensor:
    """PIL image -> (1, 3, h, w) float32 in [-1, 1]; alpha, palette and grey images become RGB (logged)."""
    if not isinstance(image, PIL.Image.Image):
        raise ValueError(f"image: expected a PIL.Image.Image, got {type(image).__name__}")
    if image.width == 0 or image.height == 0:
        raise ValueError(f"image: has zero size ({image.width}x{image.height})")
    if image.mode != "RGB":
        logger.info("image: converting mode %s to RGB%s", image.mode,
                    " (alpha dropped)" if "A" in image.getbands() else "")
        image = image.convert("RGB")
    array = np.asarray(image, dtype=np.float32)[None].transpose(0, 3, 1, 2) / 255.0
    return 2.0 * torch.from_numpy(np.ascontiguousarray(array)) - 1.0


def preprocess(image: PIL.Image.Image) -> torch.Tensor:
    """PIL image -> (1, 3, h, w) in [-1, 1], w and h rounded down to a multiple of 32 (Lanczos), as diffusers."""
    if not isinstance(image, PIL.Image.Image):
        raise ValueError(f"image: expected a PIL.Image.Image, got {type(image).__name__}")
    w, h = image.size
    w32, h32 = w - w % SIZE_MULTIPLE, h - h % SIZE_MULTIPLE
    if w and h and (w32 == 0 or h32 == 0):
        raise ValueError(f"image: {w}x{h} is too small; the upscaler needs at least {SIZE_MULTIPLE}x{SIZE_MULTIPLE} pixels")
    if w and h and (w32, h32) != (w, h):
        logger.info("image: resizing %dx%d to %dx%d (a multiple of %d)", w, h, w32, h32, SIZE_MULTIPLE)
        image = image.resize((w32, h32), resample=PIL.Image.Resampling.LANCZOS)
    return pil_to_tensor(image)


def check_tensor_image(image: torch.Tensor) -> torch.Tensor:
    """A (B, C, H, W) or (C, H, W) tensor used as-is (values in [-1, 1]); 1 channel -> 3, 4 (RGBA) -> 3."""
    if image.ndim == 3:
        image = image[None]
    if image.ndim != 4:
        raise ValueError(f"image: expected a (B, C, H, W) tensor, got shape {tuple(image.shape)}")
    if image.numel() == 0:
        raise ValueError(f"image: has zero size (shape {tuple(image.shape)})")
    if not image.is_floating_point():
        raise ValueError(f"image: expected a floating-point tensor, got {image.dtype}")
    channels = image.shape[1]
    if channels == 1:
        logger.info("image: one channel repeated to RGB")
        image = image.repeat(1, 3, 1, 1)
    elif channels == 4:
        logger.info("image: alpha channel dropped")
        image = image[:, :3]
    elif channels != 3:
        raise ValueError(f"image: expected 1, 3 or 4 channels, got {channels}")
    return image


def _starts(size: int, tile: int, stride: int) -> list[int]:
    """Tile origins covering [0, size) with full tiles; the last one is flush with the end."""
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile, stride))
    return starts + [size - tile]


def _ramp(n: int, overlap: int, device, dtype) -> torch.Tensor:
    """1-D blending weights: rising over `overlap` samples at both ends, never zero."""
    i = torch.arange(n, device=device, dtype=dtype)
    edge = torch.minimum(i + 1, n - i)
    return (edge / max(overlap, 1)).clamp(max=1.0)


def tiled_predict(fn, x: torch.Tensor, tile: int, overlap: int) -> torch.Tensor:
    """Apply `fn` (one UNet call, or a decoder that upsamples by a fixed factor) to overlapping `tile` x `tile`
    squares of `x` and average the results with weights that fade in over the overlap at each tile border."""
    h, w = x.shape[-2:]
    if h <= tile and w <= tile:
        return fn(x)
    stride = tile - overlap
    out = weight = None
    for i in _starts(h, tile, stride):
        for j in _starts(w, tile, stride):
            part = fn(x[..., i:i + tile, j:j + tile])
            if out is None:
                scale = part.shape[-1] // min(tile, w)
                out = torch.zeros((*part.shape[:2], h * scale, w * scale), device=x.device, dtype=part.dtype)
                weight = torch.zeros((1, 1, h * scale, w * scale), device=x.device, dtype=part.dtype)
            th, tw = part.shape[-2:]
            wgt = _ramp(th, overlap * scale, x.device, part.dtype)[:, None] * \
                _ramp(tw, overlap * scale, x.device, part.dtype)[None, :]
            out[..., i * scale:i * scale + th, j * scale:j * scale + tw] += part * wgt
            weight[..., i * scale:i * scale + th, j * scale:j * scale + tw] += wgt
    return out / weight


class LDMSuperResolutionPipeline(DiffusionPipeline):
    r"""4x image super-resolution with latent diffusion (UNet2DModel on [latents, low-res image] + VQModel).

    Args:
        vqvae: `VQModel` decoding the latents to the high-resolution image.
        unet: `UNet2DModel` with `in_channels = 2 * latent channels`.
        scheduler: `DDIMScheduler`, `PNDMScheduler`, `LMSDiscreteScheduler`, `EulerDiscreteScheduler`,
            `EulerAncestralDiscreteScheduler` or `DPMSolverMultistepScheduler`.

    Differences from diffusers:
        - With `eta > 0` (DDIM) the per-step noise is drawn from `generator`, so a run is reproducible from the
          generator alone (diffusers draws it from torch's global random state). For eta = 0 results are equal.
        - `batch_size` is honoured: a PIL image (or a batch-1 tensor) is upscaled `batch_size` times with
          different noise; diffusers ignores it.
        - An RGBA / one-channel / palette image is converted to RGB (logged); a wrong type or an empty image
          raises ValueError. Extra keyword-only `tile_size` / `tile_overlap` denoise large inputs in tiles.
    """

    def __init__(self, vqvae, unet, scheduler):
        super().__init__()
        self.register_modules(vqvae=vqvae, unet=unet, scheduler=scheduler)

    def prepare_image(self, image, batch_size: int) -> torch.Tensor:
        if isinstance(image, PIL.Image.Image):
            image = preprocess(image)
        elif isinstance(image, torch.Tensor):
            image = check_tensor_image(image)
        else:
            raise ValueError(f"image: expected a PIL.Image.Image or a torch.Tensor, got {type(image).__name__}")
        if not isinstance(batch_size, int) or batch_size <= 0:
            raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
        if batch_size > 1:
            if image.shape[0] == 1:
                image = image.repeat(batch_size, 1, 1, 1)
            elif image.shape[0] != batch_size:
                raise ValueError(f"batch_size: {batch_size} does not match the image batch of {image.shape[0]}")
        return image

    @torch.no_grad()
    def __call__(self, image: torch.Tensor | PIL.Image.Image = None, batch_size: int | None = 1,
                 num_inference_steps: int | None = 100, eta: float | None = 0.0,
                 generator: torch.Generator | list[torch.Generator] | None = None, output_type: str | None = "pil",
                 return_dict: bool = True, *, tile_size: int | None = None, tile_overlap: int | None = None):
        """Upscale `image` (PIL, or a tensor in [-1, 1]). `tile_size` (low-resolution pixels, a multiple of the
        UNet's downsampling factor) denoises larger images in overlapping tiles; `tile_overlap` defaults to a
        quarter tile. Returns ImagePipelineOutput(images) or `(images,)`."""
        image = self.prepare_image(image, batch_size)
        batch = image.shape[0]
        if not isinstance(num_inference_steps, int) or num_inference_steps <= 0:
            raise ValueError(f"num_inference_steps: expected a positive int, got {num_inference_steps!r}")
        if eta is None or eta < 0:
            raise ValueError(f"eta: expected a number >= 0, got {eta!r}")
        if isinstance(generator, list) and len(generator) != batch:
            raise ValueError(f"generator: got a list of {len(generator)} generators for a batch of {batch}")
        check_output_type(output_type)
        tile, overlap = self._tiling(tile_size, tile_overlap)
        device = self._execution_device
        dtype = next(self.unet.parameters()).dtype
        height, width = image.shape[-2:]
        shape = (batch, self.unet.config.in_channels // 2, height, width)
        latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        image = image.to(device=device, dtype=dtype)

        self.scheduler.set_timesteps(num_inference_steps, device=device)
        latents = latents * self.scheduler.init_noise_sigma
        extra = step_kwargs(self.scheduler, generator, eta)
        for t in self.progress_bar(self.scheduler.timesteps):
            x = self.scheduler.scale_model_input(torch.cat([latents, image], dim=1), t)
            if tile is None:
                noise_pred = self.unet(x, t).sample
            else:
                noise_pred = tiled_predict(lambda part: self.unet(part, t).sample, x, tile, overlap)
            latents = self.scheduler.step(noise_pred, t, latents, **extra).prev_sample

        if output_type == "latent":
            images = latents
        else:
            decoded = self._decode(latents, tile, overlap)
            images = to_output(decoded.clamp(-1.0, 1.0) / 2 + 0.5, output_type, self.numpy_to_pil)
        return ImagePipelineOutput(images=images) if return_dict else (images,)

    def _tiling(self, tile_size, tile_overlap) -> tuple[int | None, int]:
        if tile_size is None:
            if tile_overlap is not None:
                raise ValueError("tile_overlap: only used with tile_size")
            return None, 0
        factor = 2 ** (len(self.unet.config.block_out_channels) - 1)
        if not isinstance(tile_size, int) or tile_size <= 0 or tile_size % factor:
            raise ValueError(f"tile_size: expected a positive multiple of {factor} (the UNet's downsampling), "
                             f"got {tile_size!r}")
        overlap = tile_size // 4 if tile_overlap is None else tile_overlap
        if not isinstance(overlap, int) or not 0 <= overlap < tile_size:
            raise ValueError(f"tile_overlap: expected an int in [0, {tile_size}), got {tile_overlap!r}")
        return tile_size, overlap

    def _decode(self, latents: torch.Tensor, tile: int | None, overlap: int) -> torch.Tensor:
        if tile is None or max(latents.shape[-2:]) <= tile:
            return self.vqvae.decode(latents).sample
        # quantise the whole grid first, so every tile decodes the same codes
        quant = self.vqvae.quantize(latents)[0]
        return tiled_predict(lambda z: self.vqvae.decode(z, force_not_quantize=True).sample, quant, tile, overlap)

