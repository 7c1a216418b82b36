"""LoRA file formats -> one normal form: {component: {module name: LoraWeights | LycorisWeights}}.

Formats read: diffusers/PEFT (`unet.<module>.lora_A.weight` / `lora_B.weight`, alphas in the
`lora_adapter_metadata`), the older diffusers attention-processor names (`...to_q_lora.down.weight`), and
kohya/A1111 (`lora_unet_*`, `lora_te_*`, `lora_te1_*`, `lora_te2_*`: LoRA/LoCon and the LyCORIS LoHa, LoKr and
full networks, read in kohya.py / lycoris.py). Module names are resolved against the real model, so every key
either lands on a layer or is reported by name.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class LoraWeights:
    down: torch.Tensor  # A: (rank, in) or (rank, in, kh, kw)
    up: torch.Tensor  # B: (out, rank) or (out, rank, 1, 1)
    alpha: float | None = None

    @property
    def rank(self) -> int:
        return self.down.shape[0]

    @property
    def scale(self) -> float:
        return 1.0 if self.alpha is None else self.alpha / self.rank

    def delta(self) -> torch.Tensor:
        """The weight update B @ A (times alpha / rank), shaped like the target layer's weight."""
        up, down = self.up.flatten(1).float(), self.down.flatten(1).float()
        d = (up @ down) * self.scale
        return d.reshape(self.up.shape[0], *self.down.shape[1:])


def lora_targets(module: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in module.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}


def parse(state: dict, components: dict[str, nn.Module], metadata: dict | None = None):
    """Returns ({component: {module: LoraWeights | LycorisWeights}}, unmatched keys); ValueError for networks
    that are recognised but not read (DoRA, IA3, GLoRA, ...)."""
    from . import kohya  # kohya.py builds on this module's LoraWeights

    kohya.refuse_unsupported(state)
    if kohya.is_kohya(state):
        return kohya.parse(state, components)
    return _parse_diffusers(state, components, metadata or {})


_DIFFUSERS_PATTERNS = [
    (re.compile(r"^(?P<m>.+)\.lora_A(?:\.[^.]+)?\.weight$"), re.compile(r"\.lora_A((?:\.[^.]+)?)\.weight$"),
     r".lora_B\1.weight"),
    (re.compile(r"^(?P<m>.+)\.lora\.down\.weight$"), re.compile(r"\.lora\.down\.weight$"), ".lora.up.weight"),
    (re.compile(r"^(?P<m>.+)\.lora_linear_layer\.down\.weight$"), re.compile(r"\.lora_linear_layer\.down\.weight$"),
     ".lora_linear_layer.up.weight"),
]
_OLD_PROCESSOR = re.compile(r"\.processor\.(to_q|to_k|to_v|to_out)_lora$")


def _module_name(raw: str) -> str:
    """'...attn1.processor.to_out_lora' -> '...attn1.to_out.0'; text '...q_proj' stays."""
    m = _OLD_PROCESSOR.search(raw)
    if m:
        proj = m.group(1)
        raw = raw[: m.start()] + "." + (proj + ".0" if proj == "to_out" else proj)
    return raw


def _diffusers_keys(state: dict):
    """(down key, component prefix, module path after it, whole module path, up key) for each diffusers/PEFT
    down-projection key of `state`."""
    for key in state:
        for pattern, down_suffix, up_suffix in _DIFFUSERS_PATTERNS:
            m = pattern.match(key)
            if m:
                comp, _, raw = m.group("m").partition(".")
                yield key, comp, raw, m.group("m"), down_suffix.sub(up_suffix, key)
                break


def _parse_diffusers(state, components, metadata):
    out: dict[str, dict[str, LoraWeights]] = {}
    unmatched, used = [], set()
    alphas = _metadata_alphas(metadata)
    for key, comp, raw, whole, up_key in _diffusers_keys(state):
        if comp not in components:  # files saved from a bare UNet have no component prefix
            comp, raw = "unet", whole
        module = _module_name(raw)
        targets = lora_targets(components[comp]) if components.get(comp) is not None else {}
        if module not in targets and "text_model." + module in targets:  # transformers 5 drops text_model.
            module = "text_model." + module
        if module not in targets or up_key not in state:
            unmatched.append(key)
            continue
        alpha = state.get(f"{comp}.{raw}.alpha")
        alpha = float(alpha) if alpha is not None else alphas.get(comp, {}).get(module)
        out.setdefault(comp, {})[module] = LoraWeights(state[key], state[up_key], alpha)
        used.update({key, up_key, f"{comp}.{raw}.alpha"})
    unmatched += [k for k in state if k not in used and k not in unmatched]
    return out, unmatched


def alpha_entries(state: dict, metadata: dict) -> dict:
    """`<component>.<module>.alpha` tensors for the diffusers/PEFT pairs of `state` whose alpha only the file's
    metadata holds, so the state dict alone loads with the same scale."""
    alphas = _metadata_alphas(metadata or {})
    out = {}
    for _, comp, raw, _, _ in _diffusers_keys(state):
        alpha = alphas.get(comp, {}).get(_module_name(raw))
        if alpha is not None and f"{comp}.{raw}.alpha" not in state:
            out[f"{comp}.{raw}.alpha"] = torch.tensor(alpha)
    return out


def _metadata_alphas(metadata: dict) -> dict[str, dict[str, float]]:
    """PEFT adapter configs (`lora_alpha`, `r`, `alpha_pattern`) from diffusers' safetensors metadata."""
    raw = metadata.get("lora_adapter_metadata")
    if not raw:
        return {}
    data = json.loads(raw) if isinstance(raw, str) else raw
    per_comp: dict[str, dict] = {}
    for key, value in data.items():
        comp, _, field = key.partition(".")
        per_comp.setdefault(comp, {})[field] = value
    return {comp: _Alphas(cfg) for comp, cfg in per_comp.items()}


class _Alphas(dict):
    """Looks up a module's alpha from a PEFT LoraConfig dict (default lora_alpha, or alpha_pattern)."""

    def __init__(self, cfg: dict):
        super().__init__()
        self.cfg = cfg

    def get(self, module, default=None):
        for pattern, alpha in (self.cfg.get("alpha_pattern") or {}).items():
            if module == pattern or module.endswith("." + pattern) or re.fullmatch(pattern, module):
                return float(alpha)
        alpha = self.cfg.get("lora_alpha")
        return float(alpha) if alpha is not None else default


def pair_peft(state: dict) -> dict[str, LoraWeights]:
    """{'<module>.lora_A.weight': A, '<module>.lora_B.weight': B} -> {module: LoraWeights} (no model needed)."""
    out = {}
    for key, down in state.items():
        if key.endswith(".lora_A.weight"):
            module = key[: -len(".lora_A.weight")]
            up = state.get(module + ".lora_B.weight")
            if up is None:
                raise ValueError(f"LoRA: {key} has no matching lora_B weight")
            out[module] = LoraWeights(down, up)
    if not out:
        raise ValueError("LoRA: expected keys ending in .lora_A.weight / .lora_B.weight")
    return out


def to_peft_state(adapter: dict[str, dict[str, LoraWeights]]) -> tuple[dict, dict]:
    """Normal form -> (diffusers/PEFT state dict, adapter metadata with per-module alphas)."""
    state, metadata = {}, {}
    for comp, modules in adapter.items():
        if comp.startswith("text_encoder"):
            modules = {n[len("text_model."):] if n.startswith("text_model.") else n: w for n, w in modules.items()}
        ranks = {}
        alphas = {}
        for name, w in modules.items():  # text encoders: no text_model. level, as diffusers writes them now
            state[f"{comp}.{name}.lora_A.weight"] = w.down.contiguous()
            state[f"{comp}.{name}.lora_B.weight"] = w.up.contiguous()
            ranks[name] = w.rank
            alphas[name] = w.alpha if w.alpha is not None else w.rank
        r = max(set(ranks.values()), key=list(ranks.values()).count)
        a = max(set(alphas.values()), key=list(alphas.values()).count)
        metadata.update({
            f"{comp}.r": r, f"{comp}.lora_alpha": a,
            f"{comp}.rank_pattern": {n: v for n, v in ranks.items() if v != r},
            f"{comp}.alpha_pattern": {n: v for n, v in alphas.items() if v != a},
            f"{comp}.target_modules": sorted(modules),
        })
    return state, metadata
