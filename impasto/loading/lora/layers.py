"""Applying LoRA adapters to Linear / Conv2d layers without changing their parameters.

Each target layer gets a forward hook that adds sum_i(weight_i * scale * up_i(down_i(x))) over the active
adapters; `scale` is the per-call LoRA scale (`cross_attention_kwargs={"scale": s}`). Fusing writes the
same update into the weight and keeps the original tensor, so unfusing restores it bit for bit.
"""
from __future__ import annotations

import torch
from torch import nn

from ...models.layers import conv2d, linear
from .formats import LoraWeights


class LoraState:
    """What one layer carries: its adapters, which are active with what weight, and fused backups."""

    def __init__(self, layer: nn.Module):
        self.adapters: dict[str, LoraWeights] = {}
        self.active: dict[str, float] = {}
        self.scale = 1.0
        self.fused_from: torch.Tensor | None = None
        self.handle = layer.register_forward_hook(_hook)

    def remove(self):
        self.handle.remove()


def _branch(layer: nn.Module, w: LoraWeights, x: torch.Tensor) -> torch.Tensor:
    down, up = w.down.to(device=x.device, dtype=x.dtype), w.up.to(device=x.device, dtype=x.dtype)  # follows pipe.to()
    if isinstance(layer, nn.Conv2d):
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


def attach(module: nn.Module, adapter_name: str, weights: dict[str, LoraWeights]) -> None:
    layers = dict(module.named_modules())
    for name, w in weights.items():
        layer = layers[name]
        expected = tuple(layer.weight.shape)
        if tuple(w.delta().shape) != expected:
            raise ValueError(f"LoRA for {name}: update of shape {tuple(w.delta().shape)} does not fit the layer's "
                             f"weight {expected}")
    for name, w in weights.items():
        layer = layers[name]
        dev = layer.weight.device
        w = LoraWeights(w.down.to(dev), w.up.to(dev), w.alpha)
        if getattr(layer, "_lora", None) is None:
            layer._lora = LoraState(layer)
        layer._lora.adapters[adapter_name] = w
        layer._lora.active[adapter_name] = 1.0


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
            names = adapter_names or list(st.active)
            delta = None
            for n in names:
                if n in st.adapters:
                    d = st.adapters[n].delta() * (st.active.get(n, 1.0) * lora_scale)
                    delta = d if delta is None else delta + d
            if delta is None:
                continue
            st.fused_from = layer.weight.detach().clone()
            layer.weight.add_(delta.to(device=layer.weight.device, dtype=layer.weight.dtype))


def unfuse(module: nn.Module) -> None:
    with torch.no_grad():
        for layer, st in states(module):
            if st.fused_from is not None:
                layer.weight.copy_(st.fused_from)
                st.fused_from = None


def remove(module: nn.Module, adapter_names: list[str] | None = None) -> None:
    unfuse(module)
    for layer, st in list(states(module)):
        for n in list(st.adapters) if adapter_names is None else adapter_names:
            st.adapters.pop(n, None)
            st.active.pop(n, None)
        if not st.adapters:
            st.remove()
            del layer._lora


def adapter_names(module: nn.Module) -> set[str]:
    return {n for _, st in states(module) for n in st.adapters}


def active_names(module: nn.Module) -> list[str]:
    seen = []
    for _, st in states(module):
        for n in st.active:
            if n not in seen:
                seen.append(n)
    return seen


def collect(module: nn.Module, adapter_name: str) -> dict[str, LoraWeights]:
    names = {id(m): n for n, m in module.named_modules()}
    return {names[id(layer)]: st.adapters[adapter_name] for layer, st in states(module) if adapter_name in st.adapters}
