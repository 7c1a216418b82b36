"""The denoising loop shared by every Stable Diffusion task, plus timestep selection.

The loop reads guidance settings from the pipeline on every step (`pipe.do_classifier_free_guidance`,
`pipe.guidance_scale`, `pipe.interrupt`), so a step-end callback can switch guidance off or stop early,
as diffusers' callbacks do.
"""
from __future__ import annotations

import inspect
from typing import Callable

import torch

from ..core.guidance import cfg_batch, cfg_combine, rescale_noise_cfg


def _params(fn) -> set[str]:
    return set(inspect.signature(fn).parameters)


def retrieve_timesteps(scheduler, num_inference_steps: int | None = None, device=None, timesteps=None, sigmas=None):
    """Set the scheduler's ladder (N steps, or custom `timesteps` / `sigmas`); returns (timesteps, N)."""
    if timesteps is not None and sigmas is not None:
        raise ValueError("timesteps, sigmas: give at most one of them")
    for name, value in (("timesteps", timesteps), ("sigmas", sigmas)):
        if value is not None:
            if name not in _params(scheduler.set_timesteps):
                raise ValueError(f"{name}: {type(scheduler).__name__} does not accept custom {name}; "
                                 "use another scheduler or num_inference_steps")
            scheduler.set_timesteps(**{name: value}, device=device)
            return scheduler.timesteps, len(scheduler.timesteps)
    if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
        raise ValueError(f"num_inference_steps: expected a positive int, got {num_inference_steps!r}")
    scheduler.set_timesteps(num_inference_steps, device=device)
    return scheduler.timesteps, num_inference_steps


def requested_steps(num_inference_steps, timesteps=None, sigmas=None) -> int | None:
    """The number of steps a call asks for (what A1111's prompt editing counts in), before strength cuts it."""
    for custom in (timesteps, sigmas):
        if custom is not None:
            return len(custom)
    return num_inference_steps if isinstance(num_inference_steps, int) and num_inference_steps > 0 else None


def step_kwargs(scheduler, generator, eta: float) -> dict:
    """eta and generator go to `scheduler.step` only if it takes them (DDIM/DDPM-like, ancestral samplers)."""
    accepted = _params(scheduler.step)
    out = {}
    if "eta" in accepted:
        out["eta"] = eta
    if "generator" in accepted:
        out["generator"] = generator
    return out


def denoise(pipe, scheduler, latents: torch.Tensor, timesteps, state: dict, num_inference_steps: int, *,
            extra_step_kwargs: dict | None = None, timestep_cond: torch.Tensor | None = None,
            unet_kwargs: Callable[[dict], dict] | None = None, callback_on_step_end=None,
            callback_on_step_end_tensor_inputs=("latents",), model_input: Callable | None = None,
            after_step: Callable | None = None, residuals: Callable | None = None) -> torch.Tensor:
    """Run the sampler over `timesteps`.

    `state` holds the tensors a callback may read or replace: "prompt_embeds" is the batched UNet context
    ([negative, positive] when guiding); with "prompt_schedule" ([(last call, context), ...], A1111's prompt
    editing) UNet call i takes the first context whose last call is at least i (the last one after them): a
    tensor for "prompt_embeds", or a dict of state entries (SDXL's pooled "add_text_embeds" too).
    `unet_kwargs(state)` adds model inputs (SDXL's added_cond_kwargs).
    `model_input(x, state)` may extend the scaled UNet input (inpainting UNets' mask channels);
    `after_step(i, state)` may update `state` after each scheduler step, before the callback (inpainting's blend).
    `residuals(i, t, x, state)` returns further UNet kwargs computed from the step's scaled input `x` (ControlNet's
    down/mid residuals, impasto.tasks.controlnet).
    """
    state = dict(state)
    state["latents"] = latents
    extra_step_kwargs = extra_step_kwargs or {}
    num_warmup = len(timesteps) - num_inference_steps * scheduler.order
    pipe._num_timesteps = len(timesteps)
    with pipe.progress_bar(total=num_inference_steps) as bar:
        for i, t in enumerate(timesteps):
            if pipe.interrupt:
                continue
            if "prompt_schedule" in state:
                schedule = state["prompt_schedule"]
                context = next((c for last, c in schedule if i <= last), schedule[-1][1])
                state.update(context if isinstance(context, dict) else {"prompt_embeds": context})
            guided = pipe.do_classifier_free_guidance
            x = scheduler.scale_model_input(cfg_batch(state["latents"], guided), t)
            if model_input is not None:
                x = model_input(x, state)
            extra = unet_kwargs(state) if unet_kwargs is not None else {}
            if residuals is not None:
                extra = {**extra, **residuals(i, t, x, state)}
            pred = pipe.unet(x, t, encoder_hidden_states=state["prompt_embeds"], timestep_cond=timestep_cond,
                             cross_attention_kwargs=pipe.cross_attention_kwargs, return_dict=False, **extra)[0]
            if guided:
                pred, cond = cfg_combine(pred, pipe.guidance_scale)
                if pipe.guidance_rescale > 0.0:
                    pred = rescale_noise_cfg(pred, cond, pipe.guidance_rescale)
            state["latents"] = scheduler.step(pred, t, state["latents"], **extra_step_kwargs, return_dict=False)[0]
            if after_step is not None:
                after_step(i, state)
            if callback_on_step_end is not None:
                kwargs = {k: state[k] for k in callback_on_step_end_tensor_inputs}
                returned = callback_on_step_end(pipe, i, t, kwargs) or {}
                for k in state:
                    if k in returned:
                        state[k] = returned[k]
            if i == len(timesteps) - 1 or (i + 1 > num_warmup and (i + 1) % scheduler.order == 0):
                bar.update()
    return state["latents"]
