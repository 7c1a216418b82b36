"""The diffusers LoRA API on pipelines: load_lora_weights, save_lora_weights, fuse/unfuse, adapters."""
from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

from .. import weights as W
from ..hub import resolve_file
from . import formats, kohya, layers
from .fit import fit_all
from .lycoris import DeltaWeights

logger = logging.getLogger("impasto")
LORA_WEIGHT_NAME_SAFE = "pytorch_lora_weights.safetensors"
LORA_WEIGHT_NAME = "pytorch_lora_weights.bin"
LORA_COMPONENTS = ("unet", "text_encoder", "text_encoder_2")


def read_lora_file(path_or_dict, weight_name: str | None = None, subfolder: str | None = None, **hub) -> tuple[dict, dict]:
    if isinstance(path_or_dict, dict):
        return dict(path_or_dict), {}
    path = Path(os.path.expanduser(str(path_or_dict)))
    if path.is_file():
        file = path
    else:
        names = [weight_name] if weight_name else [LORA_WEIGHT_NAME_SAFE, LORA_WEIGHT_NAME]
        file = None
        for name in names:
            file = resolve_file(path_or_dict, name, subfolder, required=name == names[-1], **hub)
            if file is not None:
                break
    state = W.load_file(file)
    metadata = {}
    if Path(file).suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(file), framework="pt") as f:
            metadata = f.metadata() or {}
    return state, metadata


class LoraLoaderMixin:
    """Mixed into the SD and SDXL pipelines; adapters live on the unet and text encoders."""

    def _lora_components(self) -> dict:
        return {n: getattr(self, n, None) for n in LORA_COMPONENTS if getattr(self, n, None) is not None}

    @classmethod
    def lora_state_dict(cls, pretrained_model_name_or_path_or_dict, weight_name: str | None = None,
                        return_lora_metadata: bool = False, **kwargs):
        """(state_dict, network_alphas[, metadata]) of a LoRA file, as diffusers' `lora_state_dict` returns them,
        except that keys stay as the file has them (kohya files are not renamed) and alphas that only the file's
        metadata holds are added as `<module>.alpha` entries, so `load_lora_weights(state_dict)` loads the same
        update. network_alphas maps each `.alpha` key to its value (None when there is none)."""
        hub = {k: kwargs.pop(k) for k in ("local_files_only", "cache_dir", "revision", "token") if k in kwargs}
        subfolder = kwargs.pop("subfolder", None)
        kwargs.pop("low_cpu_mem_usage", None)
        kwargs.pop("unet_config", None)
        if kwargs:
            raise ValueError(f"lora_state_dict: unexpected arguments {sorted(kwargs)}")
        state, metadata = read_lora_file(pretrained_model_name_or_path_or_dict, weight_name, subfolder, **hub)
        state.update(formats.alpha_entries(state, metadata))
        alphas = {k: float(v) for k, v in state.items() if k.endswith(".alpha")} or None
        return (state, alphas, metadata or None) if return_lora_metadata else (state, alphas)

    def load_lora_weights(self, pretrained_model_name_or_path_or_dict, adapter_name: str | None = None,
                          weight_name: str | None = None, **kwargs):
        hub = {k: kwargs.pop(k) for k in ("local_files_only", "cache_dir", "revision", "token") if k in kwargs}
        subfolder = kwargs.pop("subfolder", None)
        kwargs.pop("low_cpu_mem_usage", None)
        if kwargs:
            raise ValueError(f"load_lora_weights: unexpected arguments {sorted(kwargs)}")
        state, metadata = read_lora_file(pretrained_model_name_or_path_or_dict, weight_name, subfolder, **hub)
        components = self._lora_components()
        parsed, unmatched = formats.parse(state, components, metadata)
        if unmatched:
            raise ValueError(f"LoRA ({kohya.describe(state)}): {len(unmatched)} keys match no layer of this pipeline: "
                             f"{', '.join(unmatched[:8])}{' ...' if len(unmatched) > 8 else ''}")
        if not parsed:
            raise ValueError("LoRA: the file holds no LoRA weights")
        existing = set().union(*(layers.adapter_names(m) for m in components.values()))
        if adapter_name is None:
            i = 0
            while f"default_{i}" in existing:
                i += 1
            adapter_name = f"default_{i}"
        elif adapter_name in existing:
            raise ValueError(f"adapter_name: {adapter_name!r} is already loaded; pick another name or unload it")
        # check every layer (and build LyCORIS updates) before touching any, so a bad file changes nothing
        parsed = {comp: fit_all(components[comp], weights, comp) for comp, weights in parsed.items()}
        for comp, weights in parsed.items():
            layers.attach(components[comp], adapter_name, weights)
        # diffusers keeps every loaded adapter active with weight 1
        logger.info("loaded LoRA %r into %s", adapter_name, ", ".join(parsed))

    @classmethod
    def save_lora_weights(cls, save_directory, unet_lora_layers=None, text_encoder_lora_layers=None,
                          text_encoder_2_lora_layers=None, weight_name: str | None = None,
                          safe_serialization: bool = True, **kwargs):
        """Write a diffusers/PEFT LoRA file from {module: LoraWeights} dicts or PEFT-style state dicts."""
        adapter = {}
        for comp, given in (("unet", unet_lora_layers), ("text_encoder", text_encoder_lora_layers),
                            ("text_encoder_2", text_encoder_2_lora_layers)):
            if not given:
                continue
            if any(isinstance(v, DeltaWeights) for v in given.values()):
                kinds = sorted({v.kind for v in given.values() if isinstance(v, DeltaWeights)})
                raise ValueError(f"save_lora_weights: {comp} holds {'/'.join(kinds)} layers; only low-rank LoRA "
                                 "(down/up pairs) can be saved, in diffusers' format")
            if all(isinstance(v, formats.LoraWeights) for v in given.values()):
                adapter[comp] = given
            else:
                adapter[comp] = formats.pair_peft(given)
        if not adapter:
            raise ValueError("save_lora_weights: pass at least one of unet_lora_layers, text_encoder_lora_layers")
        state, metadata = formats.to_peft_state(adapter)
        path = Path(save_directory)
        path.mkdir(parents=True, exist_ok=True)
        name = weight_name or (LORA_WEIGHT_NAME_SAFE if safe_serialization else LORA_WEIGHT_NAME)
        import json

        W.save_file(state, path / name, safe_serialization,
                    metadata={"format": "pt", "lora_adapter_metadata": json.dumps(metadata, sort_keys=True)}
                    if safe_serialization else None)
        return path / name

    def lora_layers(self, adapter_name: str | None = None) -> dict:
        """{component: {module: LoraWeights}} for one loaded adapter (default: the first active one); layers
        of LyCORIS LoHa / LoKr / full networks are DeltaWeights (dW itself), which save_lora_weights refuses."""
        adapter_name = adapter_name or (self.get_active_adapters() or [None])[0]
        out = {}
        for comp, m in self._lora_components().items():
            got = layers.collect(m, adapter_name)
            if got:
                out[comp] = got
        return out

    def fuse_lora(self, lora_scale: float = 1.0, components=None, adapter_names=None, **kwargs):
        for comp, m in self._lora_components().items():
            if components is None or comp in components:
                layers.fuse(m, lora_scale, adapter_names)

    def unfuse_lora(self, components=None, **kwargs):
        for comp, m in self._lora_components().items():
            if components is None or comp in components:
                layers.unfuse(m)

    def unload_lora_weights(self):
        for m in self._lora_components().values():
            layers.remove(m)

    def delete_adapters(self, adapter_names):
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        for m in self._lora_components().values():
            layers.remove(m, names)

    def set_adapters(self, adapter_names, adapter_weights=None):
        """Activate adapters with weights, as diffusers: one number for all, one entry per adapter, and each
        entry a number or a dict per component ({"unet": 0.5, "text_encoder": 1.0}; components left out keep 1),
        the UNet's number possibly per block ({"down": 0.5, "mid": 1, "up": {"block_1": [0.2, 0.4, 0.6]}})."""
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        if adapter_weights is None or isinstance(adapter_weights, (int, float, dict)):
            weights = [adapter_weights] * len(names)
        else:
            weights = list(adapter_weights)
        if len(weights) != len(names):
            raise ValueError(f"adapter_weights: expected {len(names)} values (one per adapter), got {len(weights)}")
        components = self._lora_components()
        loaded = set().union(*(layers.adapter_names(m) for m in components.values()))
        missing = [n for n in names if n not in loaded]
        if missing:
            raise ValueError(f"adapter_names: {missing} not loaded; loaded adapters: {sorted(loaded)}")
        for name, w in zip(names, weights):
            if not isinstance(w, dict):
                continue
            if set(w) - set(LORA_COMPONENTS):  # diffusers drops such keys with a warning, which hides typos
                raise ValueError(f"adapter_weights for {name!r}: keys {sorted(set(w) - set(LORA_COMPONENTS))} are not "
                                 f"components; expected some of {list(components)} (UNet block weights go under "
                                 f"'unet': {{'unet': {{'down': ..., 'mid': ..., 'up': ...}}}})")
            if set(w) - set(components):
                logger.warning("adapter_weights for %r: %s ignored, this pipeline has LoRA components %s", name,
                               sorted(set(w) - set(components)), sorted(components))
        for comp, m in components.items():
            layers.set_active(m, names, [self._component_weight(comp, w) for w in weights])

    def _component_weight(self, comp: str, weight):
        from .block_weights import expand_unet_weights

        if isinstance(weight, dict):
            weight = weight.get(comp)  # a per-component dict
        if weight is None:
            return 1.0
        if isinstance(weight, dict):
            if comp != "unet":
                raise ValueError(f"adapter_weights: block weights apply to the unet only, not {comp}")
            return expand_unet_weights(self.unet, weight)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)):
            raise ValueError(f"adapter_weights: expected numbers or dicts, got {weight!r}")
        return float(weight)

    def get_active_adapters(self) -> list[str]:
        out = []
        for m in self._lora_components().values():
            out += [n for n in layers.active_names(m) if n not in out]
        return out

    def get_list_adapters(self) -> dict[str, list[str]]:
        return {c: sorted(layers.adapter_names(m)) for c, m in self._lora_components().items()
                if layers.adapter_names(m)}

    def disable_lora(self):
        for m in self._lora_components().values():
            layers.set_scale(m, 0.0)

    def enable_lora(self):
        for m in self._lora_components().values():
            layers.set_scale(m, 1.0)

    @contextlib.contextmanager
    def lora_scale(self, scale: float | None, components=LORA_COMPONENTS):
        """Within the block, LoRA updates are multiplied by `scale` (cross_attention_kwargs={"scale": s})."""
        if scale is None:
            yield
            return
        mods = [m for c, m in self._lora_components().items() if c in components]
        for m in mods:
            layers.set_scale(m, scale)
        try:
            yield
        finally:
            for m in mods:
                layers.set_scale(m, 1.0)
