"""AUTOMATIC1111's "Hires. fix": draw at the model's own size, upscale, then repaint at the larger size.

    from impasto import StableDiffusionPipeline, hires_fix
    pipe = StableDiffusionPipeline.from_pretrained(...)
    images = hires_fix(pipe, "a lighthouse at dusk", scale=2, strength=0.7, height=512, width=512).images

The first pass is `pipe(**kwargs)`; its result is upscaled by `scale`, either as latents (`upscaler="latent"`,
A1111's default: bilinear; also "latent-antialiased", "latent-bicubic", "latent-bicubic-antialiased",
"latent-nearest", "latent-nearest-exact") or as decoded images (`"lanczos"`, `"nearest"`, then encoded again);
the second pass is the image-to-image sibling of `pipe` (`from_pipe`: the same components) at `strength`,
with `hires_steps` steps (default: the first pass's; as in diffusers, img2img runs about steps x strength of
them). Both passes take the same prompt arguments. The second pass draws its noise from `hires_generator`, or
else goes on drawing from `generator`. A diffusers recipe of the same steps gives the same images.
"""
from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F

LATENT_UPSCALERS = {"latent": ("bilinear", False), "latent-antialiased": ("bilinear", True),
                    "latent-bicubic": ("bicubic", False), "latent-bicubic-antialiased": ("bicubic", True),
                    "latent-nearest": ("nearest", False), "latent-nearest-exact": ("nearest-exact", False)}
IMAGE_UPSCALERS = ("lanczos", "nearest")
IMG2IMG = {"StableDiffusionPipeline": "StableDiffusionImg2ImgPipeline",
           "StableDiffusionXLPipeline": "StableDiffusionXLImg2ImgPipeline"}
FIRST_PASS_ONLY = ("height", "width", "latents", "timesteps", "sigmas", "denoising_end", "output_type",
                   "return_dict", "callback_on_step_end", "callback_on_step_end_tensor_inputs")


def _check(pipe, scale, strength, hires_steps, upscaler):
    name = type(pipe).__name__
    if name not in IMG2IMG:
        raise ValueError(f"pipe: hires_fix takes a text-to-image pipeline ({', '.join(IMG2IMG)}), got {name}")
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0:
        raise ValueError(f"scale: expected a positive number, got {scale!r}")
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0 < strength <= 1:
        raise ValueError(f"strength: expected a number in (0, 1], got {strength!r}")
    if hires_steps is not None and (isinstance(hires_steps, bool) or not isinstance(hires_steps, int)
                                    or hires_steps < 1):
        raise ValueError(f"hires_steps: expected a positive int or None, got {hires_steps!r}")
    if upscaler not in LATENT_UPSCALERS and upscaler not in IMAGE_UPSCALERS:
        raise ValueError(f"upscaler: expected one of {sorted(LATENT_UPSCALERS) + list(IMAGE_UPSCALERS)}, "
                         f"got {upscaler!r}")


def first_pass_size(pipe, height: int | None, width: int | None) -> tuple[int, int]:
    """(height, width) the first pass draws: as given, else the model's default."""
    if hasattr(pipe, "_default_size"):  # SD 1.x / 2.x: the UNet's sample size
        return pipe._default_size(height, width)
    default = pipe.default_sample_size * pipe.vae_scale_factor  # SDXL
    return height or default, width or default


def target_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """The second pass's size: `scale` times the first's, rounded down to a multiple of 8."""
    h, w = int(height * scale) // 8 * 8, int(width * scale) // 8 * 8
    if h < 8 or w < 8:
        raise ValueError(f"scale: {scale} makes {height}x{width} smaller than 8 pixels")
    return h, w


def upscale_latents(latents: torch.Tensor, size: tuple[int, int], upscaler: str = "latent") -> torch.Tensor:
    mode, antialias = LATENT_UPSCALERS[upscaler]
    if mode.startswith("nearest"):
        return F.interpolate(latents, size=size, mode=mode)
    return F.interpolate(latents, size=size, mode=mode, antialias=antialias)


def upscale_images(images: list, size: tuple[int, int], upscaler: str = "lanczos") -> list:
    import PIL.Image

    method = PIL.Image.Resampling.LANCZOS if upscaler == "lanczos" else PIL.Image.Resampling.NEAREST
    return [image.resize((size[1], size[0]), method) for image in images]


def hires_fix(pipe, prompt=None, *, scale: float = 2.0, strength: float = 0.7, hires_steps: int | None = None,
              upscaler: str = "latent", generator=None, hires_generator=None, output_type: str = "pil",
              return_dict: bool = True, **kwargs):
    """Two passes, as A1111's Hires. fix (module docstring). Returns the second pass's output."""
    import impasto

    _check(pipe, scale, strength, hires_steps, upscaler)
    size = target_size(*first_pass_size(pipe, kwargs.get("height"), kwargs.get("width")), scale)
    latent = upscaler in LATENT_UPSCALERS
    first = pipe(prompt, generator=generator, output_type="latent" if latent else "pil", **kwargs).images
    if latent:
        image = upscale_latents(first, (size[0] // pipe.vae_scale_factor, size[1] // pipe.vae_scale_factor),
                                upscaler)
    else:
        image = upscale_images(first, size, upscaler)
    img2img = getattr(impasto, IMG2IMG[type(pipe).__name__]).from_pipe(pipe)
    img2img.set_progress_bar_config(**(pipe._progress_bar_config or {}))
    accepted = inspect.signature(img2img.__call__).parameters
    second = {k: v for k, v in kwargs.items() if k in accepted and k not in FIRST_PASS_ONLY}
    second["num_inference_steps"] = hires_steps or kwargs.get("num_inference_steps", 50)
    return img2img(prompt, image=image, strength=strength, output_type=output_type, return_dict=return_dict,
                   generator=hires_generator if hires_generator is not None else generator, **second)
