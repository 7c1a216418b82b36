"""Attention processors, as diffusers names them: `model.attn_processors`, `model.set_attn_processor(...)`.

impasto's attention layers compute with a built-in backend (PyTorch SDPA, sliced, or xformers: attention.py).
A processor is diffusers' hook for replacing that computation: any callable taking
`(attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs)`. The processors
named after a backend below (AttnProcessor2_0, SlicedAttnProcessor, XFormersAttnProcessor) only select it, so
the built-in path stays. Any other object (one a user wrote, or one of diffusers' own) is called instead of the
built-in computation, with the layer as `attn`: the layer offers the helpers diffusers' Attention does
(`head_to_batch_dim`, `batch_to_head_dim`, `get_attention_scores`, `prepare_attention_mask`, `to_q` ...).
The keys of a UNet's `cross_attention_kwargs` other than "scale" reach such processors, as in diffusers.
"""
from __future__ import annotations

import inspect
import logging

import torch

from .attention import Attention, AttentionBackend, xformers_usable

logger = logging.getLogger("impasto")
__all__ = ["Attention", "AttnProcessor", "AttnProcessor2_0", "SlicedAttnProcessor", "XFormersAttnProcessor",
           "AttentionProcessorMixin"]


class BackendProcessor:
    """A processor that stands for one of the built-in backends; setting it selects that backend."""

    kind = "sdpa"
    slice_size: int | None = None

    def backend(self, attn: Attention) -> AttentionBackend:
        """The backend for `attn` (which keeps its own `upcast` flag); xformers falls back to SDPA where it
        is not usable, with a log line."""
        kind = self.kind
        if kind == "xformers" and not xformers_usable(attn.to_q.weight.device):
            logger.info("xformers is not usable here; attention uses PyTorch SDPA (as memory-efficient)")
            kind = "sdpa"
        return AttentionBackend(kind, self.slice_size, attn.attn_backend.upcast)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        return attn.compute(hidden_states, encoder_hidden_states, attention_mask, backend=self.backend(attn))

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class AttnProcessor2_0(BackendProcessor):
    """PyTorch's scaled-dot-product attention (impasto's default)."""


class SlicedAttnProcessor(BackendProcessor):
    """Attention in chunks of `slice_size` (batch x head) rows."""

    kind = "sliced"

    def __init__(self, slice_size: int):
        if not (isinstance(slice_size, int) and not isinstance(slice_size, bool) and slice_size >= 1):
            raise ValueError(f"slice_size: expected a positive int, got {slice_size!r}")
        self.slice_size = slice_size

    def __repr__(self) -> str:
        return f"SlicedAttnProcessor(slice_size={self.slice_size})"


class XFormersAttnProcessor(BackendProcessor):
    """xformers' memory-efficient kernel (PyTorch SDPA where xformers is not usable)."""

    kind = "xformers"

    def __init__(self, attention_op=None):
        self.attention_op = attention_op


class AttnProcessor:
    """diffusers' classic processor, written with the layer's helpers: the attention probabilities are
    materialised (`attn.get_attention_scores`), so it is the template for processors that read or edit them.
    Equal to the built-in computation within float rounding."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        residual = hidden_states
        spatial = hidden_states.ndim == 4
        if spatial:
            b, c, h, w = hidden_states.shape
            hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
        batch, length, _ = (hidden_states if encoder_hidden_states is None else encoder_hidden_states).shape
        attention_mask = attn.prepare_attention_mask(attention_mask, length, batch)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        query = attn.head_to_batch_dim(attn.to_q(hidden_states))
        key = attn.head_to_batch_dim(attn.to_k(context))
        value = attn.head_to_batch_dim(attn.to_v(context))
        probs = attn.get_attention_scores(query, key, attention_mask)
        hidden_states = attn.batch_to_head_dim(torch.bmm(probs, value))
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if spatial:
            hidden_states = hidden_states.transpose(-1, -2).reshape(b, c, h, w)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def builtin_processor(backend: AttentionBackend) -> BackendProcessor:
    if backend.kind == "sliced" and backend.slice_size:
        return SlicedAttnProcessor(backend.slice_size)
    return XFormersAttnProcessor() if backend.kind == "xformers" else AttnProcessor2_0()


_accepted: dict = {}


def processor_kwargs(processor, kwargs: dict) -> dict:
    """The keys of `kwargs` that `processor` takes (diffusers passes named parameters only, and warns about the
    rest; impasto passes every key to a processor with **kwargs)."""
    key = type(processor)
    if key not in _accepted:
        params = inspect.signature(processor.__call__).parameters.values()
        named = {p.name for p in params if p.kind is not inspect.Parameter.VAR_KEYWORD}
        _accepted[key] = (named, any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params))
    named, takes_any = _accepted[key]
    if takes_any:
        return kwargs
    unused = sorted(k for k in kwargs if k not in named)
    if unused:
        logger.warning("cross_attention_kwargs %s are not expected by %s and will be ignored", unused,
                       type(processor).__name__)
    return {k: v for k, v in kwargs.items() if k in named}


class AttentionProcessorMixin:
    """`attn_processors` / `set_attn_processor` / `set_default_attn_processor` for a model's attention layers.

    Keys are diffusers': "<module path>.processor", e.g. "down_blocks.0.attentions.0.transformer_blocks.0.attn1
    .processor"."""

    def _attention_layers(self) -> list[Attention]:
        return [m for m in self.modules() if isinstance(m, Attention)]

    @property
    def attn_processors(self) -> dict:
        return {f"{name}.processor": m.get_processor() for name, m in self.named_modules()
                if isinstance(m, Attention)}

    def set_attn_processor(self, processor) -> None:
        """One processor for every attention layer, or a dict with one per layer (keys as `attn_processors`)."""
        layers = {f"{name}.processor": m for name, m in self.named_modules() if isinstance(m, Attention)}
        if isinstance(processor, dict):
            if len(processor) != len(layers):
                raise ValueError(f"processor: a dict of {len(processor)} processors was passed, but the model has "
                                 f"{len(layers)} attention layers; pass one per key of attn_processors")
            missing = sorted(set(layers) - set(processor))
            if missing:
                raise ValueError(f"processor: no processor for {missing[:3]} (keys as in attn_processors)")
            for key, layer in layers.items():
                layer.set_processor(processor[key])
        else:
            for layer in layers.values():
                layer.set_processor(processor)

    def set_default_attn_processor(self) -> None:
        """Plain SDPA attention everywhere: unsliced, unfused, no custom processor."""
        for layer in self._attention_layers():
            layer.set_processor(AttnProcessor2_0())
            layer.unfuse_projections()


class ProcessorKwargs:
    """While a forward pass runs, the `cross_attention_kwargs` that go to the custom processors of `layers`."""

    def __init__(self, layers: list[Attention], kwargs: dict):
        self.layers, self.kwargs = layers, kwargs

    def __enter__(self):
        for layer in self.layers:
            layer.call_kwargs = self.kwargs

    def __exit__(self, *exc):
        for layer in self.layers:
            layer.call_kwargs = None
