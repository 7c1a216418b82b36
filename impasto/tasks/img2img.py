"""Image-to-image: encode the image, noise it to the level where the (shortened) ladder starts."""
from __future__ import annotations

import torch

from ..core.noise import randn_tensor
from .vae import encode


def get_timesteps(scheduler, num_inference_steps: int, strength: float):
    """diffusers' rule: run the last min(int(N * strength), N) steps of the N-step ladder."""
    init = min(int(num_inference_steps * strength), num_inference_steps)
    start = int(max(num_inference_steps - init, 0))
    timesteps = scheduler.timesteps[start * scheduler.order:]
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(start * scheduler.order)
    return timesteps, num_inference_steps - start


def prepare_latents(vae, scheduler, image: torch.Tensor, timestep, batch_size: int, dtype, device, generator,
                    latent_channels: int = 4) -> torch.Tensor:
    """Latents of `image` (or the image itself if it already has latent channels), repeated to batch_size,
    noised to `timestep`."""
    image = image.to(device=device, dtype=dtype)
    if image.shape[1] == latent_channels:
        init = image
    else:
        if isinstance(generator, list) and len(generator) != batch_size:
            raise ValueError(f"generator: got a list of {len(generator)} generators for an effective batch of "
                             f"{batch_size} (prompts x num_images_per_prompt)")
        if isinstance(generator, list) and image.shape[0] < batch_size and batch_size % image.shape[0] == 0:
            image = torch.cat([image] * (batch_size // image.shape[0]), dim=0)
        init = encode(vae, image, generator) * vae.config.scaling_factor
    if init.shape[0] > batch_size:
        raise ValueError(f"image: got {init.shape[0]} images for an effective batch of {batch_size} "
                         "(prompts x num_images_per_prompt); give one image, or one per prompt")
    if batch_size > init.shape[0]:
        if batch_size % init.shape[0] != 0:
            raise ValueError(f"image: cannot repeat {init.shape[0]} images to a batch of {batch_size} "
                             "(prompts x num_images_per_prompt)")
        init = torch.cat([init] * (batch_size // init.shape[0]), dim=0)
    noise = randn_tensor(init.shape, generator=generator, device=device, dtype=dtype)
    return scheduler.add_noise(init, noise, timestep)
