"""Linear and Conv2d that compute in float32 when half-precision weights sit on a CPU without native
half-precision arithmetic; Embedding that skips its random init on the meta device.

On x86 CPUs with AVX2 but no AVX-512 BF16 / AMX, torch's bfloat16 and float16 matrix products run on a slow
fallback (1.2 GFLOP/s against 138 GFLOP/s in float32 on this project's CPU). There these layers upcast one
layer's weights and the input for the call, multiply with float32 accumulation (what a native bfloat16 kernel
does) and round the output back: the weights stay in the dtype the user chose, outputs agree with the native
kernels to the dtype's rounding, and a step is about twice as fast. CPUs with native support, and GPUs, use
the plain kernels. Parameter names, state dicts and `isinstance(layer, nn.Linear)` are torch.nn's.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

_HALF = (torch.bfloat16, torch.float16)


@functools.lru_cache(maxsize=None)
def slow_cpu_dtypes() -> frozenset:
    """The half dtypes this CPU has no native kernels for (asked of oneDNN once)."""
    slow = set()
    for dtype, probe in ((torch.bfloat16, "_is_mkldnn_bf16_supported"), (torch.float16, "_is_mkldnn_fp16_supported")):
        try:
            if not getattr(torch.ops.mkldnn, probe)():
                slow.add(dtype)
        except (AttributeError, RuntimeError):  # no probe in this torch build: keep the native kernels
            pass
    return frozenset(slow)


def upcast(x: torch.Tensor) -> bool:
    """Whether a layer fed `x` computes in float32 (a half dtype on a CPU without native kernels for it)."""
    return x.dtype in _HALF and x.is_cpu and x.dtype in slow_cpu_dtypes()


def _float(t):
    return None if t is None else t.float()


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    if upcast(x):
        return F.linear(x.float(), weight.float(), _float(bias)).to(x.dtype)
    return F.linear(x, weight, bias)


def conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *args, **kwargs) -> torch.Tensor:
    if upcast(x):
        return F.conv2d(x.float(), weight.float(), _float(bias), *args, **kwargs).to(x.dtype)
    return F.conv2d(x, weight, bias, *args, **kwargs)


class Linear(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


class Conv2d(nn.Conv2d):
    def _conv_forward(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if upcast(x):
            return super()._conv_forward(x.float(), weight.float(), _float(bias)).to(x.dtype)
        return super()._conv_forward(x, weight, bias)


class Embedding(nn.Embedding):
    """nn.Embedding that draws no random init on the meta device, where models are built for loading: torch's
    meta `normal_` imports torch._dynamo, 1.5 s of a 2 s load of the built-in model."""

    def reset_parameters(self) -> None:
        if not self.weight.is_meta:
            super().reset_parameters()


class Checkpointed(nn.Module):
    """A block whose activations are recomputed during backward instead of kept, once its model's
    `enable_gradient_checkpointing()` (diffusers) or `gradient_checkpointing_enable()` (transformers) is called:
    only while training with gradients on; results and gradients are unchanged."""

    gradient_checkpointing = False

    def __call__(self, *args, **kwargs):
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            from torch.utils.checkpoint import checkpoint

            return checkpoint(super().__call__, *args, use_reentrant=False, **kwargs)
        return super().__call__(*args, **kwargs)
