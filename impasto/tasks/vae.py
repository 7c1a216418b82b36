"""VAE encode/decode as the pipelines use them, with the float16 overflow fallback."""
from __future__ import annotations

import inspect
import logging

import torch

logger = logging.getLogger("impasto")


def latent_sample(output, generator=None) -> torch.Tensor:
    """A sample from an encoder output's latent distribution (or its deterministic `latents`)."""
    if hasattr(output, "latent_dist"):
        return output.latent_dist.sample(generator)
    if hasattr(output, "latents"):
        return output.latents
    raise ValueError(f"vae: encode() returned {type(output).__name__}, which has no latent_dist or latents")


def encode(vae, image: torch.Tensor, generator=None) -> torch.Tensor:
    """Unscaled latents of images in [-1, 1]; a list of generators samples image i with generator i."""
    if isinstance(generator, list):
        return torch.cat([latent_sample(vae.encode(image[i:i + 1]), generator[i]) for i in range(image.shape[0])])
    return latent_sample(vae.encode(image), generator)


def decode(vae, latents: torch.Tensor, generator=None) -> torch.Tensor:
    """Images in [-1, 1] from scaled latents. A float16 VAE that overflows (inf/NaN) is re-run in float32
    when its config allows upcasting (`force_upcast`, true for the SD/SDXL VAEs)."""
    z = latents / vae.config.scaling_factor
    kwargs = {"generator": generator} if "generator" in inspect.signature(vae.decode).parameters else {}
    image = vae.decode(z.to(vae.dtype), return_dict=False, **kwargs)[0]
    if vae.dtype in (torch.float16, torch.bfloat16) and not torch.isfinite(image).all():
        if not getattr(vae.config, "force_upcast", True):
            raise ValueError("vae: decoding overflowed in float16 and the VAE's config sets force_upcast=false; "
                             "load the VAE in float32 or use an fp16-safe VAE")
        logger.warning("vae: float16 decode overflowed (inf/NaN); decoding again in float32")
        dtype = vae.dtype
        vae.to(torch.float32)
        try:
            image = vae.decode(z.float(), return_dict=False, **kwargs)[0]
        finally:
            vae.to(dtype)
    if not torch.isfinite(image).all():
        logger.warning("vae: the decoded image contains NaN/inf (the sampling diverged); check the model and settings")
    return image
