"""StableDiffusionXLInpaintPipeline: SDXL inpainting with a 9-channel inpainting UNet or any 4-channel SDXL UNet
(base or refiner), diffusers' constructor and `__call__`. strength defaults to 0.9999 so that a little of the
original image survives under the mask; `denoising_start` / `denoising_end` split the schedule between
experts as in the img2img pipeline (the first pipeline's latents go in as `image`).

Unlike diffusers, output_type="latent" with return_dict=False returns a tuple, as every other output does."""
from __future__ import annotations

from typing import Any, Callable

import torch

from ..conditioning import sdxl as cond
from ..tasks.denoise import requested_steps
from .stable_diffusion_inpaint import InpaintMixin
from .stable_diffusion_xl import StableDiffusionXLBase, _sizes, cut_at_end
from .stable_diffusion_xl_img2img import SDXLImageToImageMixin, check_score


class StableDiffusionXLInpaintPipeline(InpaintMixin, SDXLImageToImageMixin, StableDiffusionXLBase):
    """Inpainting with SDXL (white mask pixels are repainted)."""

    _callback_tensor_inputs = ["latents", "prompt_embeds", "add_text_embeds", "add_time_ids", "mask",
                               "masked_image_latents"]

    def __init__(self, vae, text_encoder, text_encoder_2, tokenizer, tokenizer_2, unet, scheduler,
                 image_encoder=None, feature_extractor=None, requires_aesthetics_score: bool = False,
                 force_zeros_for_empty_prompt: bool = True, add_watermarker: bool | None = None):
        self._setup(vae, text_encoder, text_encoder_2, tokenizer, tokenizer_2, unet, scheduler, image_encoder,
                    feature_extractor, force_zeros_for_empty_prompt, add_watermarker,
                    requires_aesthetics_score=requires_aesthetics_score)
        self._make_mask_processor()

    @torch.no_grad()
    def __call__(self, prompt: str | list[str] | None = None, prompt_2: str | list[str] | None = None, image=None,
                 mask_image=None, masked_image_latents: torch.Tensor | None = None, height: int | None = None,
                 width: int | None = None, padding_mask_crop: int | None = None, strength: float = 0.9999,
                 num_inference_steps: int = 50, timesteps: list[int] | None = None, sigmas: list[float] | None = None,
                 denoising_start: float | None = None, denoising_end: float | None = None,
                 guidance_scale: float = 7.5, negative_prompt: str | list[str] | None = None,
                 negative_prompt_2: str | list[str] | None = None, num_images_per_prompt: int = 1, eta: float = 0.0,
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
        height = height or self.default_sample_size * self.vae_scale_factor
        width = width or self.default_sample_size * self.vae_scale_factor
        self._check_inpaint(image, mask_image, masked_image_latents, padding_mask_crop, output_type, strength,
                            height, width)
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
            scheduler = self.scheduler
            ladder, n_steps = self._timesteps(scheduler, num_inference_steps, strength, device, timesteps, sigmas)
            prep = self._prepare_inpaint(scheduler, image, mask_image, masked_image_latents, height, width,
                                         padding_mask_crop, ladder, strength, batch, dtype, device, generator, latents,
                                         add_noise=self._denoising_start is None, upcast=True)
            latents = prep["latents"]
            hw = (latents.shape[-2] * self.vae_scale_factor, latents.shape[-1] * self.vae_scale_factor)
            sizes = _sizes(original_size, crops_coords_top_left, target_size, negative_original_size,
                           self._negative_crops(crops_coords_top_left, negative_crops_coords_top_left),
                           negative_target_size, hw)
            add_ids, neg_ids = self._refiner_time_ids(sizes, aesthetic_score, negative_aesthetic_score, encoded[2],
                                                      dtype)
            state = self._state(encoded, add_ids, neg_ids, batch, device)
            state.update(self._ip_state(ip_adapter_image, ip_adapter_image_embeds, device, batch))
            state.update(mask=prep["mask"], masked_image_latents=prep["masked_image_latents"])
            ladder, cut = cut_at_end(scheduler, ladder, self._denoising_end)  # the blend needs the ladder as run
            n_steps = cut if cut is not None else n_steps
            latents = self._run_loop(scheduler, latents, ladder, state, n_steps, generator, eta, batch, device,
                                     callback_on_step_end, tensor_inputs,
                                     **self._inpaint_hooks(scheduler, ladder, prep))
            return self._finish_sdxl(latents, output_type, return_dict,
                                     postprocess=lambda images: self._overlay(images, mask_image, image, prep["crops"]))
