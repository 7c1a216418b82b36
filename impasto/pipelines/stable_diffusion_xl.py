"""StableDiffusionXLPipeline (text-to-image) and what the SDXL img2img / inpaint pipelines share with it:
two text encoders, micro-conditioning time ids, the ensemble-of-experts cut-offs and the force_upcast decode."""
from __future__ import annotations

import logging
from typing import Any, Callable

import torch

from ..conditioning import sdxl as cond
from ..loading.lora import LoraLoaderMixin
from ..loading.textual_inversion import TextualInversionLoaderMixin
from ..image_processor import VaeImageProcessor
from ..tasks import txt2img
from ..tasks.denoise import denoise, requested_steps, retrieve_timesteps, step_kwargs
from ..tasks.vae import decode
from ..text.prompt_schedule import schedule_prompts
from .outputs import StableDiffusionXLPipelineOutput
from .pipeline_utils import DiffusionPipeline
from .stable_diffusion import StableDiffusionBase, _fix_scheduler_config

logger = logging.getLogger("impasto")


def latent_stats(vae, like: torch.Tensor):
    """(mean, std) of the VAE's latents as (1, C, 1, 1) tensors when its config has them, else (None, None)."""
    mean, std = getattr(vae.config, "latents_mean", None), getattr(vae.config, "latents_std", None)
    if mean is None or std is None:
        return None, None
    shape = (1, len(mean), 1, 1)
    return (torch.tensor(mean).view(shape).to(like.device, like.dtype),
            torch.tensor(std).view(shape).to(like.device, like.dtype))


def decode_sdxl(vae, latents: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1]. A float16 VAE with force_upcast decodes in float32 (SDXL's VAE overflows in float16)."""
    upcast = vae.dtype == torch.float16 and getattr(vae.config, "force_upcast", False)
    mean, std = latent_stats(vae, latents)
    if not upcast and mean is None:
        return decode(vae, latents)
    dtype = vae.dtype
    if upcast:
        vae.to(torch.float32)
    try:
        sf = vae.config.scaling_factor
        z = latents * std / sf + mean if mean is not None else latents / sf
        return vae.decode(z.to(vae.dtype), return_dict=False)[0]
    finally:
        vae.to(dtype)


def check_hw(height, width):
    for name, value in (("height", height), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0 or value % 8 != 0:
            raise ValueError(f"{name}: must be a positive multiple of 8, got {value!r}")


def check_fraction(value, name: str):
    """denoising_start / denoising_end: None or a float strictly between 0 and 1."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise ValueError(f"{name}: expected a fraction of the schedule strictly between 0 and 1 (or None), "
                         f"got {value!r}")
    return float(value)


def _cutoff(scheduler, fraction: float) -> int:
    total = scheduler.config.num_train_timesteps
    return int(round(total - fraction * total))


def cut_at_end(scheduler, timesteps, denoising_end):
    """diffusers' `denoising_end`: keep the timesteps >= the cut-off (the rest is the refiner's)."""
    if denoising_end is None:
        return timesteps, None
    n = int((timesteps >= _cutoff(scheduler, denoising_end)).sum().item())
    return timesteps[:n], n


def start_from(scheduler, denoising_start):
    """diffusers' `denoising_start`: the timesteps < the cut-off; a second-order scheduler keeps an odd count so
    that the first step is a whole one."""
    n = int((scheduler.timesteps < _cutoff(scheduler, denoising_start)).sum().item())
    if scheduler.order == 2 and n % 2 == 0:
        n += 1
    start = len(scheduler.timesteps) - n
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(start)
    return scheduler.timesteps[start:], n


class Encoded(tuple):
    """encode_prompt's (prompt_embeds, negative_prompt_embeds, pooled, negative_pooled), with an optional
    `.schedule` for A1111 prompt editing."""
    schedule = None


class StableDiffusionXLBase(StableDiffusionBase, LoraLoaderMixin, TextualInversionLoaderMixin):
    """Components, prompts, micro-conditioning, checks and decoding of the SDXL pipelines (no safety checker)."""

    model_cpu_offload_seq = "text_encoder->text_encoder_2->image_encoder->unet->vae"
    _optional_components = ["tokenizer", "tokenizer_2", "text_encoder", "text_encoder_2", "image_encoder",
                            "feature_extractor"]
    _exclude_from_cpu_offload = []
    _callback_tensor_inputs = ["latents", "prompt_embeds", "add_text_embeds", "add_time_ids"]
    safety_checker = None

    def _setup(self, vae, text_encoder, text_encoder_2, tokenizer, tokenizer_2, unet, scheduler, image_encoder,
               feature_extractor, force_zeros_for_empty_prompt, add_watermarker, **flags):
        DiffusionPipeline.__init__(self)
        _fix_scheduler_config(scheduler)
        if add_watermarker:
            logger.warning("%s: add_watermarker=True has no effect: impasto does not apply the invisible watermark",
                           type(self).__name__)
        self.register_modules(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
                              tokenizer_2=tokenizer_2, unet=unet, scheduler=scheduler, image_encoder=image_encoder,
                              feature_extractor=feature_extractor)
        self.register_to_config(force_zeros_for_empty_prompt=force_zeros_for_empty_prompt, **flags)
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 8
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)
        size = getattr(unet.config, "sample_size", None) if unet is not None else None
        self.default_sample_size = size if size is not None else 128
        self.watermark = None

    denoising_end = property(lambda self: self._denoising_end)
    denoising_start = property(lambda self: self._denoising_start)

    # ---- prompts -------------------------------------------------------------------------------------
    def encode_prompt(self, prompt, prompt_2=None, device=None, num_images_per_prompt: int = 1,
                      do_classifier_free_guidance: bool = True, negative_prompt=None, negative_prompt_2=None,
                      prompt_embeds=None, negative_prompt_embeds=None, pooled_prompt_embeds=None,
                      negative_pooled_prompt_embeds=None, lora_scale: float | None = None,
                      clip_skip: int | None = None, long_prompt: str = "truncate"):
        """(prompt_embeds, negative_prompt_embeds, pooled_prompt_embeds, negative_pooled_prompt_embeds); `long_prompt`
        as for SD 1.x/2.x ("truncate", "chunk" or "a1111"; see impasto.conditioning.sdxl)."""
        convert = getattr(self, "maybe_convert_prompt", None)
        with self._lora_scope(lora_scale, ("text_encoder", "text_encoder_2")):
            return cond.encode_prompt(
                self.text_encoder, self.text_encoder_2, self.tokenizer, self.tokenizer_2, prompt, prompt_2,
                device or self._execution_device, num_images_per_prompt, do_classifier_free_guidance, negative_prompt,
                negative_prompt_2, prompt_embeds, negative_prompt_embeds, pooled_prompt_embeds,
                negative_pooled_prompt_embeds, clip_skip, self.config.force_zeros_for_empty_prompt,
                self.unet.dtype if self.unet is not None else None,
                (lambda texts, tok: convert(texts, tok)) if convert is not None else None, long_prompt)

    # ---- checks --------------------------------------------------------------------------------------
    def _check_sdxl(self, prompt, prompt_2, negative_prompt, negative_prompt_2, prompt_embeds, negative_prompt_embeds,
                    pooled_prompt_embeds, negative_pooled_prompt_embeds, num_images_per_prompt, output_type,
                    tensor_inputs, clip_skip, ip_adapter_image, ip_adapter_image_embeds):
        self._check_common(prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, num_images_per_prompt,
                           output_type, tensor_inputs, clip_skip)
        if prompt_2 is not None:
            if prompt_embeds is not None:
                raise ValueError("prompt_2, prompt_embeds: give one of them, not both")
            cond.as_list(prompt_2, "prompt_2")
        if negative_prompt_2 is not None:
            if negative_prompt_embeds is not None:
                raise ValueError("negative_prompt_2, negative_prompt_embeds: give at most one of them")
            cond.as_list(negative_prompt_2, "negative_prompt_2")
        if prompt_embeds is not None and pooled_prompt_embeds is None:
            raise ValueError("pooled_prompt_embeds: required with prompt_embeds (from the same text encoder)")
        if negative_prompt_embeds is not None and negative_pooled_prompt_embeds is None:
            raise ValueError("negative_pooled_prompt_embeds: required with negative_prompt_embeds")

    # ---- micro-conditioning --------------------------------------------------------------------------
    def _projection_dim(self, pooled: torch.Tensor) -> int:
        if self.text_encoder_2 is None:
            return int(pooled.shape[-1])
        return self.text_encoder_2.config.projection_dim

    def _add_time_ids(self, pos: list, neg: list, pooled, dtype):
        cond.check_time_ids(self.unet, len(pos), self._projection_dim(pooled),
                            bool(self.config.get("requires_aesthetics_score", False)))
        return torch.tensor([pos], dtype=dtype), torch.tensor([neg], dtype=dtype)

    def _text_state(self, encoded, device) -> dict:
        pos, neg, pooled, neg_pooled = encoded
        if self.do_classifier_free_guidance:
            pos = torch.cat([neg, pos])
            pooled = torch.cat([neg_pooled, pooled])
        return {"prompt_embeds": pos.to(device), "add_text_embeds": pooled.to(device)}

    def _state(self, encoded, add_time_ids, neg_time_ids, batch: int, device) -> dict:
        """The tensors the loop (and a callback) sees: batched [negative, positive] when guiding."""
        add_time_ids = add_time_ids.repeat(batch, 1)
        if self.do_classifier_free_guidance:
            add_time_ids = torch.cat([neg_time_ids.repeat(batch, 1), add_time_ids])
        state = {**self._text_state(encoded, device), "add_time_ids": add_time_ids.to(device)}
        if getattr(encoded, "schedule", None):
            state["prompt_schedule"] = [(end, self._text_state(e, device)) for end, e in encoded.schedule]
        return state

    def _size_state(self, encoded, sizes, negative_sizes_given: bool, batch: int, device) -> dict:
        """`_state` with the time ids of `_sizes`' six tuples."""
        orig, crop, target, neg_orig, neg_crop, neg_target = sizes
        pos_ids = cond.time_ids(orig, crop, target)
        # as diffusers: the negative ids differ only when both negative sizes are given
        neg_ids = cond.time_ids(neg_orig, neg_crop, neg_target) if negative_sizes_given else pos_ids
        add_ids, neg_add_ids = self._add_time_ids(pos_ids, neg_ids, encoded[2], encoded[0].dtype)
        return self._state(encoded, add_ids, neg_add_ids, batch, device)

    def _added_cond(self, state: dict) -> dict:
        return {"added_cond_kwargs": {"text_embeds": state["add_text_embeds"], "time_ids": state["add_time_ids"],
                                      **self._image_cond(state)}}

    def _start_sdxl(self, guidance_scale, guidance_rescale, clip_skip, cross_attention_kwargs, denoising_end,
                    denoising_start=None):
        self._start_call(guidance_scale, guidance_rescale, clip_skip, cross_attention_kwargs)
        self._denoising_end = check_fraction(denoising_end, "denoising_end")
        self._denoising_start = check_fraction(denoising_start, "denoising_start")
        if self._denoising_start is not None and self._denoising_end is not None and \
                self._denoising_start >= self._denoising_end:
            raise ValueError(f"denoising_start: {denoising_start} must be below denoising_end ({denoising_end})")

    def _ip_state(self, ip_adapter_image, ip_adapter_image_embeds, device, batch: int) -> dict:
        self._check_ip_adapter(ip_adapter_image, ip_adapter_image_embeds)
        return self._ip_adapter_state(ip_adapter_image, ip_adapter_image_embeds, device, batch)

    def _encode_call(self, prompt, prompt_2, negative_prompt, negative_prompt_2, prompt_embeds, negative_prompt_embeds,
                     pooled_prompt_embeds, negative_pooled_prompt_embeds, num_images_per_prompt, device,
                     long_prompt: str = "truncate", steps: int | None = None):
        """encode_prompt's four tensors; with long_prompt="a1111" and prompt editing over `steps`, `.schedule` holds
        [(last UNet call, four tensors), ...] (read by `_state`)."""
        lora_scale = (self.cross_attention_kwargs or {}).get("scale")
        groups = [prompt, prompt_2, negative_prompt, negative_prompt_2]
        schedule = schedule_prompts(groups, steps) if long_prompt == "a1111" else None
        entries = []
        for end, (p, p_2, n, n_2) in schedule or [(None, groups)]:
            entries.append((end, self.encode_prompt(
                p, p_2, device, num_images_per_prompt, self.do_classifier_free_guidance, n, n_2, prompt_embeds,
                negative_prompt_embeds, pooled_prompt_embeds, negative_pooled_prompt_embeds, lora_scale,
                self.clip_skip, long_prompt)))
        encoded = Encoded(entries[0][1])
        encoded.schedule = entries if schedule else None
        return encoded

    def _run_loop(self, scheduler, latents, ladder, state, n_steps, generator, eta, batch, device, callback,
                  tensor_inputs, **hooks):
        ladder, cut = cut_at_end(scheduler, ladder, self._denoising_end)
        n_steps = cut if cut is not None else n_steps
        return denoise(self, scheduler, latents, ladder, state, n_steps,
                       extra_step_kwargs=step_kwargs(scheduler, generator, eta),
                       timestep_cond=self._timestep_cond(batch, device, latents.dtype), unet_kwargs=self._added_cond,
                       callback_on_step_end=callback, callback_on_step_end_tensor_inputs=tensor_inputs, **hooks)

    def _finish_sdxl(self, latents, output_type, return_dict, postprocess=None):
        if output_type == "latent":
            image = latents
        else:
            image = self.image_processor.postprocess(decode_sdxl(self.vae, latents), output_type=output_type)
            if postprocess is not None:
                image = postprocess(image)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (image,)
        return StableDiffusionXLPipelineOutput(images=image)

    def upcast_vae(self):
        """Deprecated in diffusers: the VAE in float32 (use `pipe.vae.to(torch.float32)`)."""
        self.vae.to(dtype=torch.float32)


class StableDiffusionXLPipeline(StableDiffusionXLBase):
    """Text-to-image with SDXL (diffusers' constructor and `__call__`). `denoising_end=f` with output_type="latent"
    stops after the first fraction f of the schedule, for a refiner called with `denoising_start=f`."""

    def __init__(self, vae, text_encoder, text_encoder_2, tokenizer, tokenizer_2, unet, scheduler,
                 image_encoder=None, feature_extractor=None, force_zeros_for_empty_prompt: bool = True,
                 add_watermarker: bool | None = None):
        self._setup(vae, text_encoder, text_encoder_2, tokenizer, tokenizer_2, unet, scheduler, image_encoder,
                    feature_extractor, force_zeros_for_empty_prompt, add_watermarker)

    @torch.no_grad()
    def __call__(self, prompt: str | list[str] | None = None, prompt_2: str | list[str] | None = None,
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
                 cross_attention_kwargs: dict[str, Any] | None = None, guidance_rescale: float = 0.0,
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
        height = height or self.default_sample_size * self.vae_scale_factor
        width = width or self.default_sample_size * self.vae_scale_factor
        check_hw(height, width)
        sizes = _sizes(original_size, crops_coords_top_left, target_size, negative_original_size,
                       negative_crops_coords_top_left, negative_target_size, (height, width))
        self._check_sdxl(prompt, prompt_2, negative_prompt, negative_prompt_2, prompt_embeds, negative_prompt_embeds,
                         pooled_prompt_embeds, negative_pooled_prompt_embeds, num_images_per_prompt, output_type,
                         tensor_inputs, clip_skip, ip_adapter_image, ip_adapter_image_embeds)
        self._start_sdxl(guidance_scale, guidance_rescale, clip_skip, cross_attention_kwargs, denoising_end)
        with self._lora_scope((cross_attention_kwargs or {}).get("scale")):
            device = self._execution_device
            batch = self._batch_size(prompt, prompt_embeds) * num_images_per_prompt
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
            if hasattr(scheduler, "set_begin_index"):
                scheduler.set_begin_index(0)
            latents = self._run_loop(scheduler, latents, ladder, state, n_steps, generator, eta, batch, device,
                                     callback_on_step_end, tensor_inputs)
            return self._finish_sdxl(latents, output_type, return_dict)


def _sizes(original_size, crops, target_size, neg_original, neg_crops, neg_target, default_hw):
    """The six micro-conditioning tuples, checked, with sizes defaulting to the output size."""
    original = cond.check_size(original_size, "original_size") or tuple(default_hw)
    target = cond.check_size(target_size, "target_size") or tuple(default_hw)
    crops = cond.check_size(crops, "crops_coords_top_left")
    neg_crops = cond.check_size(neg_crops, "negative_crops_coords_top_left")
    neg_original = cond.check_size(neg_original, "negative_original_size") or original
    neg_target = cond.check_size(neg_target, "negative_target_size") or target
    if crops is None or neg_crops is None:
        raise ValueError("crops_coords_top_left: expected a tuple (top, left), got None")
    return original, crops, target, neg_original, neg_crops, neg_target
