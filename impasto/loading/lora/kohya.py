"""kohya/A1111 files (`lora_unet_*`, `lora_te_*`, `lora_te1_*`, `lora_te2_*` module names): LoRA/LoCon
(`lora_down.weight` / `lora_up.weight` / `alpha`) and the LyCORIS LoHa, LoKr and full networks (lycoris.py).

Keys are grouped by module name (the part before the first dot); each module is read by the kind its keys
show. Networks recognised but not read (DoRA, IA3, GLoRA, ...) are refused with their name and a key.
"""
from __future__ import annotations

from torch import nn

from ..single_file import keys as K
from . import lycoris
from .formats import LoraWeights, lora_targets

KOHYA_PREFIX = {"lora_unet_": "unet", "lora_te_": "text_encoder", "lora_te1_": "text_encoder",
                "lora_te2_": "text_encoder_2"}
LORA = ("lora_down.weight", "lora_up.weight", "alpha")


def is_kohya(state: dict) -> bool:
    return any(k.startswith(tuple(KOHYA_PREFIX)) for k in state)


def refuse_unsupported(state: dict) -> None:
    """ValueError naming the format and a key for networks impasto recognises but does not read."""
    kohya = is_kohya(state)
    for key in state:
        if "lora_magnitude_vector" in key or key.endswith(".dora_scale"):
            found = "DoRA"
        elif kohya:
            found = lycoris.REFUSED.get(key.partition(".")[2])
        elif ".hada_" in key or ".lokr_" in key:
            found = "LyCORIS LoHa/LoKr in diffusers/PEFT naming"
        else:
            found = None
        if found:
            raise ValueError(f"LoRA: {found} networks are not supported (key {key!r}); impasto reads LoRA/LoCon, "
                             "LoHa, LoKr and full-difference (diff) networks")


def describe(state: dict) -> str:
    """'kohya LoRA', 'kohya LoHa + LoKr', ... for messages; 'diffusers/PEFT' when not kohya-named."""
    if not is_kohya(state):
        return "diffusers/PEFT"
    kinds = []
    for suffixes in _group(state).values():
        kind = lycoris.kind_of(suffixes) or ("LoRA" if "lora_down.weight" in suffixes else None)
        if kind and kind not in kinds:
            kinds.append(kind)
    return "kohya " + (" + ".join(kinds) or "(no known network)")


def _group(state: dict) -> dict[str, dict[str, str]]:
    """{module name: {suffix: key}}."""
    out: dict[str, dict[str, str]] = {}
    for key in state:
        name, _, suffix = key.partition(".")
        out.setdefault(name, {})[suffix] = key
    return out


def _lookup(component: str, module: nn.Module) -> dict[str, str]:
    names = lora_targets(module)
    table = {n.replace(".", "_"): n for n in names}
    if component == "unet" and hasattr(module, "config"):  # SDXL kohya files use the original (sgm) names
        inverse = {d: o for d, o in K.unet_pairs(module.config)}
        for n in names:
            original = K._rename(n, inverse)
            table.setdefault(original.replace(".", "_"), n)
    return table


def parse(state: dict, components: dict[str, nn.Module]):
    """Returns ({component: {module: LoraWeights | LycorisWeights}}, unmatched keys)."""
    out: dict[str, dict] = {}
    unmatched, lookups = [], {}
    for name, suffixes in _group(state).items():
        kind = lycoris.kind_of(suffixes) or ("LoRA" if "lora_down.weight" in suffixes else None)
        prefix = next((p for p in sorted(KOHYA_PREFIX, key=len, reverse=True) if name.startswith(p)), None)
        comp = KOHYA_PREFIX.get(prefix)
        if kind is None or components.get(comp) is None:
            unmatched += suffixes.values()
            continue
        if comp not in lookups:
            lookups[comp] = _lookup(comp, components[comp])
        target = lookups[comp].get(name[len(prefix):])
        tensors = {s: state[k] for s, k in suffixes.items() if s in (LORA if kind == "LoRA" else lycoris.allowed(kind))}
        if target is None:
            unmatched += suffixes.values()
            continue
        need = [s for s in LORA[:2] if s not in tensors] if kind == "LoRA" else lycoris.missing(kind, tensors)
        if need:
            raise ValueError(f"LoRA: the {kind} network for {name} lacks {', '.join(need)}")
        unmatched += [k for s, k in suffixes.items() if s not in tensors]
        alpha = tensors.pop("alpha", None)
        alpha = None if alpha is None else float(alpha)
        if kind == "LoRA":
            w = LoraWeights(tensors["lora_down.weight"], tensors["lora_up.weight"], alpha)
        else:
            w = lycoris.LycorisWeights(kind, tensors, alpha)
        out.setdefault(comp, {})[target] = w
    return out, unmatched
