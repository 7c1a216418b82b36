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
