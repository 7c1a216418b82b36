"""Text-to-image: start from pure noise at the top of the ladder."""
from __future__ import annotations

import torch

from ..core.noise import randn_tensor


def prepare_latents(scheduler, batch_size: int, channels: int, height: int, width: int, vae_scale_factor: int,
                    dtype, device, generator, latents: torch.Tensor | None = None) -> torch.Tensor:
    """Noise of shape (B, C, H/f, W/f) (or the given latents), scaled by the scheduler's init_noise_sigma."""
    shape = (batch_size, channels, int(height) // vae_scale_factor, int(width) // vae_scale_factor)
    if isinstance(generator, list) and len(generator) != batch_size:
        raise ValueError(f"generator: got a list of {len(generator)} generators for an effective batch of "
                         f"{batch_size} (prompts x num_images_per_prompt)")
    if latents is None:
        latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
    else:
        if tuple(latents.shape) != shape:
            raise ValueError(f"latents: expected shape {shape} for this batch, height and width, "
                             f"got {tuple(latents.shape)}")
        latents = latents.to(device)
    return latents * scheduler.init_noise_sigma
