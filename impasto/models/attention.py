"""The one attention function every model calls: PyTorch SDPA by default, sliced, or xformers if installed.

Inputs are (batch, tokens, heads * head_dim); the output has the shape of `q`. A module selects the
backend by holding an `AttentionBackend` (see `set_backend`); the choice changes memory, not results.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F

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
