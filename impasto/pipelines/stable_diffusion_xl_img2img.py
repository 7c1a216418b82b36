"""StableDiffusionXLImg2ImgPipeline: SDXL image-to-image, and the SDXL refiner (diffusers' API).

The refiner is this class with `text_encoder=None` and `requires_aesthetics_score=True`: its time ids carry
an aesthetic score instead of the target size. Ensemble of experts: the base pipeline runs with
`denoising_end=f, output_type="latent"`, this one continues the same schedule with `denoising_start=f`
(the given latents are not noised again).

Negative crops as diffusers 0.42 sets them: left out, `negative_crops_coords_top_left` is the positive crop
for the base model and (0, 0) for the refiner; given, it is used (diffusers ignores it for the base model).
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from ..conditioning import sdxl as cond
from ..core.noise import randn_tensor
from ..tasks import img2img
from ..tasks.denoise import requested_steps, retrieve_timesteps
from ..tasks.vae import encode
from .stable_diffusion_img2img import _as_rgb, check_image
from .stable_diffusion_xl import StableDiffusionXLBase, _sizes, latent_stats, start_from


def encode_latents(vae, image: torch.Tensor, generator, dtype) -> torch.Tensor:
    """Scaled latents of images in [-1, 1] as SDXL does it: a force_upcast VAE encodes in float32, and a VAE
    with latents_mean/std standardises them."""
    upcast = bool(getattr(vae.config, "force_upcast", False))
    vae_dtype = vae.dtype
    if upcast:
        vae.to(torch.float32)
        image = image.float()
    try:
        latents = encode(vae, image, generator)
    finally:
        vae.to(vae_dtype)
    latents = latents.to(dtype)
    mean, std = latent_stats(vae, latents)
    if mean is not None:
        return (latents - mean) * vae.config.scaling_factor / std
    return vae.config.scaling_factor * latents


def prepare_latents(vae, scheduler, image: torch.Tensor, timestep, batch: int, dtype, device, generator,
                    add_noise: bool = True, latent_channels: int = 4) -> torch.Tensor:
    """Latents of `image` (or the image itself when it has latent channels), repeated to the batch, noised to
    `timestep` unless add_noise=False (a hand-off from the base pipeline)."""
    image = image.to(device=device, dtype=dtype)
    if image.shape[1] == latent_channels:
        init = image
    else:
        if isinstance(generator, list) and len(generator) != batch:
            raise ValueError(f"generator: got a list of {len(generator)} generators for an effective batch of "
                             f"{batch} (prompts x num_images_per_prompt)")
        if isinstance(generator, list) and image.shape[0] < batch:
            if batch % image.shape[0]:
                raise ValueError(f"image: cannot repeat {image.shape[0]} images to a batch of {batch}")
            image = torch.cat([image] * (batch // image.shape[0]))
        init = encode_latents(vae, image, generator, dtype)
    if batch > init.shape[0]:
        if batch % init.shape[0]:
            raise ValueError(f"image: cannot repeat {init.shape[0]} images to a batch of {batch} "
                             "(prompts x num_images_per_prompt)")
        init = torch.cat([init] * (batch // init.shape[0]))
    if not add_noise:
        return init
    noise = randn_tensor(init.shape, generator=generator, device=device, dtype=dtype)
    return scheduler.add_noise(init, noise, timestep)


class SDXLImageToImageMixin:
    """Timesteps and time ids shared by the SDXL img2img and inpaint pipelines."""

    def get_timesteps(self, num_inference_steps: int, strength: float, device=None, denoising_start=None):
        """diffusers' rule: the last int(N * strength) steps, or with denoising_start the steps below its cut-off."""
        if denoising_start is None:
            return img2img.get_timesteps(self.scheduler, num_inference_steps, strength)
        return start_from(self.scheduler, denoising_start)

    def _timesteps(self, scheduler, num_inference_steps, strength, device, timesteps, sigmas):
        ladder, n = retrieve_timesteps(scheduler, num_inference_steps, device, timesteps, sigmas)
        if self._denoising_start is None:
            ladder, n = img2img.get_timesteps(scheduler, n, strength)
        else:
            ladder, n = start_from(scheduler, self._denoising_start)
        if n < 1:
            raise ValueError(f"strength: {strength} x num_inference_steps leaves no denoising step; "
                             "raise strength or num_inference_steps")
        return ladder, n

    def _negative_crops(self, crops, negative_crops):
        if negative_crops is not None:
            return negative_crops
        return (0, 0) if self.config.requires_aesthetics_score else crops

    def _refiner_time_ids(self, sizes, aesthetic_score, negative_aesthetic_score, pooled, dtype):
        orig, crop, target, neg_orig, neg_crop, neg_target = sizes
        if self.config.requires_aesthetics_score:
            pos = cond.time_ids(orig, crop, None, float(aesthetic_score))
            neg = cond.time_ids(neg_orig, neg_crop, None, float(negative_aesthetic_score))
        else:
            pos, neg = cond.time_ids(orig, crop, target), cond.time_ids(neg_orig, neg_crop, neg_target)
        return self._add_time_ids(pos, neg, pooled, dtype)


def check_strength(strength):
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0 <= strength <= 1:
        raise ValueError(f"strength: expected a number in [0, 1], got {strength!r}")


def check_score(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name}: expected a number, got {value!r}")


class StableDiffusionXLImg2ImgPipeline(SDXLImageToImageMixin, StableDiffusionXLBase):
    """Image-to-image with SDXL, and the SDXL refiner (diffusers' constructor and `__call__`)."""

    def __init__(self, vae, text_encoder, text_encoder_2, tokenizer, tokenizer_2, unet, scheduler,
                 image_encoder=None, feature_extractor=None, requires_aesthetics_score: bool = False,
                 force_zeros_for_empty_prompt: bool = True, add_watermarker: bool | None = None):
        self._setup(vae, text_encoder, text_encoder_2, tokenizer, tokenizer_2, unet, scheduler, image_encoder,
                    feature_extractor, force_zeros_for_empty_prompt, add_watermarker,
                    requires_aesthetics_score=requires_aesthetics_score)

    @torch.no_grad()
    def __call__(self, prompt: str | list[str] | None = None, prompt_2: str | list[str] | None = None, image=None,
                 strength: float = 0.3, num_inference_steps: int = 50, timesteps: list[int] | None = None,
                 sigmas: list[float] | None = None, denoising_start: float | None = None,
                 denoising_end: float | None = None, guidance_scale: float = 5.0,
                 negative_prompt: str | list[str] | None = None, negative_prompt_2: str | list[str] | None = None,
                 num_images_per_prompt: int = 1, eta: float = 0.0,
                 generator: torch.Generator | list[torch.Generator] | None = None, latents: torch.Tensor | None = None,
                 prompt_embeds: torch.Tensor | None = None, negative_prompt_embeds: torch.Tensor | None = None,
                 pooled_prompt_embeds: torch.Tensor | None = None,
                 negative_pooled_prompt_embeds: torch.Tensor | None = None, ip_adapter_image=None,
                 ip_adapter_image_embeds=None, output_type: str = "pil", return_dict: bool = True,
                 cross_attention_kwargs: dict[str, Any] | None = None, guidance_rescale: float = 0.0,
                 original_size: tuple[int, int] | None = None, crops_coords_top_left: tuple[int, int] = (0, 0),
                 target_size: tuple[int, int] | None = None, negative_original_size: tuple[int, int] | None = None,
                 negative_crops_coords_top_left: tuple[int, int] | None = None,
                 negative_target_size: tuple[int, int] | None = None, aesthetic_score: float = 6.0,
                 negative_aesthetic_score: float = 2.5, clip_skip: int | None = None,
                 callback_on_step_end: Callable | None = None,
                 callback_on_step_end_tensor_inputs: list[str] = ["latents"], long_prompt: str = "truncate",
                 **kwargs):
        callback = self._legacy_callback(kwargs)
        callback_on_step_end = callback_on_step_end or callback
        tensor_inputs = self._callback_inputs(callback_on_step_end, callback_on_step_end_tensor_inputs)
        if image is None:
            raise ValueError("image: required (the picture to transform, or the base pipeline's latents for the "
                             "refiner); for text-to-image use StableDiffusionXLPipeline")
        check_image(image, self.vae.config.latent_channels)
        check_strength(strength)
        check_score(aesthetic_score, "aesthetic_score")
        check_score(negative_aesthetic_score, "negative_aesthetic_score")
        self._check_sdxl(prompt, prompt_2, negative_prompt, negative_prompt_2, prompt_embeds, negative_prompt_embeds,
                         pooled_prompt_embeds, negative_pooled_prompt_embeds, num_images_per_prompt, output_type,
                         tensor_inputs, clip_skip, ip_adapter_image, ip_adapter_image_embeds)
        for name in ("original_size", "target_size", "negative_original_size", "negative_target_size"):
            cond.check_size(locals()[name], name)
        self._start_sdxl(guidance_scale, guidance_rescale, clip_skip, cross_attention_kwargs, denoising_end,
                         denoising_start)
        with self._lora_scope((cross_attention_kwargs or {}).get("scale")):
            device = self._execution_device
            batch = self._batch_size(prompt, prompt_embeds) * num_images_per_prompt
            encoded = self._encode_call(prompt, prompt_2, negative_prompt, negative_prompt_2, prompt_embeds,
                                        negative_prompt_embeds, pooled_prompt_embeds, negative_pooled_prompt_embeds,
                                        num_images_per_prompt, device, long_prompt=long_prompt,
                                        steps=requested_steps(num_inference_steps, timesteps, sigmas))
            dtype = encoded[0].dtype
            pixels = self.image_processor.preprocess(_as_rgb(image))
            scheduler = self.scheduler
            ladder, n_steps = self._timesteps(scheduler, num_inference_steps, strength, device, timesteps, sigmas)
            if latents is None:
                latents = prepare_latents(self.vae, scheduler, pixels, ladder[:1].repeat(batch), batch, dtype, device,
                                          generator, add_noise=self._denoising_start is None,
                                          latent_channels=self.vae.config.latent_channels)
            hw = (latents.shape[-2] * self.vae_scale_factor, latents.shape[-1] * self.vae_scale_factor)
            sizes = _sizes(original_size, crops_coords_top_left, target_size, negative_original_size,
                           self._negative_crops(crops_coords_top_left, negative_crops_coords_top_left),
                           negative_target_size, hw)
            add_ids, neg_ids = self._refiner_time_ids(sizes, aesthetic_score, negative_aesthetic_score, encoded[2],
                                                      dtype)
            state = self._state(encoded, add_ids, neg_ids, batch, device)
            state.update(self._ip_state(ip_adapter_image, ip_adapter_image_embeds, device, batch))
            latents = self._run_loop(scheduler, latents, ladder, state, n_steps, generator, eta, batch, device,
                                     callback_on_step_end, tensor_inputs)
            return self._finish_sdxl(latents, output_type, return_dict)
