"""StableDiffusionPipeline (text-to-image) and the machinery it shares with the img2img pipeline."""
from __future__ import annotations

import contextlib
import logging
from typing import Any, Callable

import torch

from ..conditioning import sd as cond
from ..core.guidance import guidance_scale_embedding
from ..image_processor import VaeImageProcessor
from ..loading.ip_adapter import IPAdapterMixin
from ..loading.lora import LoraLoaderMixin
from ..loading.single_file import pipeline_from_single_file
from ..loading.textual_inversion import TextualInversionLoaderMixin
from ..tasks import txt2img
from ..tasks.denoise import denoise, requested_steps, retrieve_timesteps, step_kwargs
from ..tasks.vae import decode
from ..text.prompt_schedule import schedule_prompts
from .outputs import StableDiffusionPipelineOutput
from .pipeline_utils import DiffusionPipeline

logger = logging.getLogger("impasto")

OUTPUT_TYPES = ("pil", "np", "pt", "latent")
SAFETY_MODES = ("blackout", "flag")


class StableDiffusionBase(DiffusionPipeline, IPAdapterMixin):
    """Components, prompt encoding, checks, decoding and the safety checker of the SD 1.x/2.x pipelines.

    `safety_mode`: "blackout" (default, as diffusers: flagged images are replaced by black) or "flag" (images
    are kept; only `nsfw_content_detected` reports them)."""

    model_cpu_offload_seq = "text_encoder->image_encoder->unet->vae"
    _optional_components = ["safety_checker", "feature_extractor", "image_encoder"]
    _exclude_from_cpu_offload = ["safety_checker"]
    _callback_tensor_inputs = ["latents", "prompt_embeds", "negative_prompt_embeds"]
    safety_mode = "blackout"
    from_single_file = classmethod(pipeline_from_single_file)

    def __init__(self, vae, text_encoder, tokenizer, unet, scheduler, safety_checker=None, feature_extractor=None,
                 image_encoder=None, requires_safety_checker: bool = True):
        super().__init__()
        _fix_scheduler_config(scheduler)
        if safety_checker is None and requires_safety_checker:
            logger.warning("%s: safety checker disabled (safety_checker=None)", type(self).__name__)
        if safety_checker is not None and feature_extractor is None:
            raise ValueError("feature_extractor: the safety checker needs a feature_extractor (CLIPImageProcessor)")
        self.register_modules(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                              safety_checker=safety_checker, feature_extractor=feature_extractor,
                              image_encoder=image_encoder)
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 8
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)
        self.register_to_config(requires_safety_checker=requires_safety_checker)

    # ---- per-call settings (diffusers' properties) ---------------------------------------------------
    guidance_scale = property(lambda self: self._guidance_scale)
    guidance_rescale = property(lambda self: self._guidance_rescale)
    clip_skip = property(lambda self: self._clip_skip)
    cross_attention_kwargs = property(lambda self: self._cross_attention_kwargs)
    num_timesteps = property(lambda self: self._num_timesteps)
    interrupt = property(lambda self: self._interrupt)

    @property
    def do_classifier_free_guidance(self) -> bool:
        return self._guidance_scale > 1 and self.unet.config.time_cond_proj_dim is None

    def _start_call(self, guidance_scale, guidance_rescale, clip_skip, cross_attention_kwargs):
        self._guidance_scale = guidance_scale
        self._guidance_rescale = guidance_rescale
        self._clip_skip = clip_skip
        self._cross_attention_kwargs = cross_attention_kwargs
        self._interrupt = False
        self._num_timesteps = 0

    # ---- prompts -------------------------------------------------------------------------------------
    def encode_prompt(self, prompt, device, num_images_per_prompt: int = 1, do_classifier_free_guidance: bool = True,
                      negative_prompt=None, prompt_embeds=None, negative_prompt_embeds=None,
                      lora_scale: float | None = None, clip_skip: int | None = None, long_prompt: str = "truncate"):
        """(prompt_embeds, negative_prompt_embeds) as diffusers computes them; see impasto.conditioning.sd."""
        convert = getattr(self, "maybe_convert_prompt", None)  # textual inversion, when loaded
        if convert is not None:
            if prompt is not None:
                prompt = convert(prompt, self.tokenizer)
            if negative_prompt is not None:
                negative_prompt = convert(negative_prompt, self.tokenizer)
        fallback = self.unet.dtype if self.unet is not None else None
        with self._lora_scope(lora_scale, ("text_encoder",)):
            return cond.encode_prompt(self.text_encoder, self.tokenizer, prompt, device, num_images_per_prompt,
                                      do_classifier_free_guidance, negative_prompt, prompt_embeds,
                                      negative_prompt_embeds, clip_skip, long_prompt, fallback)

    def _lora_scope(self, scale, components=("unet", "text_encoder", "text_encoder_2")):
        """LoRA layers scaled by `scale` (cross_attention_kwargs={"scale": s}) while the block runs."""
        scope = getattr(self, "lora_scale", None)
        if scale is None or scope is None:
            return contextlib.nullcontext()
        return scope(scale, components)

    def _encode_for_call(self, prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, n, device, long_prompt,
                         steps: int | None = None):
        """The loop's text state. With long_prompt="a1111" and prompt editing (`[a:b:0.5]`, `[a|b]`) over `steps`,
        also "prompt_schedule": [(last UNet call, batched embeddings), ...] (impasto.text.prompt_schedule)."""
        lora_scale = (self.cross_attention_kwargs or {}).get("scale")
        schedule = schedule_prompts([prompt, negative_prompt], steps) if long_prompt == "a1111" else None
        entries = []
        for end, (texts, negatives) in schedule or [(None, (prompt, negative_prompt))]:
            pos, neg = self.encode_prompt(texts, device, n, self.do_classifier_free_guidance, negatives,
                                          prompt_embeds, negative_prompt_embeds, lora_scale, self.clip_skip,
                                          long_prompt)
            entries.append((end, torch.cat([neg, pos]) if self.do_classifier_free_guidance else pos, neg))
        state = {"prompt_embeds": entries[0][1], "negative_prompt_embeds": entries[0][2]}
        if schedule:
            state["prompt_schedule"] = [(end, batched) for end, batched, _ in entries]
        return state

    def _added_cond(self, state: dict) -> dict:
        """The UNet's added_cond_kwargs for one step: the IP-Adapter image embeddings, when given."""
        image = self._image_cond(state)
        return {"added_cond_kwargs": image} if image else {}

    # ---- checks --------------------------------------------------------------------------------------
    def _check_common(self, prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, num_images_per_prompt,
                      output_type, callback_on_step_end_tensor_inputs, clip_skip):
        if prompt is not None and prompt_embeds is not None:
            raise ValueError("prompt, prompt_embeds: give one of them, not both")
        if prompt is None and prompt_embeds is None:
            raise ValueError("prompt, prompt_embeds: give one of them (both are None)")
        if prompt is not None:
            cond.as_list(prompt, "prompt")
        if negative_prompt is not None and negative_prompt_embeds is not None:
            raise ValueError("negative_prompt, negative_prompt_embeds: give at most one of them")
        if prompt_embeds is not None and negative_prompt_embeds is not None and \
                prompt_embeds.shape != negative_prompt_embeds.shape:
            raise ValueError(f"negative_prompt_embeds: shape {tuple(negative_prompt_embeds.shape)} differs from "
                             f"prompt_embeds {tuple(prompt_embeds.shape)}")
        if not isinstance(num_images_per_prompt, int) or num_images_per_prompt < 1:
            raise ValueError(f"num_images_per_prompt: expected a positive int, got {num_images_per_prompt!r}")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type: expected one of {OUTPUT_TYPES}, got {output_type!r}")
        bad = [k for k in callback_on_step_end_tensor_inputs if k not in self._callback_tensor_inputs]
        if bad:
            raise ValueError(f"callback_on_step_end_tensor_inputs: {bad} not in {self._callback_tensor_inputs}")
        if clip_skip is not None and (not isinstance(clip_skip, int) or clip_skip < 0):
            raise ValueError(f"clip_skip: expected a non-negative int or None, got {clip_skip!r}")

    @staticmethod
    def _batch_size(prompt, prompt_embeds) -> int:
        if prompt is None:
            return prompt_embeds.shape[0]
        return 1 if isinstance(prompt, str) else len(prompt)

    def _timestep_cond(self, batch: int, device, dtype):
        dim = self.unet.config.time_cond_proj_dim
        if dim is None:
            return None
        w = torch.tensor(self.guidance_scale - 1).repeat(batch)
        return guidance_scale_embedding(w, embedding_dim=dim).to(device=device, dtype=dtype)

    @staticmethod
    def _callback_inputs(callback_on_step_end, tensor_inputs):
        return list(getattr(callback_on_step_end, "tensor_inputs", None) or tensor_inputs)

    @staticmethod
    def _legacy_callback(kwargs: dict):
        callback, steps = kwargs.pop("callback", None), kwargs.pop("callback_steps", None)
        if kwargs:
            raise ValueError(f"unexpected arguments: {', '.join(sorted(kwargs))}")
        if callback is None:
            return None
        logger.warning("callback/callback_steps are deprecated; use callback_on_step_end")
        if steps is not None and (not isinstance(steps, int) or steps < 1):
            raise ValueError(f"callback_steps: expected a positive int, got {steps!r}")
        every = steps or 1

        def on_step_end(pipe, i, t, kw):
            # as diffusers: only where the progress bar advances (past a multistep scheduler's warm-up, at the
            # end of a higher-order step, or the last step), with the step counted in solver steps
            s = pipe.scheduler
            order, n = getattr(s, "order", 1), getattr(s, "num_inference_steps", None)
            warmup = len(s.timesteps) - n * order if n else 0
            last = len(s.timesteps) - (getattr(s, "begin_index", None) or 0) - 1
            if (i == last or (i + 1 > warmup and (i + 1) % order == 0)) and i % every == 0:
                callback(i // order, t, kw["latents"])
            return {}
        return on_step_end

    # ---- decode and safety ---------------------------------------------------------------------------
    def run_safety_checker(self, image: torch.Tensor, device, dtype):
        """(images, nsfw flags or None). In "blackout" mode flagged images are zeroed (black after decoding)."""
        if self.safety_checker is None:
            return image, None
        if self.safety_mode not in SAFETY_MODES:
            raise ValueError(f"safety_mode: expected one of {SAFETY_MODES}, got {self.safety_mode!r}")
        pil = self.image_processor.postprocess(image, output_type="pil")
        clip_input = self.feature_extractor(pil, return_tensors="pt").to(device)
        checked, nsfw = self.safety_checker(images=image.clone(), clip_input=clip_input.pixel_values.to(dtype))
        nsfw = [bool(x) for x in nsfw]
        if self.safety_mode == "blackout":
            return checked, nsfw
        return image, nsfw

    def _finish(self, latents, output_type, generator, device, dtype, return_dict):
        if output_type == "latent":
            image, nsfw = latents, None
        else:
            image = decode(self.vae, latents, generator)
            image, nsfw = self.run_safety_checker(image, device, dtype)
        blackout = nsfw is not None and self.safety_mode == "blackout"
        denorm = [not x for x in nsfw] if blackout else [True] * image.shape[0]
        image = self.image_processor.postprocess(image, output_type=output_type, do_denormalize=denorm)
        self.maybe_free_model_hooks()
        if not return_dict:
            return image, nsfw
        return StableDiffusionPipelineOutput(images=image, nsfw_content_detected=nsfw)


def _fix_scheduler_config(scheduler):
    """diffusers' fix-ups of old scheduler configs: steps_offset must be 1, clip_sample must be False."""
    cfg = getattr(scheduler, "config", None)
    if cfg is None:
        return
    fixes = {}
    if cfg.get("steps_offset", 1) != 1:
        fixes["steps_offset"] = 1
    if cfg.get("clip_sample") is True:
        fixes["clip_sample"] = False
    if fixes:
        logger.warning("scheduler config is outdated (%s); using %s",
                       ", ".join(f"{k}={cfg[k]}" for k in fixes), ", ".join(f"{k}={v}" for k, v in fixes.items()))
        new = dict(cfg)
        new.update(fixes)
        scheduler._internal_dict = type(cfg)(new)


class StableDiffusionPipeline(StableDiffusionBase, LoraLoaderMixin, TextualInversionLoaderMixin):
    """Text-to-image with Stable Diffusion 1.x / 2.x (diffusers' constructor and `__call__`).

    Beyond diffusers: `long_prompt="chunk"` encodes prompts longer than 77 tokens in 75-token chunks,
    `long_prompt="a1111"` reads AUTOMATIC1111's prompt syntax too, `(word:1.2)`, `[word]`, BREAK (see
    impasto.conditioning.sd); `pipe.safety_mode = "flag"` keeps flagged images and only reports them.
    """

    @torch.no_grad()
    def __call__(self, prompt: str | list[str] | None = None, height: int | None = None, width: int | None = None,
                 num_inference_steps: int = 50, timesteps: list[int] | None = None, sigmas: list[float] | None = None,
                 guidance_scale: float = 7.5, negative_prompt: str | list[str] | None = None,
                 num_images_per_prompt: int = 1, eta: float = 0.0,
                 generator: torch.Generator | list[torch.Generator] | None = None, latents: torch.Tensor | None = None,
                 prompt_embeds: torch.Tensor | None = None, negative_prompt_embeds: torch.Tensor | None = None,
                 ip_adapter_image=None, ip_adapter_image_embeds=None, output_type: str = "pil",
                 return_dict: bool = True, cross_attention_kwargs: dict[str, Any] | None = None,
                 guidance_rescale: float = 0.0, clip_skip: int | None = None,
                 callback_on_step_end: Callable | None = None,
                 callback_on_step_end_tensor_inputs: list[str] = ["latents"], long_prompt: str = "truncate",
                 **kwargs):
        legacy = self._legacy_callback(kwargs)
        callback_on_step_end = callback_on_step_end or legacy
        tensor_inputs = self._callback_inputs(callback_on_step_end, callback_on_step_end_tensor_inputs)
        height, width = self._default_size(height, width)
        self._check_common(prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, num_images_per_prompt,
                           output_type, tensor_inputs, clip_skip)
        self._start_call(guidance_scale, guidance_rescale, clip_skip, cross_attention_kwargs)
        self._check_ip_adapter(ip_adapter_image, ip_adapter_image_embeds)
        with self._lora_scope((cross_attention_kwargs or {}).get("scale")):
            return self._run(prompt, height, width, num_inference_steps, timesteps, sigmas, negative_prompt,
                             num_images_per_prompt, eta, generator, latents, prompt_embeds, negative_prompt_embeds,
                             output_type, return_dict, callback_on_step_end, tensor_inputs, long_prompt,
                             ip_adapter_image, ip_adapter_image_embeds)

    def _run(self, prompt, height, width, num_inference_steps, timesteps, sigmas, negative_prompt,
             num_images_per_prompt, eta, generator, latents, prompt_embeds, negative_prompt_embeds, output_type,
             return_dict, callback_on_step_end, tensor_inputs, long_prompt, ip_adapter_image=None,
             ip_adapter_image_embeds=None):
        device = self._execution_device
        batch = self._batch_size(prompt, prompt_embeds) * num_images_per_prompt
        state = self._encode_for_call(prompt, negative_prompt, prompt_embeds, negative_prompt_embeds,
                                      num_images_per_prompt, device, long_prompt,
                                      requested_steps(num_inference_steps, timesteps, sigmas))
        state.update(self._ip_adapter_state(ip_adapter_image, ip_adapter_image_embeds, device, batch))
        dtype = state["prompt_embeds"].dtype
        scheduler = self.scheduler
        ladder, num_inference_steps = retrieve_timesteps(scheduler, num_inference_steps, device, timesteps, sigmas)
        latents = txt2img.prepare_latents(scheduler, batch, self.unet.config.in_channels, height, width,
                                          self.vae_scale_factor, dtype, device, generator, latents)
        latents = denoise(self, scheduler, latents, ladder, state, num_inference_steps,
                          extra_step_kwargs=step_kwargs(scheduler, generator, eta),
                          timestep_cond=self._timestep_cond(batch, device, latents.dtype), unet_kwargs=self._added_cond,
                          callback_on_step_end=callback_on_step_end,
                          callback_on_step_end_tensor_inputs=tensor_inputs)
        return self._finish(latents, output_type, generator, device, dtype, return_dict)

    def _default_size(self, height, width) -> tuple[int, int]:
        size = self.unet.config.sample_size
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        height = height or h * self.vae_scale_factor
        width = width or w * self.vae_scale_factor
        for name, value in (("height", height), ("width", width)):
            if not isinstance(value, int) or value <= 0 or value % 8 != 0:
                raise ValueError(f"{name}: must be a positive multiple of 8, got {value!r}")
        return height, width
