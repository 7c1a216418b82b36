"""Half-precision layers on a CPU without native half kernels compute in float32 (impasto.models.layers):
the same images as the native kernels, to the dtype's rounding."""
import numpy as np
import pytest
import torch

import impasto
from impasto.models import layers
from tiny import make_sd_folder


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_upcast_layers_match_native_kernels(tmp_path, monkeypatch, dtype):
    folder = make_sd_folder(tmp_path)
    pipe = impasto.StableDiffusionPipeline.from_pretrained(folder, torch_dtype=dtype)
    pipe.set_progress_bar_config(disable=True)

    def run(p):
        return p("a red circle", num_inference_steps=2, generator=torch.Generator().manual_seed(0),
                 output_type="np").images

    upcasts = []
    real_upcast = layers.upcast
    monkeypatch.setattr(layers, "upcast", lambda x: upcasts.append(real_upcast(x)) or upcasts[-1])
    monkeypatch.setattr(layers, "slow_cpu_dtypes", lambda: frozenset())
    native = run(pipe)
    assert upcasts and not any(upcasts)
    monkeypatch.setattr(layers, "slow_cpu_dtypes", lambda: frozenset({dtype}))
    upcasts.clear()
    upcast = run(pipe)
    assert upcasts and all(upcasts)  # every Linear / Conv2d call went through float32
    assert pipe.unet.conv_in.weight.dtype == dtype  # the weights keep the dtype the user chose
    # bfloat16 outputs step by 2**-8 near 0.5: the two differ by at most a few steps, by less than one on average
    worst, mean = (0.05, 0.004) if dtype == torch.bfloat16 else (0.005, 5e-4)
    assert np.abs(upcast - native).max() < worst and np.abs(upcast - native).mean() < mean


def test_float32_is_never_upcast():
    x = torch.zeros(2, 3)
    assert not layers.upcast(x) and not layers.upcast(x.double())
