"""Reading and writing weight files: safetensors (memory-mapped), sharded indexes, and safe torch pickles.

`.bin`/`.ckpt`/`.pt` files are only ever read with `torch.load(weights_only=True)`; the few non-tensor
objects real Stable Diffusion checkpoints contain are allowed by name (see SAFE_GLOBALS), anything else is
refused with a message that says what was found.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

SAFETENSORS_WEIGHTS = "diffusion_pytorch_model.safetensors"
TORCH_WEIGHTS = "diffusion_pytorch_model.bin"


class _CallbackStub:
    """Stands in for pickled objects that real checkpoints carry but that hold no weights
    (pytorch_lightning's ModelCheckpoint callback state, for example)."""

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass


def _stub(module: str, name: str) -> type:
    cls = type(name, (_CallbackStub,), {})
    cls.__module__ = module
    return cls


# What the SD checkpoints in the wild pickle besides tensors: training-callback objects (replaced by stubs).
SAFE_GLOBALS_STUBS = [
    ("pytorch_lightning.callbacks.model_checkpoint", "ModelCheckpoint"),
    ("lightning.pytorch.callbacks.model_checkpoint", "ModelCheckpoint"),
]


def _safe_globals():
    import numpy as np

    allowed = [_stub(m, n) for m, n in SAFE_GLOBALS_STUBS]
    core = getattr(np, "_core", None) or np.core
    allowed += [core.multiarray.scalar, np.dtype]
    try:
        allowed.append(np.dtypes.Float64DType)
        allowed.append(np.dtypes.Int64DType)
    except AttributeError:
        pass
    return [a for a in allowed if a is not None]


def safe_torch_load(file: str | os.PathLike) -> dict:
    """torch.load with weights_only=True and the allow-list above; forbidden pickles raise ValueError, and so
    does a file that is no PyTorch checkpoint at all (neither torch.save's zip archive nor a pickle)."""
    file = Path(file)
    with open(file, "rb") as f:
        head = f.read(4)
    is_zip = _can_mmap(file)
    if not is_zip and not head.startswith(b"\x80"):  # pickles of protocol 2+ start with PROTO (0x80)
        kind = "an HTML page" if head.lstrip()[:1] == b"<" else "empty" if not head else "not a PyTorch checkpoint"
        raise ValueError(f"{file}: not a PyTorch checkpoint (neither a zip archive nor a pickle; the file is "
                         f"{kind}, starting {head!r}); was the download complete, and is it a .ckpt/.pt/.bin?")
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            data = torch.load(file, map_location="cpu", weights_only=True, mmap=is_zip)
    except Exception as e:  # torch raises UnpicklingError / RuntimeError with the offending global in the text
        text = str(e).strip().splitlines()
        why = text[0] if text else type(e).__name__
        for line in text:
            if "GLOBAL" in line or "Unsupported global" in line:
                why = line.strip()
                break
        raise ValueError(
            f"{file}: refused to load: {why}. impasto only unpickles tensors and a small allow-list; "
            "convert the file to .safetensors if you trust it") from None
    if not isinstance(data, dict):
        raise ValueError(f"{file}: expected a dict of tensors, found {type(data).__name__}")
    return data


def _can_mmap(file: Path) -> bool:
    try:
        import zipfile

        return zipfile.is_zipfile(file)
    except OSError:
        return False


def load_safetensors(file: str | os.PathLike, device: str = "cpu") -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    file = Path(file)
    try:
        return load_file(str(file), device=device)
    except SafetensorError as e:
        raise ValueError(f"{file}: not a valid safetensors file ({e}); it may be truncated or corrupt") from None
    except (OSError, RuntimeError) as e:
        raise ValueError(f"{file}: could not be read as safetensors ({e})") from None


def load_file(file: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Any weight file: .safetensors by memory map, else a safe torch.load."""
    file = Path(file)
    if not file.is_file():
        raise FileNotFoundError(f"{file}: no such weight file")
    if file.suffix == ".safetensors":
        return load_safetensors(file)
    if file.suffix == ".json" and ".index." in file.name:
        return load_sharded(file)
    return state_dict_of(safe_torch_load(file))


def state_dict_of(data: dict) -> dict:
    """The weights of a loaded checkpoint: its "state_dict" entry (Lightning / CompVis files), else itself."""
    return data["state_dict"] if isinstance(data.get("state_dict"), dict) else data


def load_sharded(index_file: str | os.PathLike) -> dict[str, torch.Tensor]:
    index_file = Path(index_file)
    try:
        weight_map = json.loads(index_file.read_text(encoding="utf-8"))["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{index_file}: not a valid shard index ({e})") from None
    state = {}
    for shard in sorted(set(weight_map.values())):
        state.update(load_file(index_file.parent / shard))
    missing = sorted(set(weight_map) - set(state))
    if missing:
        raise ValueError(f"{index_file}: keys listed in the index but absent from the shards: {missing[:10]}")
    return state


def save_file(state: dict[str, torch.Tensor], file: str | os.PathLike, safe_serialization: bool = True,
              metadata: dict | None = None) -> None:
    file = Path(file)
    file.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    if safe_serialization:
        from safetensors.torch import save_file as st_save

        st_save(_untie(state), str(file), metadata=metadata or {"format": "pt"})
    else:
        torch.save(state, file)


def _untie(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses tensors that share memory; clone the later ones."""
    seen, out = set(), {}
    for k, v in state.items():
        key = (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape)) if v.numel() else None
        out[k] = v.clone() if key in seen else v
        if key is not None:
            seen.add(key)
    return out


def index_names(base: str, variant: str | None) -> list[str]:
    """Shard index names of a weights file, diffusers' / transformers' first
    (diffusion_pytorch_model.safetensors.index.fp16.json), then diffusion_pytorch_model.fp16.safetensors.index.json
    (what impasto wrote before 2026-11-24)."""
    if not variant:
        return [f"{base}.index.json"]
    return [f"{base}.index.{variant}.json", f"{weight_name(base, variant)}.index.json"]


def weight_name(base: str, variant: str | None) -> str:
    """diffusion_pytorch_model.safetensors + 'fp16' -> diffusion_pytorch_model.fp16.safetensors"""
    if not variant:
        return base
    stem, dot, ext = base.partition(".")
    return f"{stem}.{variant}.{ext}"
