"""Kohya-named LyCORIS files from random factors, and the update each layer should get, written out by hand
from the formulas (A1111's extensions-builtin/Lora/network_hada.py / network_lokr.py, LyCORIS, ComfyUI)."""
import math

import torch


def kron(a, b):
    """Block (i, j) of the result is a[i, j] * b (b 2-d or 4-d)."""
    extra = b.dim() - 2
    out = a.reshape(a.shape[0], 1, a.shape[1], 1, *[1] * extra) * b.reshape(1, b.shape[0], 1, *b.shape[1:])
    return out.reshape(a.shape[0] * b.shape[0], a.shape[1] * b.shape[1], *b.shape[2:])


def tucker(t, a, b):
    """sum_ij t[i, j, k, l] a[i, p] b[j, r] -> [p, r, k, l]."""
    return (a.T @ t.permute(2, 3, 0, 1) @ b).permute(2, 3, 0, 1)


def loha(shape, g, rank, alpha=None, use_tucker=False):
    rnd = lambda *s: torch.randn(*s, generator=g) * 0.35  # noqa: E731
    t = {}
    for i in "12":
        if use_tucker:
            t.update({f"hada_t{i}": rnd(rank, rank, *shape[2:]), f"hada_w{i}_a": rnd(rank, shape[0]),
                      f"hada_w{i}_b": rnd(rank, shape[1])})
        else:
            t.update({f"hada_w{i}_a": rnd(shape[0], rank), f"hada_w{i}_b": rnd(rank, math.prod(shape[1:]))})
    if use_tucker:
        d = tucker(t["hada_t1"], t["hada_w1_a"], t["hada_w1_b"]) * tucker(t["hada_t2"], t["hada_w2_a"], t["hada_w2_b"])
    else:
        d = (t["hada_w1_a"] @ t["hada_w1_b"]) * (t["hada_w2_a"] @ t["hada_w2_b"])
    if alpha is not None:
        t["alpha"] = torch.tensor(alpha)
    return t, d.reshape(shape) * (alpha / rank if alpha is not None else 1.0), None


def lokr(shape, g, w1, rank1=None, rank2=None, alpha=None, use_tucker=False):
    """w1 (a, b) full or of rank `rank1`; w2 = (out / a, in / b[, kh, kw]) full or of rank `rank2`."""
    rnd = lambda *s: torch.randn(*s, generator=g) * 0.3  # noqa: E731
    c, d = shape[0] // w1[0], shape[1] // w1[1]
    t = {}
    if rank1:
        t["lokr_w1_a"], t["lokr_w1_b"] = rnd(w1[0], rank1), rnd(rank1, w1[1])
        m1 = t["lokr_w1_a"] @ t["lokr_w1_b"]
    else:
        m1 = t["lokr_w1"] = rnd(*w1)
    if use_tucker:
        t["lokr_t2"], t["lokr_w2_a"], t["lokr_w2_b"] = rnd(rank2, rank2, *shape[2:]), rnd(rank2, c), rnd(rank2, d)
        m2 = tucker(t["lokr_t2"], t["lokr_w2_a"], t["lokr_w2_b"])
    elif rank2:
        t["lokr_w2_a"], t["lokr_w2_b"] = rnd(c, rank2), rnd(rank2, d * math.prod(shape[2:]))
        m2 = t["lokr_w2_a"] @ t["lokr_w2_b"]
    else:
        m2 = t["lokr_w2"] = rnd(c, d, *shape[2:])
    rank = rank2 or rank1  # alpha counts only when a factor is low-rank; w2's rank first
    scale = alpha / rank if alpha is not None and rank else 1.0
    if alpha is not None:
        t["alpha"] = torch.tensor(alpha)
    return t, kron(m1, m2).reshape(shape) * scale, None


def full(shape, g, bias=False):
    t = {"diff": torch.randn(*shape, generator=g) * 0.05}
    if bias:
        t["diff_b"] = torch.randn(shape[0], generator=g) * 0.05
    return t, t["diff"], t.get("diff_b")


def build(pipe, spec, prefixes, seed=0):
    """(kohya state dict, {(component, module): (dW, bias delta)}) for one list of CASES."""
    g = torch.Generator().manual_seed(seed)
    state, expect = {}, {}
    for comp, name, kind, kw in spec:
        layer = dict(getattr(pipe, comp).named_modules())[name]
        tensors, d, b = kind(tuple(layer.weight.shape), g, **kw)
        key = prefixes[comp] + name.replace(".", "_")
        state.update({f"{key}.{s}": v for s, v in tensors.items()})
        expect[comp, name] = (d, b)
    return state, expect
