"""A1111's generation parameters ("infotext"), the `parameters` text chunk of its PNGs, written and read.

    a lighthouse at dusk, (oil painting:1.2)
    Negative prompt: blurry, text
    Steps: 25, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 42, Size: 512x512, Clip skip: 2

The prompt may span several lines; "Negative prompt:" starts the negative one; the last line holds
`key: value` fields separated by commas (a value holding commas is quoted). As A1111's
parse_generation_parameters, the last line counts as fields only if it holds at least three.
"""
from __future__ import annotations

import json
import re

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


def read_png_parameters(path) -> str:
    """The `parameters` chunk of an A1111 / impasto PNG (ValueError naming the file if it has none)."""
    import PIL.Image

    try:
        with PIL.Image.open(path) as image:
            text = image.info.get("parameters")
    except OSError as e:
        raise ValueError(f"--params-from: cannot read {path}: {e}") from None
    if not text:
        raise ValueError(f"--params-from: {path} holds no A1111 'parameters' text")
    return text
