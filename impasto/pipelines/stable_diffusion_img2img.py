"""StableDiffusionImg2ImgPipeline: start from an image noised to `strength`, then denoise (diffusers' API)."""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import PIL.Image
import torch

from ..loading.lora import LoraLoaderMixin
from ..loading.textual_inversion import TextualInversionLoaderMixin
from ..tasks import img2img
from ..tasks.denoise import denoise, requested_steps, retrieve_timesteps, step_kwargs
from .stable_diffusion import StableDiffusionBase


def check_image(image, latent_channels: int = 4):
    """ValueError naming `image` for anything but PIL / numpy / torch images (or lists) with 1, 3 (or latent) channels."""
    if image is None:
        raise ValueError("image: required for image-to-image (a PIL image, numpy array, tensor or a list of them)")
    items = image if isinstance(image, list) else [image]
    if not items:
        raise ValueError("image: got an empty list")
    for item in items:
        if isinstance(item, PIL.Image.Image):
            continue
        if isinstance(item, torch.Tensor):
            channels = item.shape[-3] if item.ndim >= 3 else 1
            allowed = (1, 3, latent_channels)
        elif isinstance(item, np.ndarray):
            channels = item.shape[-1] if item.ndim >= 3 else 1
            allowed = (1, 3)
        else:
            raise ValueError(f"image: expected PIL images, numpy arrays or torch tensors, got {type(item).__name__}")
        if item.ndim not in (2, 3, 4):
            raise ValueError(f"image: expected 2 to 4 dimensions, got shape {tuple(item.shape)}")
        if channels not in allowed:
            raise ValueError(f"image: expected {' or '.join(map(str, allowed))} channels, got {channels} "
                             f"(shape {tuple(item.shape)})")


def _as_rgb(image):
    """PIL images in other modes (RGBA, L, P) are converted to RGB, as the VAE takes 3 channels."""
    if isinstance(image, list):
        return [_as_rgb(i) for i in image]
    if isinstance(image, PIL.Image.Image) and image.mode != "RGB":
        return image.convert("RGB")
    if isinstance(image, np.ndarray) and image.ndim >= 3 and image.shape[-1] == 1:
        return np.repeat(image, 3, axis=-1)
    if isinstance(image, torch.Tensor) and image.ndim >= 3 and image.shape[-3] == 1:
        return image.repeat_interleave(3, dim=-3)
    return image


class StableDiffusionImg2ImgPipeline(StableDiffusionBase, LoraLoaderMixin, TextualInversionLoaderMixin):
    """Image-to-image with Stable Diffusion 1.x / 2.x. `strength` in [0, 1] picks how much of the ladder runs:
    the last int(num_inference_steps * strength) steps (1.0 = from pure noise, image only sets the size)."""

    @torch.no_grad()
    def __call__(self, prompt: str | list[str] | None = None, image=None, strength: float = 0.8,
                 num_inference_steps: int = 50, timesteps: list[int] | None = None, sigmas: list[float] | None = None,
                 guidance_scale: float = 7.5, negative_prompt: str | list[str] | None = None,
                 num_images_per_prompt: int = 1, eta: float = 0.0,
                 generator: torch.Generator | list[torch.Generator] | None = None,
                 prompt_embeds: torch.Tensor | None = None, negative_prompt_embeds: torch.Tensor | None = None,
                 ip_adapter_image=None, ip_adapter_image_embeds=None, output_type: str = "pil",
                 return_dict: bool = True, cross_attention_kwargs: dict[str, Any] | None = None,
                 clip_skip: int | None = None, callback_on_step_end: Callable | None = None,
                 callback_on_step_end_tensor_inputs: list[str] = ["latents"], long_prompt: str = "truncate",
                 **kwargs):
        legacy = self._legacy_callback(kwargs)
        callback_on_step_end = callback_on_step_end or legacy
        tensor_inputs = self._callback_inputs(callback_on_step_end, callback_on_step_end_tensor_inputs)
        if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0 <= strength <= 1:
            raise ValueError(f"strength: expected a number in [0, 1], got {strength!r}")
        latent_channels = self.vae.config.latent_channels
        check_image(image, latent_channels)
        self._check_common(prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, num_images_per_prompt,
                           output_type, tensor_inputs, clip_skip)
        self._start_call(guidance_scale, 0.0, clip_skip, cross_attention_kwargs)
        self._check_ip_adapter(ip_adapter_image, ip_adapter_image_embeds)
        with self._lora_scope((cross_attention_kwargs or {}).get("scale")):
            return self._run(prompt, image, strength, num_inference_steps, timesteps, sigmas, negative_prompt,
                             num_images_per_prompt, eta, generator, prompt_embeds, negative_prompt_embeds,
                             output_type, return_dict, callback_on_step_end, tensor_inputs, long_prompt,
                             ip_adapter_image, ip_adapter_image_embeds)

    def _run(self, prompt, image, strength, num_inference_steps, timesteps, sigmas, negative_prompt,
             num_images_per_prompt, eta, generator, prompt_embeds, negative_prompt_embeds, output_type, return_dict,
             callback_on_step_end, tensor_inputs, long_prompt, ip_adapter_image=None, ip_adapter_image_embeds=None):
        latent_channels = self.vae.config.latent_channels
        device = self._execution_device
        batch = self._batch_size(prompt, prompt_embeds) * num_images_per_prompt
        state = self._encode_for_call(prompt, negative_prompt, prompt_embeds, negative_prompt_embeds,
                                      num_images_per_prompt, device, long_prompt,
                                      requested_steps(num_inference_steps, timesteps, sigmas))
        state.update(self._ip_adapter_state(ip_adapter_image, ip_adapter_image_embeds, device, batch))
        dtype = state["prompt_embeds"].dtype
        pixels = self.image_processor.preprocess(_as_rgb(image))
        scheduler = self.scheduler
        ladder, num_inference_steps = retrieve_timesteps(scheduler, num_inference_steps, device, timesteps, sigmas)
        ladder, num_inference_steps = img2img.get_timesteps(scheduler, num_inference_steps, strength)
        if num_inference_steps < 1:
            raise ValueError(f"strength: {strength} x num_inference_steps leaves no denoising step; "
                             "raise strength or num_inference_steps")
        start = ladder[:1].repeat(batch)
        latents = img2img.prepare_latents(self.vae, scheduler, pixels, start, batch, dtype, device, generator,
                                          latent_channels)
        latents = denoise(self, scheduler, latents, ladder, state, num_inference_steps,
                          extra_step_kwargs=step_kwargs(scheduler, generator, eta),
                          timestep_cond=self._timestep_cond(batch, device, latents.dtype), unet_kwargs=self._added_cond,
                          callback_on_step_end=callback_on_step_end,
                          callback_on_step_end_tensor_inputs=tensor_inputs)
        return self._finish(latents, output_type, generator, device, dtype, return_dict)

    def get_timesteps(self, num_inference_steps: int, strength: float, device=None):
        return img2img.get_timesteps(self.scheduler, num_inference_steps, strength)
