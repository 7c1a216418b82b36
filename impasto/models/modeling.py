"""ModelMixin: from_pretrained / save_pretrained for nn.Modules whose parameter names match the checkpoints.

Models are built on the meta device (no random initialisation), then their tensors are assigned straight
from the memory-mapped file, so loading holds one copy of the weights. Missing keys, shape mismatches and
unreadable files raise errors naming the file; unexpected keys are reported by name.
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import torch
from torch import nn

from ..loading import weights as W
from ..loading.hub import resolve_file
from .config import ConfigMixin

logger = logging.getLogger("impasto")


def parse_dtype(dtype, name: str = "dtype") -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str):
        value = getattr(torch, dtype.replace("torch.", ""), None)
        if isinstance(value, torch.dtype):
            return value
    raise ValueError(f"{name}: expected a torch.dtype or one of 'float32', 'float16', 'bfloat16'; got {dtype!r}")


def parse_size(size) -> int:
    if isinstance(size, int):
        return size
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]i?B)?\s*", str(size), re.I)
    if not m:
        raise ValueError(f"max_shard_size: expected bytes or a string like '5GB', got {size!r}")
    unit = (m.group(2) or "B").upper().replace("I", "")
    return int(float(m.group(1)) * {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9}[unit])


class ModelMixin(nn.Module, ConfigMixin):
    config_name = "config.json"
    # file names tried in order (safetensors first); CLIP-style models override these
    weights_names = (W.SAFETENSORS_WEIGHTS, W.TORCH_WEIGHTS)

    # ---- conveniences -------------------------------------------------------------------------------
    @property
    def dtype(self) -> torch.dtype:
        for p in self.parameters():
            if p.is_floating_point():
                return p.dtype
        return torch.get_default_dtype()

    @property
    def device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        return torch.device("cpu")

    def num_parameters(self, only_trainable: bool = False, exclude_embeddings: bool = False) -> int:
        """Parameter count (diffusers' signature): only those that require grad, and/or without the weights
        of nn.Embedding layers."""
        skip = set()
        if exclude_embeddings:
            skip = {id(m.weight) for m in self.modules() if isinstance(m, nn.Embedding)}
        return sum(p.numel() for p in self.parameters()
                   if (p.requires_grad or not only_trainable) and id(p) not in skip)

    # ---- training -----------------------------------------------------------------------------------
    def _checkpointed_blocks(self) -> list:
        from .layers import Checkpointed

        return [m for m in self.modules() if isinstance(m, Checkpointed)]

    @property
    def _supports_gradient_checkpointing(self) -> bool:
        return bool(self._checkpointed_blocks())

    @property
    def is_gradient_checkpointing(self) -> bool:
        return any(m.gradient_checkpointing for m in self._checkpointed_blocks())

    def enable_gradient_checkpointing(self, gradient_checkpointing_func=None) -> None:
        """Recompute the activations of each resnet / transformer / encoder layer during backward instead of
        keeping them (less memory when training, about a third more compute)."""
        if gradient_checkpointing_func is not None:
            raise ValueError("gradient_checkpointing_func: impasto uses torch.utils.checkpoint (non-reentrant); "
                             "leave it None")
        blocks = self._checkpointed_blocks()
        if not blocks:
            raise ValueError(f"{type(self).__name__} does not support gradient checkpointing")
        for m in blocks:
            m.gradient_checkpointing = True

    def disable_gradient_checkpointing(self) -> None:
        for m in self._checkpointed_blocks():
            m.gradient_checkpointing = False

    # transformers' names, for the text encoders
    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs=None) -> None:
        self.enable_gradient_checkpointing()

    def gradient_checkpointing_disable(self) -> None:
        self.disable_gradient_checkpointing()

    def convert_state_dict(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Hook: rename keys of older or foreign layouts to this module's names (default: unchanged)."""
        return state

    # ---- loading ------------------------------------------------------------------------------------
    @classmethod
    def find_weights(cls, path, subfolder=None, variant=None, use_safetensors=None, **hub) -> Path:
        names = list(cls.weights_names)
        if use_safetensors is True:
            names = [n for n in names if n.endswith(".safetensors")]
        elif use_safetensors is False:
            names = [n for n in names if not n.endswith(".safetensors")]
        tried = []
        for base in names:
            for candidate in (W.weight_name(base, variant), *W.index_names(base, variant)):
                tried.append(candidate)
                found = resolve_file(path, candidate, subfolder, required=False, **hub)
                if found is not None:
                    return found
        where = Path(str(path)) / subfolder if subfolder else Path(str(path))
        raise FileNotFoundError(f"{where}: no weights for {cls.__name__}; looked for {', '.join(tried)}")

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, subfolder: str | None = None, dtype=None,
                        torch_dtype=None, variant: str | None = None, use_safetensors: bool | None = None,
                        local_files_only: bool = False, cache_dir=None, revision=None, token=None,
                        device=None, **config_overrides):
        dtype = parse_dtype(dtype if dtype is not None else torch_dtype)
        for ignored in ("low_cpu_mem_usage", "force_download", "proxies", "output_loading_info", "device_map"):
            config_overrides.pop(ignored, None)
        hub = dict(local_files_only=local_files_only, cache_dir=cache_dir, revision=revision, token=token)
        config = cls.load_config(pretrained_model_name_or_path, subfolder=subfolder, **hub)
        file = cls.find_weights(pretrained_model_name_or_path, subfolder, variant, use_safetensors, **hub)
        state = W.load_file(file)
        model = cls.from_config_and_state(config, state, file, dtype=dtype, **config_overrides)
        if device is not None:
            model.to(device)
        model.register_to_config(_name_or_path=str(pretrained_model_name_or_path))
        return model.eval()

    @classmethod
    def from_single_file(cls, pretrained_model_link_or_path, config=None, **kwargs):
        """Load this model's part of an original-layout (CompVis / Stability) checkpoint, offline."""
        from ..loading.single_file import model_from_single_file

        return model_from_single_file(cls, pretrained_model_link_or_path, config=config, **kwargs)

    @classmethod
    def from_config_and_state(cls, config: dict, state: dict, source="state dict", dtype=None, strict=True,
                              **config_overrides):
        """Build on the meta device and assign the tensors of `state` (the shared core of every loader)."""
        try:
            with torch.device("meta"):
                model = cls.from_config(config, **config_overrides)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{source}: its config does not fit {cls.__name__}: {e}") from None
        state = model.convert_state_dict(dict(state))
        model.assign_state(state, source=source, dtype=dtype, strict=strict)
        return model

    def assign_state(self, state: dict, source="state dict", dtype=None, strict=True):
        expected = self.state_dict(keep_vars=True)
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        if missing and strict:
            raise ValueError(f"{source}: missing {len(missing)} weights for {type(self).__name__}: "
                             f"{', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")
        if unexpected:
            logger.warning("%s: %d unexpected weights not used by %s: %s%s", source, len(unexpected),
                           type(self).__name__, ", ".join(unexpected[:8]), " ..." if len(unexpected) > 8 else "")
        bad = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
               for k, v in expected.items() if k in state and tuple(state[k].shape) != tuple(v.shape)]
        if bad:
            raise ValueError(f"{source}: weight shapes do not match the config of {type(self).__name__}: "
                             + "; ".join(bad[:5]))
        target = dtype or torch.float32
        ready = {}
        for k in expected:
            if k not in state:
                continue
            t = state[k]
            if t.is_floating_point() and t.dtype != target and expected[k].is_floating_point():
                t = t.to(target)
            ready[k] = t
        self.load_state_dict(ready, strict=False, assign=True)
        still_meta = [n for n, t in list(self.named_parameters()) + list(self.named_buffers()) if t.is_meta]
        if still_meta:
            raise ValueError(f"{source}: {type(self).__name__} has no values for {', '.join(still_meta[:8])}")

    # ---- saving -------------------------------------------------------------------------------------
    def save_pretrained(self, save_directory, safe_serialization: bool = True, variant: str | None = None,
                        max_shard_size=None, **kwargs):
        save_directory = Path(save_directory)
        self.save_config(save_directory)
        names = {n for n in self.weights_names if n.endswith(".safetensors" if safe_serialization else ".bin")}
        base = sorted(names)[0]
        state = self.state_dict()
        name = W.weight_name(base, variant)
        if max_shard_size is None:
            W.save_file(state, save_directory / name, safe_serialization)
            return
        limit, shards, current, size = parse_size(max_shard_size), [], {}, 0
        for k, v in state.items():
            n = v.numel() * v.element_size()
            if current and size + n > limit:
                shards.append(current)
                current, size = {}, 0
            current[k] = v
            size += n
        shards.append(current)
        stem, ext = name.rsplit(".", 1)
        weight_map = {}
        for i, shard in enumerate(shards, 1):
            shard_name = f"{stem}-{i:05d}-of-{len(shards):05d}.{ext}"
            W.save_file(shard, save_directory / shard_name, safe_serialization)
            weight_map.update({k: shard_name for k in shard})
        index = {"metadata": {"total_size": sum(v.numel() * v.element_size() for v in state.values())},
                 "weight_map": weight_map}
        index_name = W.index_names(base, variant)[0]
        (save_directory / index_name).write_text(json.dumps(index, indent=2), encoding="utf-8")
