"""`impasto info PATH`: what a model folder, hub snapshot or checkpoint file contains, or how an image was made.

For a diffusers folder: the pipeline class and, per component, its class, parameter count, weight dtypes,
file sizes and (for schedulers) the main settings. For a single .safetensors/.ckpt file: tensor count,
parameters, dtypes, size and the model family detected from its keys. For a PNG: the prompt and settings of
its A1111 `parameters` text (A1111's "PNG Info"; impasto writes it too).
"""
from __future__ import annotations

import argparse
import json
import os
import struct
from collections import Counter
from pathlib import Path

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth")
SCHEDULER_KEYS = ("prediction_type", "timestep_spacing", "beta_schedule", "use_karras_sigmas", "steps_offset")


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("info", help="show what a model folder or checkpoint file contains",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("path", help="diffusers model folder, hub id (cached), a .safetensors/.ckpt file, or a PNG "
                                "image (its A1111 generation parameters)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=run)
    return p


def safetensors_header(file: Path) -> dict:
    """{name: {"dtype", "shape"}} from a safetensors header, without reading the tensors."""
    with open(file, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise ValueError(f"{file}: not a safetensors file (too short)")
        (n,) = struct.unpack("<Q", raw)
        if n > 100_000_000:
            raise ValueError(f"{file}: not a safetensors file (bad header length)")
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    return header


def _tensor_summary(file: Path) -> dict:
    if file.suffix == ".safetensors":
        entries = {k: (v["dtype"], v["shape"]) for k, v in safetensors_header(file).items()}
    else:
        from impasto.loading.weights import load_file

        entries = {k: (str(t.dtype).replace("torch.", ""), list(t.shape)) for k, t in load_file(file).items()}
    params = 0
    for _, shape in entries.values():
        count = 1
        for d in shape:
            count *= d
        params += count
    dtypes = Counter(d.lower().replace("f32", "float32").replace("f16", "float16").replace("bf16", "bfloat16")
                     for d, _ in entries.values())
    return {"tensors": len(entries), "parameters": params, "dtypes": dict(dtypes)}


def _component(folder: Path, entry) -> dict:
    info = {"library": entry[0], "class": entry[1]}
    if entry[1] is None:
        return info
    files = sorted(f for f in folder.iterdir() if f.suffix in WEIGHT_SUFFIXES) if folder.is_dir() else []
    if files:
        summary = {"tensors": 0, "parameters": 0, "dtypes": Counter()}
        for f in files:
            s = _tensor_summary(f)
            summary["tensors"] += s["tensors"]
            summary["parameters"] += s["parameters"]
            summary["dtypes"].update(s["dtypes"])
        info.update(files=[f.name for f in files], bytes=sum(f.stat().st_size for f in files),
                    tensors=summary["tensors"], parameters=summary["parameters"], dtypes=dict(summary["dtypes"]))
    config = folder / "scheduler_config.json"
    if config.is_file():
        data = json.loads(config.read_text())
        info["settings"] = {k: data[k] for k in SCHEDULER_KEYS if k in data}
    return info


def describe(path: str) -> dict:
    from impasto.loading.hub import resolve_file
    from impasto.models.config import read_json
    from impasto.pipelines.pipeline_utils import resolve_model_path

    local = Path(os.path.expanduser(path))
    if local.is_file() and local.suffix.lower() == ".png":
        return describe_png(local)
    if local.is_file():
        return describe_file(local)
    index_file = resolve_file(resolve_model_path(path), "model_index.json")
    root = index_file.parent
    index = read_json(index_file)
    components = {k: _component(root / k, v) for k, v in index.items()
                  if not k.startswith("_") and isinstance(v, list) and len(v) == 2}
    options = {k: v for k, v in index.items() if not k.startswith("_") and k not in components}
    return {"path": str(root), "pipeline": index.get("_class_name"), "components": components, "options": options}


def describe_png(file: Path) -> dict:
    from .infotext import parse_parameters, read_png_parameters

    prompt, negative, fields = parse_parameters(read_png_parameters(file, "path"))
    return {"path": str(file), "prompt": prompt, "negative_prompt": negative, "parameters": fields}


def describe_file(file: Path) -> dict:
    if file.suffix not in WEIGHT_SUFFIXES:
        raise ValueError(f"path: {file} is not a weights file ({', '.join(WEIGHT_SUFFIXES)}) nor a model folder")
    out = {"path": str(file), "bytes": file.stat().st_size, **_tensor_summary(file)}
    try:
        from impasto.loading.single_file.detect import detect_family
        from impasto.loading.weights import load_file

        out["family"] = detect_family(load_file(file))
    except (ImportError, ValueError, KeyError) as e:
        out["family"] = "unknown (not a full Stable Diffusion checkpoint)" if isinstance(e, ValueError) else "unknown"
    return out


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _count(n: int) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


def format_text(info: dict) -> str:
    if "prompt" in info:
        lines = [f"{info['path']}:", f"  prompt: {info['prompt']}"]
        if info["negative_prompt"]:
            lines.append(f"  negative prompt: {info['negative_prompt']}")
        lines += [f"  {k}: {v}" for k, v in info["parameters"].items()]
        return "\n".join(lines)
    if "components" not in info:
        dtypes = ", ".join(f"{k} x{v}" for k, v in info["dtypes"].items())
        return (f"{info['path']}: single checkpoint file, {info['tensors']} tensors, {_count(info['parameters'])} "
                f"parameters ({dtypes}), {_size(info['bytes'])}, family: {info['family']}")
    lines = [f"{info['path']}: {info['pipeline']}"]
    for name, c in info["components"].items():
        if c["class"] is None:
            lines.append(f"  {name:<18} -")
            continue
        row = f"  {name:<18} {c['class']:<30}"
        if "parameters" in c:
            row += f" {_count(c['parameters']):>8} params  {'/'.join(c['dtypes'])}  {_size(c['bytes'])}"
        if "settings" in c:
            row += "  " + ", ".join(f"{k}={v}" for k, v in c["settings"].items())
        lines.append(row.rstrip())
    for key, value in info["options"].items():
        lines.append(f"  {key} = {value}")
    return "\n".join(lines)


def run(args) -> int:
    info = describe(args.path)
    print(json.dumps(info, indent=2) if args.json else format_text(info))
    return 0
