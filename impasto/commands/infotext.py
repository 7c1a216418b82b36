"""A1111's generation parameters ("infotext"), the `parameters` text chunk of its PNGs, written and read.

    a lighthouse at dusk, (oil painting:1.2)
    Negative prompt: blurry, text
    Steps: 25, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 42, Size: 512x512, Clip skip: 2

The prompt may span several lines; "Negative prompt:" starts the negative one; the last line holds
`key: value` fields separated by commas (a value holding commas is quoted). As A1111's
parse_generation_parameters, the last line counts as fields only if it holds at least three.
`a1111_parameters` writes the chunk of `impasto generate`'s images; `apply_parameters` fills the generate
command's unset flags from one (`--params-from`).
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

_FIELD = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_SIZE = re.compile(r"^(\d+)x(\d+)$")


def quote(value) -> str:
    """A field value as A1111 writes it: quoted (JSON) when it holds a comma, colon or quote."""
    text = str(value)
    return json.dumps(text, ensure_ascii=False) if any(c in text for c in ',:"\n') else text


def format_parameters(prompt: str, negative: str | None, fields: list[tuple[str, object]]) -> str:
    lines = [prompt]
    if negative:
        lines.append(f"Negative prompt: {negative}")
    lines.append(", ".join(f"{k}: {quote(v)}" for k, v in fields if v is not None))
    return "\n".join(lines)


def parse_parameters(text: str) -> tuple[str, str, dict[str, str]]:
    """(prompt, negative prompt, {field: value}); "Size: 512x768" gives "Size-1": "512", "Size-2": "768"."""
    if not isinstance(text, str):
        raise ValueError(f"parameters: expected text, got {type(text).__name__}")
    *lines, last = text.strip().split("\n")
    if len(_FIELD.findall(last)) < 3:
        lines.append(last)
        last = ""
    prompt, negative, in_negative = [], [], False
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            in_negative = True
            line = line[len("Negative prompt:"):].strip()
        (negative if in_negative else prompt).append(line)
    fields = {}
    for key, value in _FIELD.findall(last):
        value = value.strip()
        if len(value) > 1 and value[0] == value[-1] == '"':
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                value = value[1:-1]
        size = _SIZE.match(value)
        if size:
            fields[f"{key}-1"], fields[f"{key}-2"] = size.groups()
        else:
            fields[key] = value
    return "\n".join(prompt), "\n".join(negative), fields


def read_png_parameters(path, flag: str = "--params-from") -> str:
    """The `parameters` chunk of an A1111 / impasto PNG (ValueError naming `flag` and the file if it has none)."""
    import PIL.Image

    try:
        with PIL.Image.open(path) as image:
            text = image.info.get("parameters")
    except OSError as e:
        raise ValueError(f"{flag}: cannot read {path}: {e}") from None
    if not text:
        raise ValueError(f"{flag}: {path} holds no A1111 'parameters' text")
    return text


def a1111_parameters(args, seed: int, size, sampler: str, model: str, index: int = 0) -> str:
    """The text A1111 writes into a PNG's `parameters` chunk (read back by most SD tools and --params-from)."""
    fields = [("Steps", args.steps), ("Sampler", sampler), ("CFG scale", args.guidance), ("Seed", seed),
              ("Size", f"{size[0]}x{size[1]}"), ("Model", model)]
    if args.variation_strength:
        fields += [("Variation seed", args.variation_seed + index),
                   ("Variation seed strength", args.variation_strength)]
    if args.init_image is not None:
        fields.append(("Denoising strength", args.strength if args.strength is not None else 0.8))
    if args.clip_skip is not None:
        fields.append(("Clip skip", args.clip_skip + 1))  # A1111 counts the last layer as 1
    if args.hires_scale is not None:
        fields += [("Denoising strength", 0.7 if args.hires_strength is None else args.hires_strength),
                   ("Hires upscale", args.hires_scale), ("Hires steps", args.hires_steps or args.steps),
                   ("Hires upscaler", args.hires_upscaler or "latent")]
    for flag, key in ((args.lora, "Lora"), (args.embedding, "Embeddings")):
        if flag:
            fields.append((key, ", ".join(Path(v).name for v in flag)))
    fields.append(("Long prompt", args.long_prompt))
    return format_parameters(args.prompt, args.negative, fields)


UPSCALERS = {"Latent": "latent", "Latent (antialiased)": "latent-antialiased", "Latent (bicubic)": "latent-bicubic",
             "Latent (bicubic antialiased)": "latent-bicubic-antialiased", "Latent (nearest)": "latent-nearest",
             "Latent (nearest-exact)": "latent-nearest-exact", "Lanczos": "lanczos", "Nearest": "nearest"}


def apply_parameters(args) -> None:
    """`impasto generate --params-from PNG`: fill what the command line left unset from the PNG's parameters."""
    prompt, negative, fields = parse_parameters(read_png_parameters(args.params_from))
    used = {"Steps", "Sampler", "Schedule type", "CFG scale", "Seed", "Size-1", "Size-2", "Clip skip", "Long prompt",
            "Denoising strength", "Hires upscale", "Hires steps", "Hires upscaler", "Variation seed",
            "Variation seed strength"}

    def number(key, kind):
        try:
            return kind(fields[key]) if key in fields else None
        except ValueError:
            raise ValueError(f"--params-from: {key} {fields[key]!r} is not a number") from None

    args.prompt = prompt if args.prompt is None else args.prompt
    args.negative = (negative or None) if args.negative is None else args.negative
    for name, key, kind in (("steps", "Steps", int), ("guidance", "CFG scale", float), ("seed", "Seed", int),
                            ("hires_scale", "Hires upscale", float), ("hires_steps", "Hires steps", int),
                            ("variation_seed", "Variation seed", int),
                            ("variation_strength", "Variation seed strength", float)):
        if getattr(args, name) is None:
            setattr(args, name, number(key, kind))
    if args.init_image is None and args.width is None and args.height is None:
        args.width, args.height = number("Size-1", int), number("Size-2", int)
    if args.scheduler is None and "Sampler" in fields:
        schedule = fields.get("Schedule type", "Automatic")
        args.scheduler = fields["Sampler"] + (f" {schedule}" if schedule not in ("Automatic", "") else "")
    skip = number("Clip skip", int)
    if args.clip_skip is None and skip is not None and skip > 1:
        args.clip_skip = skip - 1
    strength = number("Denoising strength", float)
    if args.hires_scale is not None and args.hires_strength is None:
        args.hires_strength = strength
    elif args.init_image is not None and args.strength is None:
        args.strength = strength
    if args.hires_scale is not None and args.hires_upscaler is None and "Hires upscaler" in fields:
        name = fields["Hires upscaler"]
        args.hires_upscaler = UPSCALERS.get(name, name)
    if args.long_prompt is None:
        args.long_prompt = fields.get("Long prompt", "a1111")  # without the field, A1111 made the image
    ignored = sorted(k for k in fields if k not in used)
    if ignored:
        print(f"--params-from: not applied: {', '.join(ignored)}", file=sys.stderr)
