"""StableDiffusionInpaintPipeline (SD 1.x / 2.x inpainting, diffusers' API) and the input handling it shares
with the SDXL inpainting pipeline. White mask pixels are repainted, black ones kept.

Beyond diffusers: a mask of another size than the image is refused (ValueError naming mask_image) rather
than stretched silently.
"""
from __future__ import annotations

from typing import Any, Callable

import PIL.Image
import torch

from ..image_processor import VaeImageProcessor
from ..loading.lora import LoraLoaderMixin
from ..loading.textual_inversion import TextualInversionLoaderMixin
from ..tasks import inpaint, img2img
from ..tasks.denoise import denoise, requested_steps, retrieve_timesteps, step_kwargs
from .outputs import StableDiffusionPipelineOutput
from .stable_diffusion import StableDiffusionBase
from .stable_diffusion_img2img import _as_rgb, check_image


class InpaintMixin:
    """Mask processing, latents and loop hooks of the SD and SDXL inpainting pipelines."""

    def _make_mask_processor(self):
        self.mask_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor, do_normalize=False,
                                                do_binarize=True, do_convert_grayscale=True)

    def _check_inpaint(self, image, mask_image, masked_image_latents, padding_mask_crop, output_type, strength,
                       height, width):
        latent_channels = self.vae.config.latent_channels
        check_image(image, latent_channels)
        inpaint.check_mask(image, mask_image, latent_channels, crop=padding_mask_crop is not None)
        if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0 <= strength <= 1:
            raise ValueError(f"strength: expected a number in [0, 1], got {strength!r}")
        for name, value in (("height", height), ("width", width)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0 or value % 8 != 0:
                raise ValueError(f"{name}: must be a positive multiple of 8, got {value!r}")
        if masked_image_latents is not None and not isinstance(masked_image_latents, torch.Tensor):
            raise ValueError(f"masked_image_latents: expected a tensor, got {type(masked_image_latents).__name__}")
        if padding_mask_crop is not None:
            if isinstance(padding_mask_crop, bool) or not isinstance(padding_mask_crop, int) or padding_mask_crop < 0:
                raise ValueError(f"padding_mask_crop: expected a non-negative int (pixels), got {padding_mask_crop!r}")
            if not isinstance(image, PIL.Image.Image) or not isinstance(mask_image, PIL.Image.Image):
                raise ValueError("padding_mask_crop: image and mask_image must be PIL images (one each)")
            if output_type != "pil":
                raise ValueError(f"padding_mask_crop: needs output_type='pil', got {output_type!r}")

    def _prepare_inpaint(self, scheduler, image, mask_image, masked_image_latents, height, width, padding_mask_crop,
                         ladder, strength, batch, dtype, device, generator, latents, add_noise=True, upcast=False):
        """Everything the loop needs: latents, noise, image latents (4-channel UNets), the latent-size mask and
        the masked-image latents (doubled for guidance), and the crop box (padding_mask_crop)."""
        crops = None
        resize_mode = "default"
        if padding_mask_crop is not None:
            crops = inpaint.get_crop_region(mask_image, width, height, pad=padding_mask_crop)
            resize_mode = "fill"
        init = self.image_processor.preprocess(_as_rgb(image), height=height, width=width, crops_coords=crops,
                                               resize_mode=resize_mode).to(torch.float32)
        mask = self.mask_processor.preprocess(inpaint.shape_mask(mask_image), height=height, width=width,
                                              resize_mode=resize_mode, crops_coords=crops)
        latent_channels = self.vae.config.latent_channels
        if masked_image_latents is not None:
            masked = masked_image_latents
        elif init.shape[1] == latent_channels:
            masked = None
        else:
            masked = init * (mask < 0.5)
        four = self.unet.config.in_channels == 4
        shape = (batch, latent_channels, height // self.vae_scale_factor, width // self.vae_scale_factor)
        latents, noise, image_latents = inpaint.prepare_latents(
            self.vae, scheduler, shape, dtype, device, generator, latents, init, ladder[:1].repeat(batch),
            is_strength_max=strength == 1.0, add_noise=add_noise, need_image_latents=four,
            latent_channels=latent_channels, upcast=upcast)
        mask, masked = inpaint.prepare_mask_latents(self.vae, mask, masked, batch, shape[-2:], dtype, device,
                                                    generator, self.do_classifier_free_guidance, latent_channels,
                                                    upcast)
        if not four and masked is None:
            raise ValueError("masked_image_latents: required for a 9-channel UNet when image is given as latents")
        inpaint.check_unet_channels(self.unet, latent_channels, mask, masked if masked is not None else mask)
        return {"latents": latents, "noise": noise, "image_latents": image_latents, "mask": mask,
                "masked_image_latents": masked, "crops": crops}

    def _inpaint_hooks(self, scheduler, ladder, prep) -> dict:
        if self.unet.config.in_channels == 4:
            return {"after_step": inpaint.blend_known(scheduler, ladder, prep["image_latents"], prep["noise"], self)}
        return {"model_input": inpaint.concat_input}

    def _overlay(self, images, mask_image, image, crops):
        if crops is None:
            return images
        return [inpaint.apply_overlay(self.image_processor, mask_image, image, out, crops) for out in images]


class StableDiffusionInpaintPipeline(InpaintMixin, StableDiffusionBase, LoraLoaderMixin, TextualInversionLoaderMixin):
    """Inpainting with Stable Diffusion 1.x / 2.x: a 9-channel inpainting UNet, or any 4-channel UNet (the known
    region is re-imposed after every step)."""

    _callback_tensor_inputs = ["latents", "prompt_embeds", "negative_prompt_embeds", "mask", "masked_image_latents"]

    def __init__(self, vae, text_encoder, tokenizer, unet, scheduler, safety_checker=None, feature_extractor=None,
                 image_encoder=None, requires_safety_checker: bool = True):
        super().__init__(vae, text_encoder, tokenizer, unet, scheduler, safety_checker, feature_extractor,
                         image_encoder, requires_safety_checker)
        self._make_mask_processor()

    @torch.no_grad()
    def __call__(self, prompt: str | list[str] | None = None, image=None, mask_image=None,
                 masked_image_latents: torch.Tensor | None = None, height: int | None = None,
                 width: int | None = None, padding_mask_crop: int | None = None, strength: float = 1.0,
                 num_inference_steps: int = 50, timesteps: list[int] | None = None, sigmas: list[float] | None = None,
                 guidance_scale: float = 7.5, negative_prompt: str | list[str] | None = None,
                 num_images_per_prompt: int = 1, eta: float = 0.0,
                 generator: torch.Generator | list[torch.Generator] | None = None, latents: torch.Tensor | None = None,
                 prompt_embeds: torch.Tensor | None = None, negative_prompt_embeds: torch.Tensor | None = None,
                 ip_adapter_image=None, ip_adapter_image_embeds=None, output_type: str = "pil",
                 return_dict: bool = True, cross_attention_kwargs: dict[str, Any] | None = None,
                 clip_skip: int | None = None, callback_on_step_end: Callable | None = None,
                 callback_on_step_end_tensor_inputs: list[str] = ["latents"], long_prompt: str = "truncate",
                 **kwargs):
        legacy = self._legacy_callback(kwargs)
        callback_on_step_end = callback_on_step_end or legacy
        tensor_inputs = self._callback_inputs(callback_on_step_end, callback_on_step_end_tensor_inputs)
        height = height or self.unet.config.sample_size * self.vae_scale_factor
        width = width or self.unet.config.sample_size * self.vae_scale_factor
        self._check_inpaint(image, mask_image, masked_image_latents, padding_mask_crop, output_type, strength,
                            height, width)
        self._check_common(prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, num_images_per_prompt,
                           output_type, tensor_inputs, clip_skip)
        self._start_call(guidance_scale, 0.0, clip_skip, cross_attention_kwargs)
        self._check_ip_adapter(ip_adapter_image, ip_adapter_image_embeds)
        with self._lora_scope((cross_attention_kwargs or {}).get("scale")):
            device = self._execution_device
            batch = self._batch_size(prompt, prompt_embeds) * num_images_per_prompt
            state = self._encode_for_call(prompt, negative_prompt, prompt_embeds, negative_prompt_embeds,
                                          num_images_per_prompt, device, long_prompt,
                                          requested_steps(num_inference_steps, timesteps, sigmas))
            state.update(self._ip_adapter_state(ip_adapter_image, ip_adapter_image_embeds, device, batch))
            dtype = state["prompt_embeds"].dtype
            scheduler = self.scheduler
            ladder, n_steps = retrieve_timesteps(scheduler, num_inference_steps, device, timesteps, sigmas)
            ladder, n_steps = img2img.get_timesteps(scheduler, n_steps, strength)
            if n_steps < 1:
                raise ValueError(f"strength: {strength} x num_inference_steps leaves no denoising step; "
                                 "raise strength or num_inference_steps")
            prep = self._prepare_inpaint(scheduler, image, mask_image, masked_image_latents, height, width,
                                         padding_mask_crop, ladder, strength, batch, dtype, device, generator, latents)
            state.update(mask=prep["mask"], masked_image_latents=prep["masked_image_latents"])
            latents = denoise(self, scheduler, prep["latents"], ladder, state, n_steps,
                              extra_step_kwargs=step_kwargs(scheduler, generator, eta),
                              timestep_cond=self._timestep_cond(batch, device, prep["latents"].dtype),
                              unet_kwargs=self._added_cond,
                              callback_on_step_end=callback_on_step_end,
                              callback_on_step_end_tensor_inputs=tensor_inputs,
                              **self._inpaint_hooks(scheduler, ladder, prep))
            out = self._finish(latents, output_type, generator, device, dtype, True)
            images = self._overlay(out.images, mask_image, image, prep["crops"])
            if not return_dict:
                return images, out.nsfw_content_detected
            return StableDiffusionPipelineOutput(images=images, nsfw_content_detected=out.nsfw_content_detected)

    def get_timesteps(self, num_inference_steps: int, strength: float, device=None):
        return img2img.get_timesteps(self.scheduler, num_inference_steps, strength)
