"""StableDiffusionXLControlNetPipeline (text-to-image) and StableDiffusionXLControlNetImg2ImgPipeline: SDXL guided
by one or several ControlNets (diffusers' constructors and `__call__` arguments). The SDXL parts (two text
encoders, micro-conditioning, denoising_end, the force_upcast decode) are StableDiffusionXLBase's, the ControlNet
parts ControlNetMixin's; the ControlNets also get the SDXL added conditioning (pooled text embeds and time ids).

    pipe = StableDiffusionXLControlNetPipeline.from_pretrained(
        "stabilityai/stable-diffusion-xl-base-1.0",
        controlnet=ControlNetModel.from_pretrained("diffusers/controlnet-canny-sdxl-1.0"))
    image = pipe("a house", image=canny_edges).images[0]
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from ..tasks import txt2img
from ..tasks.denoise import requested_steps, retrieve_timesteps
from .controlnet import ControlNetMixin
from .stable_diffusion_img2img import _as_rgb, check_image
from .stable_diffusion_xl import StableDiffusionXLBase, _sizes
from .stable_diffusion_xl_img2img import SDXLImageToImageMixin, check_score, check_strength, prepare_latents


class StableDiffusionXLControlNetPipeline(ControlNetMixin, StableDiffusionXLBase):
    """The output size defaults to the control image's (the first one's with several ControlNets), and so do
    `original_size` and `target_size`."""

    _callback_tensor_inputs = ["latents", "prompt_embeds", "add_text_embeds", "add_time_ids", "image"]

    def __init__(self, vae, text_encoder, text_encoder_2, tokenizer, tokenizer_2, unet, controlnet, scheduler,
                 force_zeros_for_empty_prompt: bool = True, add_watermarker: bool | None = None,
                 feature_extractor=None, image_encoder=None):
        self._setup(vae, text_encoder, text_encoder_2, tokenizer, tokenizer_2, unet, scheduler, image_encoder,
                    feature_extractor, force_zeros_for_empty_prompt, add_watermarker)
        self._register_controlnet(controlnet)

    @torch.no_grad()
    def __call__(self, prompt: str | list[str] | None = None, prompt_2: str | list[str] | None = None, image=None,
                 height: int | None = None, width: int | None = None, num_inference_steps: int = 50,
                 timesteps: list[int] | None = None, sigmas: list[float] | None = None,
                 denoising_end: float | None = None, guidance_scale: float = 5.0,
                 negative_prompt: str | list[str] | None = None, negative_prompt_2: str | list[str] | None = None,
                 num_images_per_prompt: int = 1, eta: float = 0.0,
                 generator: torch.Generator | list[torch.Generator] | None = None, latents: torch.Tensor | None = None,
                 prompt_embeds: torch.Tensor | None = None, negative_prompt_embeds: torch.Tensor | None = None,
                 pooled_prompt_embeds: torch.Tensor | None = None,
                 negative_pooled_prompt_embeds: torch.Tensor | None = None, ip_adapter_image=None,
                 ip_adapter_image_embeds=None, output_type: str = "pil", return_dict: bool = True,
                 cross_attention_kwargs: dict[str, Any] | None = None,
                 controlnet_conditioning_scale: float | list[float] = 1.0, guess_mode: bool = False,
                 control_guidance_start: float | list[float] = 0.0, control_guidance_end: float | list[float] = 1.0,
                 original_size: tuple[int, int] | None = None, crops_coords_top_left: tuple[int, int] = (0, 0),
                 target_size: tuple[int, int] | None = None, negative_original_size: tuple[int, int] | None = None,
                 negative_crops_coords_top_left: tuple[int, int] = (0, 0),
                 negative_target_size: tuple[int, int] | None = None, clip_skip: int | None = None,
                 callback_on_step_end: Callable | None = None,
                 callback_on_step_end_tensor_inputs: list[str] = ["latents"], long_prompt: str = "truncate",
                 **kwargs):
        callback = self._legacy_callback(kwargs)
        callback_on_step_end = callback_on_step_end or callback
        tensor_inputs = self._callback_inputs(callback_on_step_end, callback_on_step_end_tensor_inputs)
        self._check_size(height, width)
        self._check_sdxl(prompt, prompt_2, negative_prompt, negative_prompt_2, prompt_embeds, negative_prompt_embeds,
                         pooled_prompt_embeds, negative_pooled_prompt_embeds, num_images_per_prompt, output_type,
                         tensor_inputs, clip_skip, ip_adapter_image, ip_adapter_image_embeds)
        scales, windows, guess_mode, images = self._check_control(image, prompt, prompt_embeds,
                                                                  controlnet_conditioning_scale,
                                                                  control_guidance_start, control_guidance_end,
                                                                  guess_mode)
        self._start_sdxl(guidance_scale, 0.0, clip_skip, cross_attention_kwargs, denoising_end)
        with self._lora_scope((cross_attention_kwargs or {}).get("scale")):
            device = self._execution_device
            batch = self._batch_size(prompt, prompt_embeds) * num_images_per_prompt
            control_image = self._control_image(images, height, width, batch, num_images_per_prompt, device,
                                                guess_mode)
            height, width = (control_image[0] if isinstance(control_image, list) else control_image).shape[-2:]
            sizes = _sizes(original_size, crops_coords_top_left, target_size, negative_original_size,
                           negative_crops_coords_top_left, negative_target_size, (int(height), int(width)))
            encoded = self._encode_call(prompt, prompt_2, negative_prompt, negative_prompt_2, prompt_embeds,
                                        negative_prompt_embeds, pooled_prompt_embeds, negative_pooled_prompt_embeds,
                                        num_images_per_prompt, device, long_prompt=long_prompt,
                                        steps=requested_steps(num_inference_steps, timesteps, sigmas))
            dtype = encoded[0].dtype
            scheduler = self.scheduler
            ladder, n_steps = retrieve_timesteps(scheduler, num_inference_steps, device, timesteps, sigmas)
            latents = txt2img.prepare_latents(scheduler, batch, self.unet.config.in_channels, height, width,
                                              self.vae_scale_factor, dtype, device, generator, latents)
            state = self._size_state(encoded, sizes, negative_original_size is not None and
                                     negative_target_size is not None, batch, device)
            state.update(self._ip_state(ip_adapter_image, ip_adapter_image_embeds, device, batch))
            state["image"] = control_image
            if hasattr(scheduler, "set_begin_index"):
                scheduler.set_begin_index(0)
            # the guidance windows are fractions of the whole ladder, before a denoising_end cut (as diffusers)
            hook = self._control_hook(len(ladder), scales, windows, guess_mode, added_cond=True)
            latents = self._run_loop(scheduler, latents, ladder, state, n_steps, generator, eta, batch, device,
                                     callback_on_step_end, tensor_inputs, residuals=hook)
            return self._finish_sdxl(latents, output_type, return_dict)


class StableDiffusionXLControlNetImg2ImgPipeline(ControlNetMixin, SDXLImageToImageMixin, StableDiffusionXLBase):
    """SDXL image-to-image with ControlNet(s): `image` is the starting image (noised to `strength`),
    `control_image` the ControlNets' input; both are resized to height x width when given (default: the control
    image's size, which `original_size` and `target_size` also default to). With `requires_aesthetics_score` (a
    refiner UNet) the time ids carry the aesthetic scores, as in StableDiffusionXLImg2ImgPipeline."""

    _callback_tensor_inputs = ["latents", "prompt_embeds", "add_text_embeds", "add_time_ids", "control_image"]
    _image_key = "control_image"

    def __init__(self, vae, text_encoder, text_encoder_2, tokenizer, tokenizer_2, unet, controlnet, scheduler,
                 requires_aesthetics_score: bool = False, force_zeros_for_empty_prompt: bool = True,
                 add_watermarker: bool | None = None, feature_extractor=None, image_encoder=None):
        self._setup(vae, text_encoder, text_encoder_2, tokenizer, tokenizer_2, unet, scheduler, image_encoder,
                    feature_extractor, force_zeros_for_empty_prompt, add_watermarker,
                    requires_aesthetics_score=requires_aesthetics_score)
        self._register_controlnet(controlnet)

    @torch.no_grad()
    def __call__(self, prompt: str | list[str] | None = None, prompt_2: str | list[str] | None = None, image=None,
                 control_image=None, height: int | None = None, width: int | None = None, strength: float = 0.8,
                 num_inference_steps: int = 50, guidance_scale: float = 5.0,
                 negative_prompt: str | list[str] | None = None, negative_prompt_2: str | list[str] | None = None,
                 num_images_per_prompt: int = 1, eta: float = 0.0,
                 generator: torch.Generator | list[torch.Generator] | None = None, latents: torch.Tensor | None = None,
                 prompt_embeds: torch.Tensor | None = None, negative_prompt_embeds: torch.Tensor | None = None,
                 pooled_prompt_embeds: torch.Tensor | None = None,
                 negative_pooled_prompt_embeds: torch.Tensor | None = None, ip_adapter_image=None,
                 ip_adapter_image_embeds=None, output_type: str = "pil", return_dict: bool = True,
                 cross_attention_kwargs: dict[str, Any] | None = None,
                 controlnet_conditioning_scale: float | list[float] = 0.8, guess_mode: bool = False,
                 control_guidance_start: float | list[float] = 0.0, control_guidance_end: float | list[float] = 1.0,
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
        check_image(image, self.vae.config.latent_channels)
        check_strength(strength)
        check_score(aesthetic_score, "aesthetic_score")
        check_score(negative_aesthetic_score, "negative_aesthetic_score")
        self._check_size(height, width)
        self._check_sdxl(prompt, prompt_2, negative_prompt, negative_prompt_2, prompt_embeds, negative_prompt_embeds,
                         pooled_prompt_embeds, negative_pooled_prompt_embeds, num_images_per_prompt, output_type,
                         tensor_inputs, clip_skip, ip_adapter_image, ip_adapter_image_embeds)
        scales, windows, guess_mode, images = self._check_control(control_image, prompt, prompt_embeds,
                                                                  controlnet_conditioning_scale,
                                                                  control_guidance_start, control_guidance_end,
                                                                  guess_mode)
        self._start_sdxl(guidance_scale, 0.0, clip_skip, cross_attention_kwargs, None)
        with self._lora_scope((cross_attention_kwargs or {}).get("scale")):
            device = self._execution_device
            batch = self._batch_size(prompt, prompt_embeds) * num_images_per_prompt
            pixels = self.image_processor.preprocess(_as_rgb(image), height=height, width=width).to(torch.float32)
            controls = self._control_image(images, height, width, batch, num_images_per_prompt, device, guess_mode)
            height, width = (controls[0] if isinstance(controls, list) else controls).shape[-2:]
            sizes = _sizes(original_size, crops_coords_top_left, target_size, negative_original_size,
                           self._negative_crops(crops_coords_top_left, negative_crops_coords_top_left),
                           negative_target_size, (int(height), int(width)))
            encoded = self._encode_call(prompt, prompt_2, negative_prompt, negative_prompt_2, prompt_embeds,
                                        negative_prompt_embeds, pooled_prompt_embeds, negative_pooled_prompt_embeds,
                                        num_images_per_prompt, device, long_prompt=long_prompt,
                                        steps=requested_steps(num_inference_steps))
            dtype = encoded[0].dtype
            scheduler = self.scheduler
            ladder, n_steps = self._timesteps(scheduler, num_inference_steps, strength, device, None, None)
            if latents is None:
                latents = prepare_latents(self.vae, scheduler, pixels, ladder[:1].repeat(batch), batch, dtype, device,
                                          generator, latent_channels=self.vae.config.latent_channels)
            add_ids, neg_ids = self._refiner_time_ids(sizes, aesthetic_score, negative_aesthetic_score, encoded[2],
                                                      dtype)
            state = self._state(encoded, add_ids, neg_ids, batch, device)
            state.update(self._ip_state(ip_adapter_image, ip_adapter_image_embeds, device, batch))
            state["control_image"] = controls
            hook = self._control_hook(len(ladder), scales, windows, guess_mode, added_cond=True)
            latents = self._run_loop(scheduler, latents, ladder, state, n_steps, generator, eta, batch, device,
                                     callback_on_step_end, tensor_inputs, residuals=hook)
            return self._finish_sdxl(latents, output_type, return_dict)
