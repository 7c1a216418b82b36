"""`impasto generate PROMPT -o out.png`: text-to-image, or image-to-image with --init-image.

The pipeline class comes from the model folder's model_index.json (its image-to-image sibling with
--init-image). Each image is written as PNG with the generation settings in an A1111-style `parameters`
text chunk; image i uses seed S+i, so any image can be made again alone. Paths are printed one per line.
"""
from __future__ import annotations

import argparse
import inspect
import os
import sys
from pathlib import Path

from .infotext import a1111_parameters, apply_parameters
from .networks import add_networks

DEFAULT_MODEL = "impasto/shapes"
DTYPES = ("float32", "bfloat16", "float16")
FLAGS = {"negative_prompt": "--negative", "num_images_per_prompt": "--num-images", "clip_skip": "--clip-skip",
         "long_prompt": "--long-prompt", "guidance_scale": "--guidance", "num_inference_steps": "--steps"}


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("generate", help="make images from a prompt (optionally from an initial image)",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("prompt", nargs="?", default=None, help="what to draw (may come from --params-from)")
    p.add_argument("-o", "--output", required=True,
                   help="output PNG; with --num-images K > 1, files are named NAME-1.png ... NAME-K.png")
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"diffusers model folder, hub id or single .safetensors/.ckpt file (default: {DEFAULT_MODEL}, "
                        "the small built-in model)")
    p.add_argument("--negative", default=None, metavar="TEXT", help="negative prompt (what to avoid)")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default 30)")
    p.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale (default 7.5)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: a random one, printed)")
    p.add_argument("--variation-seed", type=int, default=None, metavar="S",
                   help="A1111's variation seed: blend the seed's noise towards this seed's (image i: S+i)")
    p.add_argument("--variation-strength", type=float, default=None, metavar="F",
                   help="how far towards the variation seed's noise, 0..1 (spherical blend; default 0, off; with no "
                        "--variation-seed a random one is chosen and printed)")
    p.add_argument("--scheduler", default=None, metavar="NAME",
                   help="sampler: an impasto class name (EulerDiscreteScheduler) or an A1111 name "
                        "('DPM++ 2M Karras', 'Euler a'); default: the model's own")
    p.add_argument("--width", type=int, default=None, help="image width, a multiple of 8 (default: the model's)")
    p.add_argument("--height", type=int, default=None, help="image height, a multiple of 8 (default: the model's)")
    p.add_argument("--num-images", type=int, default=1, metavar="K", help="how many images (default 1)")
    p.add_argument("--init-image", default=None, metavar="IMG", help="start from this image (image-to-image)")
    p.add_argument("--strength", type=float, default=None,
                   help="with --init-image: how much to change it, 0..1 (default 0.8)")
    p.add_argument("--mask", default=None, metavar="IMG",
                   help="with --init-image: inpaint; white pixels of this mask are repainted, black ones kept")
    p.add_argument("--refiner", default=None, metavar="PATH",
                   help="SDXL refiner folder: the model runs the first --high-noise-frac of the steps, the refiner "
                        "the rest (ensemble of experts)")
    p.add_argument("--high-noise-frac", type=float, default=None, metavar="F",
                   help="with --refiner: the fraction of the schedule the base model runs, in (0, 1) (default 0.8)")
    p.add_argument("--hires-scale", type=float, default=None, metavar="F",
                   help="A1111's Hires. fix: draw at --width x --height, upscale by F, then repaint at the larger "
                        "size (text-to-image only)")
    p.add_argument("--hires-strength", type=float, default=None, metavar="S",
                   help="with --hires-scale: how much the second pass repaints, in (0, 1] (default 0.7)")
    p.add_argument("--hires-steps", type=int, default=None, metavar="N",
                   help="with --hires-scale: the second pass's steps (default: --steps)")
    p.add_argument("--hires-upscaler", default=None, metavar="NAME",
                   help="with --hires-scale: latent (default), latent-antialiased, latent-bicubic, "
                        "latent-bicubic-antialiased, latent-nearest, latent-nearest-exact, lanczos or nearest")
    p.add_argument("--clip-skip", type=int, default=None, metavar="K",
                   help="skip the text encoder's last K layers (diffusers' clip_skip; A1111's \"Clip skip\" K+1)")
    p.add_argument("--params-from", default=None, metavar="PNG",
                   help="take the prompt and settings from the A1111 'parameters' text of an A1111 or impasto PNG; "
                        "flags given override them")
    p.add_argument("--long-prompt", choices=("truncate", "chunk", "a1111"), default=None,
                   help="prompts over 77 tokens: cut them (default) or encode them in 75-token chunks; a1111: "
                        "chunks and AUTOMATIC1111's syntax, (word:1.2), (word), [word], BREAK (the default with "
                        "--params-from an A1111 image)")
    p.add_argument("--lora", action="append", default=[], metavar="FILE[:W]",
                   help="apply a LoRA file (diffusers/PEFT, kohya or A1111) with weight W (default 1); repeatable")
    p.add_argument("--embedding", action="append", default=[], metavar="FILE[:TOKEN]",
                   help="load a textual-inversion embedding; write TOKEN (default: the file's name without its "
                        "extension, as in A1111) in the prompt; repeatable")
    p.add_argument("--lora-dir", default=None, metavar="DIR",
                   help="resolve A1111's <lora:NAME:W> tags in the prompts to DIR/**/NAME.safetensors (or .pt, .ckpt, "
                        ".bin), applied with weight W and removed from the text")
    p.add_argument("--embeddings-dir", default=None, metavar="DIR",
                   help="load each embedding in DIR whose file name appears as a word in the prompts (A1111's "
                        "embeddings folder)")
    p.add_argument("--dtype", choices=DTYPES, default=None,
                   help="weights' dtype (default: float16 on cuda, float32 on cpu)")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available, else cpu)")
    p.set_defaults(func=run)
    return p


def _resolve(args) -> None:
    if args.params_from is not None:
        apply_parameters(args)
    if args.prompt is None:
        raise ValueError("prompt: give the text to draw (or --params-from PNG)")
    args.steps = 30 if args.steps is None else args.steps
    args.guidance = 7.5 if args.guidance is None else args.guidance
    args.long_prompt = args.long_prompt or "truncate"


def _check(args) -> None:
    if args.steps < 1:
        raise ValueError(f"--steps: expected a positive number, got {args.steps}")
    if args.num_images < 1:
        raise ValueError(f"--num-images: expected a positive number, got {args.num_images}")
    for name in ("width", "height"):
        value = getattr(args, name)
        if value is not None and (value <= 0 or value % 8):
            raise ValueError(f"--{name}: expected a positive multiple of 8, got {value}")
    if args.strength is not None and args.init_image is None:
        raise ValueError("--strength: only used with --init-image")
    if args.strength is not None and not 0.0 <= args.strength <= 1.0:
        raise ValueError(f"--strength: expected a number in [0, 1], got {args.strength}")
    if args.mask is not None and args.init_image is None:
        raise ValueError("--mask: needs --init-image (the picture to inpaint)")
    if args.high_noise_frac is not None and args.refiner is None:
        raise ValueError("--high-noise-frac: only used with --refiner")
    if args.high_noise_frac is not None and not 0.0 < args.high_noise_frac < 1.0:
        raise ValueError(f"--high-noise-frac: expected a fraction in (0, 1), got {args.high_noise_frac}")
    hires = ("hires_strength", "hires_steps", "hires_upscaler")
    for name in [n for n in hires if getattr(args, n) is not None and args.hires_scale is None]:
        raise ValueError(f"--{name.replace('_', '-')}: only used with --hires-scale")
    if args.hires_scale is not None and (args.init_image is not None or args.refiner is not None):
        raise ValueError("--hires-scale: text-to-image only (not with --init-image or --refiner)")
    if args.variation_seed is not None and args.variation_strength is None:
        raise ValueError("--variation-seed: give --variation-strength too (how far to blend, 0..1)")
    if args.variation_strength is not None:
        if not 0.0 <= args.variation_strength <= 1.0:
            raise ValueError(f"--variation-strength: expected a number in [0, 1], got {args.variation_strength}")
        if args.init_image is not None or args.refiner is not None:
            raise ValueError("--variation-strength: text-to-image only (not with --init-image or --refiner)")
    if args.init_image is not None and (args.width or args.height):
        raise ValueError("--width/--height: with --init-image the size is the image's (resize the image instead)")


def pipeline_class(model: str, img2img: bool, inpaint: bool = False):
    """The impasto pipeline class for a model folder / file, switched to its image-to-image sibling if asked."""
    import impasto
    from impasto.loading.hub import resolve_file
    from impasto.models.config import read_json
    from impasto.pipelines.pipeline_utils import resolve_model_path

    path = Path(os.path.expanduser(model))
    if path.is_file():
        from .convert import pipeline_class as checkpoint_class

        name = checkpoint_class(path).__name__
    else:
        index = read_json(resolve_file(resolve_model_path(model), "model_index.json"))
        name = str(index.get("_class_name"))
    base = name.replace("Img2ImgPipeline", "Pipeline").replace("InpaintPipeline", "Pipeline")
    if name.endswith("InpaintPipeline") and not inpaint:
        raise ValueError(f"--mask: {name} is an inpainting model; give --init-image and --mask")
    wanted = base.replace("Pipeline", "InpaintPipeline" if inpaint else "Img2ImgPipeline") if img2img else base
    try:
        return getattr(impasto, wanted)
    except (AttributeError, ImportError):
        if inpaint:
            raise ValueError(f"--mask: the model's pipeline {name} has no inpainting variant in impasto") from None
        if img2img:
            raise ValueError(f"--init-image: the model's pipeline {name} has no image-to-image variant in impasto") \
                from None
        raise ValueError(f"--model: its pipeline {name} is not provided by impasto") from None


def load_pipeline(args, img2img: bool, inpaint: bool = False):
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype_name = args.dtype or ("float16" if device.startswith("cuda") else "float32")
    dtype = getattr(torch, dtype_name)
    cls = pipeline_class(args.model, img2img, inpaint)
    if Path(os.path.expanduser(args.model)).is_file():
        if not hasattr(cls, "from_single_file"):
            raise ValueError(f"--model: {cls.__name__} cannot load single checkpoint files")
        pipe = cls.from_single_file(args.model, dtype=dtype)
    else:
        pipe = cls.from_pretrained(args.model, dtype=dtype)
    if args.scheduler:
        from impasto import scheduler_from_name

        pipe.scheduler = scheduler_from_name(args.scheduler, pipe.scheduler.config)
    return pipe.to(device), device


def read_image(path: str, flag: str = "--init-image"):
    import PIL.Image

    try:
        image = PIL.Image.open(path)
        image.load()
    except (OSError, PIL.Image.DecompressionBombError) as e:
        raise ValueError(f"{flag}: cannot read {path}: {e}") from None
    return image.convert("RGB")


def refine(args, pipe, kwargs: dict, device, seed: int):
    """Ensemble of experts: the model denoises the first --high-noise-frac of the schedule (output_type="latent"),
    the SDXL refiner (its img2img or inpaint pipeline) continues the same schedule from those latents."""
    import torch

    import impasto

    frac = args.high_noise_frac if args.high_noise_frac is not None else 0.8
    accepted = inspect.signature(pipe.__call__).parameters
    if "denoising_end" not in accepted:
        raise ValueError(f"--refiner: {type(pipe).__name__} cannot hand its latents to a refiner (SDXL models can)")
    latents = pipe(**{**kwargs, "denoising_end": frac, "output_type": "latent"}).images
    inpaint = "mask_image" in kwargs
    cls = impasto.StableDiffusionXLInpaintPipeline if inpaint else impasto.StableDiffusionXLImg2ImgPipeline
    refiner = cls.from_pretrained(args.refiner, dtype=pipe.unet.dtype).to(device)
    if args.scheduler:
        refiner.scheduler = impasto.scheduler_from_name(args.scheduler, refiner.scheduler.config)
    n = len(latents)  # one prompt per image: the latents already hold num_images_per_prompt images
    keys = ("guidance_scale", "clip_skip", "long_prompt") + (("mask_image", "height", "width") if inpaint else ())
    extra = {k: kwargs[k] for k in keys if k in kwargs}
    if kwargs.get("negative_prompt") is not None:
        extra["negative_prompt"] = [kwargs["negative_prompt"]] * n
    generators = [torch.Generator("cpu").manual_seed(seed + i) for i in range(n)]
    return refiner(prompt=[kwargs["prompt"]] * n, image=latents, num_inference_steps=args.steps, denoising_start=frac,
                   generator=generators, output_type="pil", **extra)


def variation_latents(pipe, args, seed: int, variation_seed: int):
    """Each image's starting noise, A1111's way: the seed's noise slerped towards the variation seed's."""
    import torch

    from impasto.core.noise import slerp
    from impasto.pipelines.hires_fix import first_pass_size

    height, width = first_pass_size(pipe, args.height, args.width)
    shape = (pipe.unet.config.in_channels, height // pipe.vae_scale_factor, width // pipe.vae_scale_factor)
    out = []
    for i in range(args.num_images):
        noise = torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed + i))
        other = torch.randn(shape, generator=torch.Generator("cpu").manual_seed(variation_seed + i))
        out.append(slerp(args.variation_strength, noise, other))
    return torch.stack(out).to(device=pipe.unet.device, dtype=pipe.unet.dtype)


def hires(args, pipe, kwargs: dict, seed: int):
    """--hires-scale: impasto.hires_fix; the second pass draws fresh noise from the same seeds, as A1111 does."""
    import torch

    from impasto import hires_fix

    if type(pipe).__name__ not in ("StableDiffusionPipeline", "StableDiffusionXLPipeline"):
        raise ValueError(f"--hires-scale: not supported by {type(pipe).__name__}")
    generators = [torch.Generator("cpu").manual_seed(seed + i) for i in range(args.num_images)]
    options = dict(scale=args.hires_scale, strength=0.7 if args.hires_strength is None else args.hires_strength,
                   hires_steps=args.hires_steps, upscaler=args.hires_upscaler or "latent")
    flags = {"scale": "--hires-scale", "strength": "--hires-strength", "hires_steps": "--hires-steps",
             "upscaler": "--hires-upscaler"}
    try:
        return hires_fix(pipe, hires_generator=generators, **options, **kwargs)
    except ValueError as e:  # name the flag, not the Python argument
        name, sep, rest = str(e).partition(":")
        if sep and name in flags:
            raise ValueError(f"{flags[name]}:{rest}") from None
        raise


def output_paths(output: str, k: int) -> list[Path]:
    out = Path(output)
    if out.suffix == "":
        out = out.with_suffix(".png")
    if k == 1:
        return [out]
    return [out.with_name(f"{out.stem}-{i + 1}{out.suffix}") for i in range(k)]


def run(args) -> int:
    import torch
    from PIL.PngImagePlugin import PngInfo

    _resolve(args)
    _check(args)
    img2img = args.init_image is not None
    init = read_image(args.init_image) if img2img else None
    mask = read_image(args.mask, "--mask").convert("L") if args.mask is not None else None
    pipe, device = load_pipeline(args, img2img, mask is not None)
    prompt, negative = add_networks(pipe, args)
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "little") & 0x7FFFFFFF
    if args.seed is None:
        print(f"seed: {seed}", file=sys.stderr)
    generators = [torch.Generator("cpu").manual_seed(seed + i) for i in range(args.num_images)]
    if args.variation_strength is not None and args.variation_seed is None:
        args.variation_seed = int.from_bytes(os.urandom(4), "little") & 0x7FFFFFFF
        print(f"variation seed: {args.variation_seed}", file=sys.stderr)
    kwargs = dict(prompt=prompt, negative_prompt=negative, num_inference_steps=args.steps,
                  guidance_scale=args.guidance, num_images_per_prompt=args.num_images, generator=generators,
                  clip_skip=args.clip_skip, long_prompt=args.long_prompt, output_type="pil")
    if mask is not None:
        kwargs.update(image=init, mask_image=mask, height=init.height // 8 * 8, width=init.width // 8 * 8)
        if args.strength is not None:
            kwargs["strength"] = args.strength
    elif img2img:
        kwargs.update(image=init, strength=args.strength if args.strength is not None else 0.8)
    else:
        kwargs.update(height=args.height, width=args.width)
    if args.variation_strength:  # 0 is the plain seed's noise, as in A1111
        kwargs["latents"] = variation_latents(pipe, args, seed, args.variation_seed)
    accepted = inspect.signature(pipe.__call__).parameters
    for key in [k for k in kwargs if k not in accepted]:
        if kwargs[key] is not None and not (key == "long_prompt" and kwargs[key] == "truncate"):
            raise ValueError(f"{FLAGS.get(key, '--' + key)}: not supported by {type(pipe).__name__}")
        kwargs.pop(key)
    size = None  # the PNG's "Size": the first pass's with Hires. fix, as A1111 writes it
    if args.hires_scale is not None:
        from impasto.pipelines.hires_fix import first_pass_size

        size = first_pass_size(pipe, args.height, args.width)[::-1]
        out = hires(args, pipe, kwargs, seed)
    else:
        out = pipe(**kwargs) if args.refiner is None else refine(args, pipe, kwargs, device, seed)
    images = out.images
    flagged = getattr(out, "nsfw_content_detected", None) or [False] * len(images)
    sampler = args.scheduler or type(pipe.scheduler).__name__
    model = Path(str(args.model)).name or str(args.model)
    paths = output_paths(args.output, len(images))
    for i, (image, path) in enumerate(zip(images, paths)):
        path.parent.mkdir(parents=True, exist_ok=True)
        info = PngInfo()
        info.add_text("parameters", a1111_parameters(args, seed + i, size or image.size, sampler, model, i))
        if path.suffix.lower() == ".png":
            image.save(path, pnginfo=info)
        else:
            image.save(path)
        note = "  (flagged by the safety checker)" if flagged[i] else ""
        print(f"{path}{note}")
    return 0
