"""ControlNet guidance for the denoising loop: the control image as the ControlNet takes it, the steps on which
it acts, and the per-step residuals handed to the UNet (`denoise(..., residuals=...)`).

With classifier-free guidance the ControlNet normally sees the same [uncond, cond] batch as the UNet. In guess
mode it sees the conditional half only and the unconditional half of the UNet gets zero residuals, so the
control acts through the guidance difference alone (as diffusers). Several ControlNets (MultiControlNetModel)
each take their own image, scale and guidance window; their residuals are summed.
"""
from __future__ import annotations

import numbers

import numpy as np
import PIL.Image
import torch


def nets(controlnet) -> list:
    """The ControlNets of a ControlNetModel (one) or a MultiControlNetModel (its `nets`)."""
    return list(controlnet.nets) if hasattr(controlnet, "nets") else [controlnet]


def _number(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name}: expected a number, got {value!r}")
    return float(value)


def check_scales(value, count: int, name: str = "controlnet_conditioning_scale") -> list[float]:
    """One scale per ControlNet: a number (for all of them), or with several ControlNets a list of one per net."""
    if isinstance(value, (list, tuple)):
        if count == 1:
            raise ValueError(f"{name}: a single ControlNet takes one number, got a list {list(value)!r} (lists are "
                             "for several ControlNets, a MultiControlNetModel)")
        if len(value) != count:
            raise ValueError(f"{name}: got {len(value)} scales for {count} ControlNets; give one number or one "
                             "per ControlNet")
        return [_number(v, name) for v in value]
    return [_number(value, name)] * count


def _window_number(v, name: str) -> float:
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise ValueError(f"{name}: expected a number in [0, 1], got {v!r}")
    return float(v)


def check_windows(start, end, count: int) -> list[tuple[float, float]]:
    """control_guidance_start/end as one (start, end) per ControlNet: numbers apply to every net, lists give one
    per net (a one-element list with one ControlNet is taken as its element, as diffusers)."""
    lists = {}
    for name, v in (("control_guidance_start", start), ("control_guidance_end", end)):
        if isinstance(v, (list, tuple)):
            if len(v) != count:
                what = "a single ControlNet takes one number" if count == 1 else f"{count} ControlNets take {count}"
                raise ValueError(f"{name}: {what}, got {list(v)!r}")
            lists[name] = [_window_number(x, name) for x in v]
        else:
            lists[name] = [_window_number(v, name)] * count
    out = []
    for start, end in zip(lists["control_guidance_start"], lists["control_guidance_end"]):
        if start >= end:
            raise ValueError(f"control_guidance_start, control_guidance_end: start ({start}) must be below end "
                             f"({end})")
        if start < 0.0:
            raise ValueError(f"control_guidance_start: must be >= 0, got {start}")
        if end > 1.0:
            raise ValueError(f"control_guidance_end: must be <= 1, got {end}")
        out.append((start, end))
    return out


def split_images(image, count: int, name: str = "image") -> list:
    """The control input of each ControlNet. With one net, `image` itself; with several, a list of one entry per
    net, or diffusers' nested form [[net 1 image, net 2 image], ...] with one inner list per prompt."""
    if count == 1:
        return [image]
    if not isinstance(image, (list, tuple)):
        raise ValueError(f"{name}: {count} ControlNets take a list of {count} control images, got "
                         f"{type(image).__name__}")
    image = list(image)
    if any(isinstance(i, (list, tuple)) for i in image):
        if not all(isinstance(i, (list, tuple)) and len(i) == count for i in image):
            raise ValueError(f"{name}: a nested list must hold one list of {count} images (one per ControlNet) "
                             "per prompt")
        image = [list(t) for t in zip(*image)]
    if len(image) != count:
        raise ValueError(f"{name}: got {len(image)} control images for {count} ControlNets; give one per "
                         "ControlNet")
    return image


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


def controlnet_residuals(pipe, controlnet, scheduler, scales: list[float], keeps: list[list[float]],
                         guess_mode: bool, image_key: str = "image", added_cond: bool = False):
    """The `residuals(i, t, x, state)` hook of `denoise`: runs the ControlNet(s) on the step's input and returns
    the UNet's down_block_additional_residuals / mid_block_additional_residual (summed over several nets, by
    MultiControlNetModel). `scales` and `keeps` (the keep_schedule) hold one entry per net. The control image (a
    list of them for several nets) is read from state[image_key], so a step-end callback may replace it. With
    `added_cond` (SDXL) the nets also get state's add_text_embeds / add_time_ids as added_cond_kwargs."""
    several = hasattr(controlnet, "nets")

    def residuals(i, t, x, state):
        half = guess_mode and pipe.do_classifier_free_guidance
        pick = (lambda v: v.chunk(2)[1]) if half else (lambda v: v)
        if half:
            x = scheduler.scale_model_input(state["latents"], t)
        extra = {}
        if added_cond:
            extra["added_cond_kwargs"] = {"text_embeds": pick(state["add_text_embeds"]),
                                          "time_ids": pick(state["add_time_ids"])}
        scale = [s * keep[i] for s, keep in zip(scales, keeps)]
        down, mid = controlnet(x, t, encoder_hidden_states=pick(state["prompt_embeds"]),
                               controlnet_cond=state[image_key], conditioning_scale=scale if several else scale[0],
                               guess_mode=guess_mode, return_dict=False, **extra)
        if half:
            down = [torch.cat([torch.zeros_like(d), d]) for d in down]
            mid = torch.cat([torch.zeros_like(mid), mid])
        return {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}

    return residuals
