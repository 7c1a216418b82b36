"""Applying LoRA adapters to Linear / Conv2d layers without changing their parameters.

Each target layer gets a forward hook that adds sum_i(weight_i * scale * branch_i(x)) over the active adapters;
`scale` is the per-call LoRA scale (`cross_attention_kwargs={"scale": s}`). A low-rank adapter's branch is
up(down(x)) * alpha / rank; a materialised update (LyCORIS LoHa / LoKr / full) is the layer's own operation
(same stride, padding, dilation, groups) with dW, plus its bias delta. dW and the bias delta live on the
layer as non-persistent buffers, so `pipe.to(device / dtype)` and CPU offload move them with the layer, and
state dicts do not see them. Fusing writes the same update into the weight (and bias) and keeps the
original tensors, so unfusing restores them bit for bit.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ...models.layers import conv2d, linear
from .fit import fit_all
from .formats import LoraWeights
from .lycoris import DeltaWeights


@dataclass
class StoredDelta:
    """A materialised update kept as buffers `<key>` (dW) and `<key>_b` (bias delta) on its layer."""
    key: str
    kind: str
    has_bias: bool
    scale = 1.0

    def load(self, layer: nn.Module) -> DeltaWeights:
        return DeltaWeights(layer._buffers[self.key], layer._buffers[self.key + "_b"] if self.has_bias else None,
                            self.kind)


class LoraState:
    """What one layer carries: its adapters, which are active with what weight, and fused backups."""

    def __init__(self, layer: nn.Module):
        self.adapters: dict[str, LoraWeights | StoredDelta] = {}
        self.active: dict[str, float] = {}
        self.scale = 1.0
        self.fused_from: torch.Tensor | None = None
        self.fused_bias_from: torch.Tensor | None = None
        self.stored = 0  # buffers made so far, for unique names
        self.handle = layer.register_forward_hook(_hook)

    def remove(self):
        self.handle.remove()


def _branch(layer: nn.Module, w, x: torch.Tensor) -> torch.Tensor:
    conv = isinstance(layer, nn.Conv2d)
    if isinstance(w, StoredDelta):
        d = w.load(layer)
        weight = d.weight.to(device=x.device, dtype=x.dtype)
        bias = None if d.bias is None else d.bias.to(device=x.device, dtype=x.dtype)
        if conv:
            return conv2d(x, weight, bias, layer.stride, layer.padding, layer.dilation, layer.groups)
        return linear(x, weight, bias)
    down, up = w.down.to(device=x.device, dtype=x.dtype), w.up.to(device=x.device, dtype=x.dtype)  # follows pipe.to()
    if conv:
        h = conv2d(x, down, None, layer.stride, layer.padding, layer.dilation, layer.groups)
        return conv2d(h, up)
    return linear(linear(x, down), up)


def _hook(layer, inputs, output):
    st: LoraState = layer._lora
    if st.fused_from is not None or not st.active or st.scale == 0:
        return output
    x = inputs[0]
    for name, weight in st.active.items():
        w = st.adapters.get(name)
        if w is not None and weight != 0:
            output = output + (weight * st.scale * w.scale) * _branch(layer, w, x)
    return output


def states(module: nn.Module):
    for m in module.modules():
        st = getattr(m, "_lora", None)
        if st is not None:
            yield m, st


def attach(module: nn.Module, adapter_name: str, weights: dict) -> None:
    """Add one adapter's {layer name: LoraWeights | LycorisWeights | DeltaWeights} (checked first, see fit.py)."""
    layers = dict(module.named_modules())
    for name, w in fit_all(module, weights).items():
        layer = layers[name]
        if getattr(layer, "_lora", None) is None:
            layer._lora = LoraState(layer)
        st = layer._lora
        if isinstance(w, DeltaWeights):
            key = f"_lora_delta_{st.stored}"
            st.stored += 1
            layer.register_buffer(key, w.weight, persistent=False)
            if w.bias is not None:
                layer.register_buffer(key + "_b", w.bias, persistent=False)
            w = StoredDelta(key, w.kind, w.bias is not None)
        st.adapters[adapter_name] = w
        st.active[adapter_name] = 1.0


def set_active(module: nn.Module, names: list[str], weights: list) -> None:
    """Activate `names` with `weights`: per adapter a number, or {layer-name prefix: weight} (block_weights)."""
    from .block_weights import layer_weight

    layer_names = {id(m): n for n, m in module.named_modules()}
    for layer, st in states(module):
        st.active = {n: layer_weight(w, layer_names[id(layer)]) for n, w in zip(names, weights) if n in st.adapters}


def set_scale(module: nn.Module, scale: float) -> None:
    for _, st in states(module):
        st.scale = scale


def fuse(module: nn.Module, lora_scale: float = 1.0, adapter_names: list[str] | None = None) -> None:
    with torch.no_grad():
        for layer, st in states(module):
            if st.fused_from is not None:
                continue
            delta = bias = None
            for n in adapter_names or list(st.active):
                if n not in st.adapters:
                    continue
                w = _unpack(layer, st.adapters[n])
                k = st.active.get(n, 1.0) * lora_scale
                d = w.delta() * k
                delta = d if delta is None else delta + d
                if getattr(w, "bias", None) is not None:
                    b = w.bias.float() * k
                    bias = b if bias is None else bias + b
            if delta is None:
                continue
            st.fused_from = layer.weight.detach().clone()
            layer.weight.add_(delta.to(device=layer.weight.device, dtype=layer.weight.dtype))
            if bias is not None:
                st.fused_bias_from = layer.bias.detach().clone()
                layer.bias.add_(bias.to(device=layer.bias.device, dtype=layer.bias.dtype))


def unfuse(module: nn.Module) -> None:
    with torch.no_grad():
        for layer, st in states(module):
            if st.fused_from is not None:
                layer.weight.copy_(st.fused_from)
                st.fused_from = None
            if st.fused_bias_from is not None:
                layer.bias.copy_(st.fused_bias_from)
                st.fused_bias_from = None


def remove(module: nn.Module, adapter_names: list[str] | None = None) -> None:
    unfuse(module)
    for layer, st in list(states(module)):
        for n in list(st.adapters) if adapter_names is None else adapter_names:
            w = st.adapters.pop(n, None)
            st.active.pop(n, None)
            if isinstance(w, StoredDelta):
                layer._buffers.pop(w.key, None)
                layer._buffers.pop(w.key + "_b", None)
        if not st.adapters:
            st.remove()
            del layer._lora


def _unpack(layer: nn.Module, w):
    return w.load(layer) if isinstance(w, StoredDelta) else w


def adapter_names(module: nn.Module) -> set[str]:
    return {n for _, st in states(module) for n in st.adapters}


def active_names(module: nn.Module) -> list[str]:
    seen = []
    for _, st in states(module):
        for n in st.active:
            if n not in seen:
                seen.append(n)
    return seen


def collect(module: nn.Module, adapter_name: str) -> dict:
    """{layer name: LoraWeights | DeltaWeights} of one adapter (DeltaWeights hold the live buffers)."""
    names = {id(m): n for n, m in module.named_modules()}
    return {names[id(layer)]: _unpack(layer, st.adapters[adapter_name]) for layer, st in states(module)
            if adapter_name in st.adapters}
