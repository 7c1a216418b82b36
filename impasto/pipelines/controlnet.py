"""StableDiffusionControlNetPipeline (text-to-image) and StableDiffusionControlNetImg2ImgPipeline with one
ControlNet (diffusers' constructors and `__call__` arguments).

    pipe = StableDiffusionControlNetPipeline.from_pretrained(
        "stable-diffusion-v1-5/stable-diffusion-v1-5",
        controlnet=ControlNetModel.from_pretrained("lllyasviel/control_v11p_sd15_canny"))
    image = pipe("a house", image=canny_edges).images[0]

Several ControlNets: pass a list (or a MultiControlNetModel) as `controlnet`, and lists of images, scales and
guidance windows with one entry per net; their residuals are summed.
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from ..image_processor import VaeImageProcessor
from ..loading.lora import LoraLoaderMixin
from ..models.multicontrolnet import MultiControlNetModel
from ..loading.textual_inversion import TextualInversionLoaderMixin
from ..tasks import img2img, txt2img
from ..tasks import controlnet as control
from ..tasks.denoise import denoise, requested_steps, retrieve_timesteps, step_kwargs
from .stable_diffusion import StableDiffusionBase
from .stable_diffusion_img2img import _as_rgb, check_image


class ControlNetMixin:
    """The ControlNet parts of a pipeline: the `controlnet` component (one ControlNetModel, or several as a list
    or MultiControlNetModel), argument checks, control images and the residuals hook for `denoise`."""

    _image_key = "image"  # the control image's name in __call__ and in callback tensor inputs

    def _register_controlnet(self, controlnet):
        if isinstance(controlnet, (list, tuple)):
            controlnet = MultiControlNetModel(controlnet)  # as diffusers, also for a one-element list
        if controlnet is None or not (hasattr(controlnet, "controlnet_cond_embedding") or
                                      isinstance(controlnet, MultiControlNetModel)):
            raise ValueError(f"controlnet: expected a ControlNetModel, a list of them or a MultiControlNetModel, "
                             f"got {type(controlnet).__name__}")
        self.register_modules(controlnet=controlnet)
        self.control_image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor, do_convert_rgb=True,
                                                         do_normalize=False)

    def _check_control(self, image, prompt, prompt_embeds, scale, start, end, guess_mode):
        """(scales, windows, guess_mode, images): one scale, (start, end) and control input per net."""
        count = len(control.nets(self.controlnet))
        scales = control.check_scales(scale, count)
        windows = control.check_windows(start, end, count)
        batch = self._batch_size(prompt, prompt_embeds) if (prompt is not None or prompt_embeds is not None) else 1
        images = control.split_images(image, count, self._image_key)
        for one in images:
            control.check_control_image(one, batch, self._image_key)
        pool = control.nets(self.controlnet)[0].config.global_pool_conditions  # as diffusers: the first net's
        return scales, windows, bool(guess_mode or pool), images

    def _check_size(self, height, width):
        for name, value in (("height", height), ("width", width)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
                raise ValueError(f"{name}: expected a positive int or None, got {value!r}")

    def _control_image(self, images, height, width, batch, num_images_per_prompt, device, guess_mode):
        """The control tensor (a list of them with several nets; all at the first one's size unless height and
        width are given, as diffusers)."""
        out = [control.prepare_control_image(self.control_image_processor, one, height, width, batch,
                                             num_images_per_prompt, device, self.controlnet.dtype,
                                             self.do_classifier_free_guidance, guess_mode) for one in images]
        return out if isinstance(self.controlnet, MultiControlNetModel) else out[0]

    def _control_hook(self, n_steps, scales, windows, guess_mode, added_cond: bool = False):
        keeps = [control.keep_schedule(n_steps, start, end) for start, end in windows]
        return control.controlnet_residuals(self, self.controlnet, self.scheduler, scales, keeps, guess_mode,
                                            self._image_key, added_cond)


class _ControlNetBase(ControlNetMixin, StableDiffusionBase, LoraLoaderMixin, TextualInversionLoaderMixin):
    def __init__(self, vae, text_encoder, tokenizer, unet, controlnet, scheduler, safety_checker=None,
                 feature_extractor=None, image_encoder=None, requires_safety_checker: bool = True):
        super().__init__(vae, text_encoder, tokenizer, unet, scheduler, safety_checker, feature_extractor,
                         image_encoder, requires_safety_checker)
        self._register_controlnet(controlnet)

    def _denoise(self, latents, ladder, state, num_inference_steps, generator, eta, batch, device, scales, windows,
                 guess_mode, callback_on_step_end, tensor_inputs):
        scheduler = self.scheduler
        return denoise(self, scheduler, latents, ladder, state, num_inference_steps,
                       extra_step_kwargs=step_kwargs(scheduler, generator, eta),
                       timestep_cond=self._timestep_cond(batch, device, latents.dtype), unet_kwargs=self._added_cond,
                       residuals=self._control_hook(len(ladder), scales, windows, guess_mode),
                       callback_on_step_end=callback_on_step_end, callback_on_step_end_tensor_inputs=tensor_inputs)


class StableDiffusionControlNetPipeline(_ControlNetBase):
    """Text-to-image with Stable Diffusion 1.x / 2.x guided by a ControlNet and its control `image` (edges,
    depth, pose ... as a PIL image / array / tensor in [0, 1]). The output size defaults to the control image's."""

    model_cpu_offload_seq = "text_encoder->image_encoder->unet->vae"
    _callback_tensor_inputs = ["latents", "prompt_embeds", "negative_prompt_embeds", "image"]

    @torch.no_grad()
    def __call__(self, prompt: str | list[str] | None = None, image=None, height: int | None = None,
                 width: int | None = None, num_inference_steps: int = 50, timesteps: list[int] | None = None,
                 sigmas: list[float] | None = None, guidance_scale: float = 7.5,
                 negative_prompt: str | list[str] | None = None, num_images_per_prompt: int = 1, eta: float = 0.0,
                 generator: torch.Generator | list[torch.Generator] | None = None, latents: torch.Tensor | None = None,
                 prompt_embeds: torch.Tensor | None = None, negative_prompt_embeds: torch.Tensor | None = None,
                 ip_adapter_image=None, ip_adapter_image_embeds=None, output_type: str = "pil",
                 return_dict: bool = True, cross_attention_kwargs: dict[str, Any] | None = None,
                 controlnet_conditioning_scale: float = 1.0, guess_mode: bool = False,
                 control_guidance_start: float = 0.0, control_guidance_end: float = 1.0, clip_skip: int | None = None,
                 callback_on_step_end: Callable | None = None,
                 callback_on_step_end_tensor_inputs: list[str] = ["latents"], long_prompt: str = "truncate",
                 **kwargs):
        legacy = self._legacy_callback(kwargs)
        callback_on_step_end = callback_on_step_end or legacy
        tensor_inputs = self._callback_inputs(callback_on_step_end, callback_on_step_end_tensor_inputs)
        self._check_common(prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, num_images_per_prompt,
                           output_type, tensor_inputs, clip_skip)
        self._check_size(height, width)
        scales, windows, guess_mode, images = self._check_control(image, prompt, prompt_embeds,
                                                                  controlnet_conditioning_scale,
                                                                  control_guidance_start, control_guidance_end,
                                                                  guess_mode)
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
            state["image"] = self._control_image(images, height, width, batch, num_images_per_prompt, device,
                                                 guess_mode)
            height, width = (state["image"][0] if isinstance(state["image"], list) else state["image"]).shape[-2:]
            ladder, num_inference_steps = retrieve_timesteps(self.scheduler, num_inference_steps, device, timesteps,
                                                             sigmas)
            latents = txt2img.prepare_latents(self.scheduler, batch, self.unet.config.in_channels, height, width,
                                              self.vae_scale_factor, dtype, device, generator, latents)
            latents = self._denoise(latents, ladder, state, num_inference_steps, generator, eta, batch, device, scales,
                                    windows, guess_mode, callback_on_step_end, tensor_inputs)
            return self._finish(latents, output_type, generator, device, dtype, return_dict)


class StableDiffusionControlNetImg2ImgPipeline(_ControlNetBase):
    """Image-to-image with a ControlNet: `image` is the starting image (noised to `strength`), `control_image`
    the ControlNet's input; both are resized to height x width when given (default: each its own size)."""

    model_cpu_offload_seq = "text_encoder->unet->vae"
    _callback_tensor_inputs = ["latents", "prompt_embeds", "negative_prompt_embeds", "control_image"]
    _image_key = "control_image"

    @torch.no_grad()
    def __call__(self, prompt: str | list[str] | None = None, image=None, control_image=None,
                 height: int | None = None, width: int | None = None, strength: float = 0.8,
                 num_inference_steps: int = 50, guidance_scale: float = 7.5,
                 negative_prompt: str | list[str] | None = None, num_images_per_prompt: int = 1, eta: float = 0.0,
                 generator: torch.Generator | list[torch.Generator] | None = None, latents: torch.Tensor | None = None,
                 prompt_embeds: torch.Tensor | None = None, negative_prompt_embeds: torch.Tensor | None = None,
                 ip_adapter_image=None, ip_adapter_image_embeds=None, output_type: str = "pil",
                 return_dict: bool = True, cross_attention_kwargs: dict[str, Any] | None = None,
                 controlnet_conditioning_scale: float = 0.8, guess_mode: bool = False,
                 control_guidance_start: float = 0.0, control_guidance_end: float = 1.0, clip_skip: int | None = None,
                 callback_on_step_end: Callable | None = None,
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
        self._check_size(height, width)
        scales, windows, guess_mode, images = self._check_control(control_image, prompt, prompt_embeds,
                                                                  controlnet_conditioning_scale,
                                                                  control_guidance_start, control_guidance_end,
                                                                  guess_mode)
        self._start_call(guidance_scale, 0.0, clip_skip, cross_attention_kwargs)
        self._check_ip_adapter(ip_adapter_image, ip_adapter_image_embeds)
        with self._lora_scope((cross_attention_kwargs or {}).get("scale")):
            device = self._execution_device
            batch = self._batch_size(prompt, prompt_embeds) * num_images_per_prompt
            state = self._encode_for_call(prompt, negative_prompt, prompt_embeds, negative_prompt_embeds,
                                          num_images_per_prompt, device, long_prompt,
                                          requested_steps(num_inference_steps))
            state.update(self._ip_adapter_state(ip_adapter_image, ip_adapter_image_embeds, device, batch))
            dtype = state["prompt_embeds"].dtype
            pixels = self.image_processor.preprocess(_as_rgb(image), height=height, width=width).to(torch.float32)
            state["control_image"] = self._control_image(images, height, width, batch, num_images_per_prompt,
                                                         device, guess_mode)
            scheduler = self.scheduler
            retrieve_timesteps(scheduler, num_inference_steps, device)
            ladder, num_inference_steps = img2img.get_timesteps(scheduler, num_inference_steps, strength)
            if num_inference_steps < 1:
                raise ValueError(f"strength: {strength} x num_inference_steps leaves no denoising step; "
                                 "raise strength or num_inference_steps")
            if latents is None:
                latents = img2img.prepare_latents(self.vae, scheduler, pixels, ladder[:1].repeat(batch), batch, dtype,
                                                  device, generator, latent_channels)
            latents = self._denoise(latents, ladder, state, num_inference_steps, generator, eta, batch, device, scales,
                                    windows, guess_mode, callback_on_step_end, tensor_inputs)
            return self._finish(latents, output_type, generator, device, dtype, return_dict)

    def get_timesteps(self, num_inference_steps: int, strength: float, device=None):
        return img2img.get_timesteps(self.scheduler, num_inference_steps, strength)
