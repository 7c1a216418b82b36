"""The one attention function every model calls: PyTorch SDPA by default, sliced, or xformers if installed.

Inputs are (batch, tokens, heads * head_dim); the output has the shape of `q`. A module selects the
backend by holding an `AttentionBackend` (see `set_backend`); the choice changes memory, not results.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .layers import Linear, linear

logger = logging.getLogger("impasto")


@dataclass
class AttentionBackend:
    kind: str = "sdpa"  # "sdpa" | "sliced" | "xformers"
    slice_size: int | None = None  # for "sliced": how many (batch*head) rows per chunk
    upcast: bool = False  # compute in float32 (SD 2.x `upcast_attention`)


DEFAULT = AttentionBackend()


def _split(x: torch.Tensor, heads: int) -> torch.Tensor:
    b, n, c = x.shape
    return x.view(b, n, heads, c // heads).transpose(1, 2)  # b, h, n, d


def attention(q, k, v, heads: int, mask: torch.Tensor | None = None,
              backend: AttentionBackend = DEFAULT, scale: float | None = None) -> torch.Tensor:
    """softmax(q k^T * scale) v over `heads` heads; `mask` is additive (broadcastable to b, h, n_q, n_k)."""
    dtype = q.dtype
    if backend.upcast:
        q, k, v = q.float(), k.float(), v.float()
    b, n, c = q.shape
    qh, kh, vh = _split(q, heads), _split(k, heads), _split(v, heads)
    if mask is not None and mask.dtype != qh.dtype:
        mask = mask.to(qh.dtype)
    if backend.kind == "sliced" and backend.slice_size:
        out = _sliced(qh, kh, vh, mask, backend.slice_size, scale)
    elif backend.kind == "xformers":
        out = _xformers(qh, kh, vh, mask, scale)
    else:
        out = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask, scale=scale)
    return out.transpose(1, 2).reshape(b, n, c).to(dtype)


def _sliced(q, k, v, mask, slice_size: int, scale):
    b, h, n, d = q.shape
    qf, kf, vf = (t.reshape(b * h, t.shape[2], d) for t in (q, k, v))
    if mask is not None:
        mask = mask.expand(b, h, n, k.shape[2]).reshape(b * h, n, k.shape[2])
    out = torch.empty_like(qf)
    for i in range(0, b * h, slice_size):
        j = min(i + slice_size, b * h)
        out[i:j] = F.scaled_dot_product_attention(qf[i:j], kf[i:j], vf[i:j],
                                                  attn_mask=None if mask is None else mask[i:j], scale=scale)
    return out.view(b, h, n, d)


def _xformers(q, k, v, mask, scale):
    import xformers.ops as xops  # only reached when xformers was found usable

    out = xops.memory_efficient_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                          attn_bias=mask, scale=scale)
    return out.transpose(1, 2)


def xformers_usable(device: torch.device) -> bool:
    try:
        import xformers.ops  # noqa: F401
    except Exception:
        return False
    return device.type == "cuda"


def set_backend(module: torch.nn.Module, backend: AttentionBackend) -> None:
    """Give every attention layer under `module` (anything with an `attn_backend` attribute) this backend,
    keeping each layer's own `upcast` flag."""
    for m in module.modules():
        if hasattr(m, "attn_backend"):
            m.attn_backend = AttentionBackend(backend.kind, backend.slice_size, m.attn_backend.upcast)


class Attention(torch.nn.Module):
    """Multi-head attention with diffusers' parameter names (to_q, to_k, to_v, to_out.0, group_norm).

    Self-attention when `encoder_hidden_states` is None, cross-attention otherwise. 4-D inputs (VAE mid
    block) are flattened to tokens and restored; `residual_connection` adds the input back. A custom processor
    (`set_processor`, attention_processor.py) replaces the computation; the helpers it may call are diffusers'.
    """

    # what diffusers' Attention has and these models never use, for processors that look
    spatial_norm = norm_cross = norm_q = norm_k = added_kv_proj_dim = None
    only_cross_attention = False

    def __init__(self, query_dim: int, cross_attention_dim: int | None = None, heads: int = 8, dim_head: int = 64,
                 bias: bool = False, upcast_attention: bool = False, out_bias: bool = True,
                 norm_num_groups: int | None = None, eps: float = 1e-5, residual_connection: bool = False,
                 rescale_output_factor: float = 1.0, upcast_softmax: bool = False):
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.is_cross = cross_attention_dim is not None
        self.residual_connection = residual_connection
        self.rescale_output_factor = rescale_output_factor
        self.group_norm = (torch.nn.GroupNorm(norm_num_groups, query_dim, eps=eps, affine=True)
                           if norm_num_groups is not None else None)
        kv_dim = cross_attention_dim or query_dim
        self.to_q = Linear(query_dim, inner, bias=bias)
        self.to_k = Linear(kv_dim, inner, bias=bias)
        self.to_v = Linear(kv_dim, inner, bias=bias)
        self.to_out = torch.nn.ModuleList([Linear(inner, query_dim, bias=out_bias), torch.nn.Dropout(0.0)])
        self.attn_backend = AttentionBackend(upcast=upcast_attention)
        self.fused = False
        self.scale = dim_head ** -0.5
        self.upcast_softmax = upcast_softmax
        self.inner_dim = inner
        self.processor = None  # a custom processor (attention_processor.py); None = the built-in backend
        self.call_kwargs = None  # cross_attention_kwargs for it, set by the UNet while a forward pass runs

    # fuse_qkv_projections: one matmul for q,k,v (self) or k,v (cross); weights keep their own names
    def fuse_projections(self) -> None:
        self.fused = True

    def unfuse_projections(self) -> None:
        self.fused = False

    def _project(self, x, context):
        # a projection with hooks (a LoRA branch, sequential CPU offload) must run its own forward: stay unfused
        hooked = any(l._forward_hooks or l._forward_pre_hooks for l in (self.to_q, self.to_k, self.to_v))
        if not self.fused or hooked:
            return self.to_q(x), self.to_k(context), self.to_v(context)
        def cat(*ls):
            w = torch.cat([l.weight for l in ls])
            b = None if ls[0].bias is None else torch.cat([l.bias for l in ls])
            return w, b
        if context is x:
            w, b = cat(self.to_q, self.to_k, self.to_v)
            return linear(x, w, b).chunk(3, dim=-1)
        w, b = cat(self.to_k, self.to_v)
        k, v = linear(context, w, b).chunk(2, dim=-1)
        return self.to_q(x), k, v

    def forward(self, hidden_states, encoder_hidden_states=None, attention_mask=None, **cross_attention_kwargs):
        if self.processor is not None:
            from .attention_processor import processor_kwargs

            kwargs = {**(self.call_kwargs or {}), **cross_attention_kwargs}
            return self.processor(self, hidden_states, encoder_hidden_states=encoder_hidden_states,
                                  attention_mask=attention_mask, **processor_kwargs(self.processor, kwargs))
        return self.compute(hidden_states, encoder_hidden_states, attention_mask)

    def compute(self, hidden_states, encoder_hidden_states=None, attention_mask=None, backend=None, extra=None):
        """The built-in computation, with this layer's backend or `backend`. `extra(q, out)` may add to the
        attention output before `to_out` (the IP-Adapter's image branch, models/ip_adapter.py)."""
        residual = hidden_states
        spatial = hidden_states.ndim == 4
        if spatial:
            b, c, h, w = hidden_states.shape
        if self.group_norm is not None:
            hidden_states = self.group_norm(hidden_states)
        if spatial:
            hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        q, k, v = self._project(hidden_states, context)
        mask = None
        if attention_mask is not None:  # (b, n_k) keep-mask or additive bias -> (b, 1, 1, n_k) additive
            mask = attention_mask
            if mask.dtype == torch.bool:
                mask = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill(~mask, float("-inf"))
            while mask.ndim < 4:
                mask = mask.unsqueeze(1)
        out = attention(q, k, v, self.heads, mask=mask, backend=backend or self.attn_backend)
        if extra is not None:
            out = extra(q, out)
        out = self.to_out[0](out)
        if spatial:
            out = out.transpose(1, 2).reshape(b, c, h, w)
        if self.residual_connection:
            out = out + residual
        return out / self.rescale_output_factor if self.rescale_output_factor != 1.0 else out

    # --- processors (diffusers' Attention API) ---
    @property
    def is_cross_attention(self) -> bool:
        return self.is_cross

    @property
    def upcast_attention(self) -> bool:
        return self.attn_backend.upcast

    def get_processor(self):
        """The custom processor, or the built-in one standing for this layer's backend."""
        from .attention_processor import builtin_processor

        return self.processor if self.processor is not None else builtin_processor(self.attn_backend)

    def set_processor(self, processor) -> None:
        from .attention_processor import BackendProcessor

        if isinstance(processor, BackendProcessor):
            self.attn_backend = processor.backend(self)
            processor = None
        elif not callable(processor):
            raise ValueError(f"processor: expected a callable (attn, hidden_states, encoder_hidden_states=None, "
                             f"attention_mask=None, ...), got {type(processor).__name__}")
        if isinstance(self.processor, torch.nn.Module) and not isinstance(processor, torch.nn.Module):
            del self._modules["processor"]  # a processor with weights was a submodule; a plain one is not
        self.processor = processor

    def head_to_batch_dim(self, tensor: torch.Tensor, out_dim: int = 3) -> torch.Tensor:
        """(b, n, heads * d) -> (b * heads, n, d), or (b, heads, n, d) with out_dim=4."""
        if tensor.ndim == 3:
            b, n, c = tensor.shape
        else:
            b, extra, n, c = tensor.shape
            n = n * extra
        tensor = tensor.reshape(b, n, self.heads, c // self.heads).permute(0, 2, 1, 3)
        return tensor.reshape(b * self.heads, n, c // self.heads) if out_dim == 3 else tensor

    def batch_to_head_dim(self, tensor: torch.Tensor) -> torch.Tensor:
        """(b * heads, n, d) -> (b, n, heads * d)."""
        bh, n, d = tensor.shape
        b = bh // self.heads
        return tensor.reshape(b, self.heads, n, d).permute(0, 2, 1, 3).reshape(b, n, self.heads * d)

    def get_attention_scores(self, query, key, attention_mask=None) -> torch.Tensor:
        """softmax(query key^T * scale + attention_mask) over (b * heads, n, d) inputs, in query's dtype."""
        dtype = query.dtype
        if self.upcast_attention:
            query, key = query.float(), key.float()
        scores = torch.bmm(query, key.transpose(-1, -2)) * self.scale
        if attention_mask is not None:
            scores = scores + attention_mask
        if self.upcast_softmax:
            scores = scores.float()
        return scores.softmax(dim=-1).to(dtype)

    def prepare_attention_mask(self, attention_mask, target_length: int, batch_size: int, out_dim: int = 3):
        """An additive (b, 1, keys) mask -> one row per head: (b * heads, 1, keys), or (b, heads, 1, keys) with
        out_dim=4. A mask shorter than `target_length` is padded with zeros, as diffusers."""
        if attention_mask is None:
            return None
        if attention_mask.shape[-1] != target_length:
            attention_mask = torch.nn.functional.pad(attention_mask, (0, target_length), value=0.0)
        if out_dim == 3:
            if attention_mask.shape[0] < batch_size * self.heads:
                attention_mask = attention_mask.repeat_interleave(self.heads, dim=0)
            return attention_mask
        return attention_mask.unsqueeze(1).repeat_interleave(self.heads, dim=1)

    def norm_encoder_hidden_states(self, encoder_hidden_states):
        raise ValueError("norm_encoder_hidden_states: this attention layer has no cross-attention norm (norm_cross)")
