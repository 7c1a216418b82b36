"""Seeded Gaussian noise with diffusers' `randn_tensor` semantics.

- A CPU generator with a non-CPU target device: the noise is drawn on the CPU and moved, so a seed gives
  the same image on every device.
- A list of generators: one sample per generator (the list length must equal the batch size); a list of
  one is the same as that generator alone.
"""
from __future__ import annotations

import torch


def _gen_device(generator) -> torch.device:
    g = generator[0] if isinstance(generator, (list, tuple)) else generator
    return g.device


def randn_tensor(shape, generator=None, device=None, dtype=None, layout=None) -> torch.Tensor:
    """Standard normal noise of `shape` on `device`, reproducible from `generator` (one or a list)."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    layout = layout or torch.strided
    draw_on = device
    if generator is not None:
        gdev = _gen_device(generator)
        if gdev.type != device.type:
            if gdev.type != "cpu":
                raise ValueError(f"generator: a {gdev.type} generator cannot make noise for device {device}; "
                                 "use a CPU generator or one on the target device")
            draw_on = torch.device("cpu")
    if isinstance(generator, (list, tuple)) and len(generator) == 1:
        generator = generator[0]
    if isinstance(generator, (list, tuple)):
        if len(generator) != shape[0]:
            raise ValueError(f"generator: got a list of {len(generator)} generators for a batch of {shape[0]}")
        one = (1, *shape[1:])
        parts = [torch.randn(one, generator=g, device=draw_on, dtype=dtype, layout=layout) for g in generator]
        return torch.cat(parts, dim=0).to(device)
    return torch.randn(tuple(shape), generator=generator, device=draw_on, dtype=dtype, layout=layout).to(device)


def slerp(val: float, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """AUTOMATIC1111's variation-seed blend of two noise tensors of one image, (C, H, W): spherical interpolation
    from `low` (val 0) to `high` (val 1), with A1111's normalisation over dim 1 and its linear fallback when the
    two are nearly parallel (kept as A1111 has it, weights swapped)."""
    low_norm = low / torch.norm(low, dim=1, keepdim=True)
    high_norm = high / torch.norm(high, dim=1, keepdim=True)
    dot = (low_norm * high_norm).sum(1)
    if dot.mean() > 0.9995:
        return low * val + high * (1 - val)
    omega = torch.acos(dot)
    so = torch.sin(omega)
    return (torch.sin((1.0 - val) * omega) / so).unsqueeze(1) * low + (torch.sin(val * omega) / so).unsqueeze(1) * high
