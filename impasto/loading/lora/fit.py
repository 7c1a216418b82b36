"""Fitting parsed adapters to their layers before anything is attached: shape checks, and LyCORIS updates
built once (float32) and stored in the layer's dtype on its device."""
from __future__ import annotations

from torch import nn

from .formats import LoraWeights
from .lycoris import DeltaWeights, LycorisWeights


def fit(layer: nn.Module, name: str, w):
    """LoraWeights moved to the layer's device, or a DeltaWeights; ValueError when the update does not fit."""
    shape, dev = tuple(layer.weight.shape), layer.weight.device
    if isinstance(w, LoraWeights):
        got = (w.up.shape[0], *w.down.shape[1:])
        if got != shape or w.up.flatten(1).shape[1] != w.rank:
            raise ValueError(f"LoRA {name}: update of shape {got} (rank {w.rank}, up {tuple(w.up.shape)}) does not fit "
                             f"the layer's weight {shape}; is this LoRA for another model?")
        return LoraWeights(w.down.to(dev), w.up.to(dev), w.alpha)
    if isinstance(w, LycorisWeights):
        try:
            d = w.delta(dev)
        except RuntimeError as e:  # factors whose shapes do not multiply
            raise ValueError(f"LoRA {name}: the {w.kind} factors do not combine ({e})") from None
        if d.numel() != layer.weight.numel():
            raise ValueError(f"LoRA {name}: {w.kind} update of shape {tuple(d.shape)} does not fit the layer's weight "
                             f"{shape}; is this LoRA for another model?")
        w = DeltaWeights(d.reshape(shape), w.bias(), w.kind)
    if tuple(w.weight.shape) != shape:
        raise ValueError(f"LoRA {name}: update of shape {tuple(w.weight.shape)} does not fit the layer's weight "
                         f"{shape}")
    bias = w.bias
    if bias is not None:
        if layer.bias is None or bias.numel() != layer.bias.numel():
            have = "no bias" if layer.bias is None else f"a bias of {layer.bias.numel()}"
            raise ValueError(f"LoRA {name}: a bias update of {bias.numel()} values, and the layer has {have}")
        bias = bias.reshape(layer.bias.shape).to(device=dev, dtype=layer.bias.dtype)
    return DeltaWeights(w.weight.to(device=dev, dtype=layer.weight.dtype), bias, w.kind)


def fit_all(module: nn.Module, weights: dict, label: str = "") -> dict:
    """{name: fitted adapter} for one component; raises before returning when any layer does not fit."""
    layers = dict(module.named_modules())
    return {name: fit(layers[name], f"{label}.{name}" if label else name, w) for name, w in weights.items()}
