"""ControlNet guidance for the denoising loop: the control image as the ControlNet takes it, the steps on which
it acts, and the per-step residuals handed to the UNet (`denoise(..., residuals=...)`).

With classifier-free guidance the ControlNet normally sees the same [uncond, cond] batch as the UNet. In guess
mode it sees the conditional half only and the unconditional half of the UNet gets zero residuals, so the
control acts through the guidance difference alone (as diffusers).
"""
from __future__ import annotations

import numbers

import numpy as np
import PIL.Image
import torch


def check_scale(value, name: str = "controlnet_conditioning_scale") -> float:
    if isinstance(value, (list, tuple)):
        raise ValueError(f"{name}: a single ControlNet takes one number, got a list {list(value)!r} (lists are "
                         "for several ControlNets, which impasto does not support)")
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name}: expected a number, got {type(value).__name__}")
    return float(value)


def check_window(start, end) -> tuple[float, float]:
    """control_guidance_start/end as numbers (a one-element list is taken as its element, as diffusers)."""
    values = []
    for name, v in (("control_guidance_start", start), ("control_guidance_end", end)):
        if isinstance(v, (list, tuple)):
            if len(v) != 1:
                raise ValueError(f"{name}: a single ControlNet takes one number, got {list(v)!r}")
            v = v[0]
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise ValueError(f"{name}: expected a number in [0, 1], got {v!r}")
        values.append(float(v))
    start, end = values
    if start >= end:
        raise ValueError(f"control_guidance_start, control_guidance_end: start ({start}) must be below end ({end})")
    if start < 0.0:
        raise ValueError(f"control_guidance_start: must be >= 0, got {start}")
    if end > 1.0:
        raise ValueError(f"control_guidance_end: must be <= 1, got {end}")
    return start, end


def check_control_image(image, prompt_batch: int, name: str = "image") -> None:
    """ValueError naming `name` unless `image` is a PIL image, array, tensor or a list of one kind of them, with
    one image or one per prompt."""
    if image is None:
        raise ValueError(f"{name}: the control image is required (a PIL image, numpy array, torch tensor or a list "
                         "of them)")
    kinds = (PIL.Image.Image, np.ndarray, torch.Tensor)
    items = image if isinstance(image, list) else [image]
    if not items:
        raise ValueError(f"{name}: got an empty list")
    if not isinstance(items[0], kinds) or any(not isinstance(i, type(items[0])) for i in items):
        got = type(items[0]).__name__ if isinstance(image, list) else type(image).__name__
        raise ValueError(f"{name}: expected a PIL image, numpy array, torch tensor or a list of one of these, "
                         f"got {got}")
    count = 1 if isinstance(image, PIL.Image.Image) else len(image)
    if count not in (1, prompt_batch):
        raise ValueError(f"{name}: got {count} control images for {prompt_batch} prompts; give one image, or one "
                         "per prompt")


def prepare_control_image(processor, image, height, width, batch: int, num_images_per_prompt: int, device, dtype,
                          guided: bool, guess_mode: bool) -> torch.Tensor:
    """(B', 3, H, W) in [0, 1], resized to height x width (default: the image's size, rounded down to the
    processor's multiple); one image is repeated to the batch, one per prompt num_images_per_prompt times;
    doubled for the guided [uncond, cond] batch unless in guess mode."""
    image = processor.preprocess(image, height=height, width=width).to(dtype=torch.float32)
    image = image.repeat_interleave(batch if image.shape[0] == 1 else num_images_per_prompt, dim=0)
    image = image.to(device=device, dtype=dtype)
    return torch.cat([image, image]) if guided and not guess_mode else image


def keep_schedule(num_steps: int, start: float, end: float) -> list[float]:
    """1.0 on the steps i whose span [i/n, (i+1)/n] lies inside [start, end], else 0.0 (diffusers' rule)."""
    return [0.0 if i / num_steps < start or (i + 1) / num_steps > end else 1.0 for i in range(num_steps)]


def controlnet_residuals(pipe, controlnet, scheduler, scale: float, keep: list[float], guess_mode: bool,
                         image_key: str = "image"):
    """The `residuals(i, t, x, state)` hook of `denoise`: runs the ControlNet on the step's input and returns the
    UNet's down_block_additional_residuals / mid_block_additional_residual. The control image is read from
    state[image_key], so a step-end callback may replace it."""

    def residuals(i, t, x, state):
        half = guess_mode and pipe.do_classifier_free_guidance
        if half:
            x = scheduler.scale_model_input(state["latents"], t)
            context = state["prompt_embeds"].chunk(2)[1]
        else:
            context = state["prompt_embeds"]
        down, mid = controlnet(x, t, encoder_hidden_states=context, controlnet_cond=state[image_key],
                               conditioning_scale=scale * keep[i], guess_mode=guess_mode, return_dict=False)
        if half:
            down = [torch.cat([torch.zeros_like(d), d]) for d in down]
            mid = torch.cat([torch.zeros_like(mid), mid])
        return {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}

    return residuals
