"""One benchmark measurement per process (so peak RSS belongs to that job alone).

    python benchmarks/jobs.py JOB LIB [ARGS...]   ->  prints one JSON line

LIB is "impasto" or "diffusers"; both run on the same seeded-random weights (benchmarks/_work/).
"""
from __future__ import annotations

import json
import resource
import statistics
import sys
import time
from pathlib import Path

WORK = Path(__file__).resolve().parent / "_work"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def lib_module(lib):
    if lib == "impasto":
        import impasto as m
    else:
        import diffusers as m
    return m


def job_import(lib):
    t = time.perf_counter()
    m = lib_module(lib)
    m.StableDiffusionPipeline  # resolve the class (impasto exports lazily)
    return {"seconds": time.perf_counter() - t}


def job_load(lib, folder):
    import torch

    m = lib_module(lib)
    torch.set_num_threads(2)
    t = time.perf_counter()
    pipe = m.StableDiffusionPipeline.from_pretrained(folder, safety_checker=None)
    seconds = time.perf_counter() - t
    del pipe
    return {"seconds": seconds, "peak_rss_mb": peak_rss_mb()}


def _unet(lib, folder, dtype):
    import torch

    m = lib_module(lib)
    return m.UNet2DConditionModel.from_pretrained(folder, subfolder="unet").to(getattr(torch, dtype)).eval()


def job_unet_step(lib, folder, dtype="float32", size="256", repeats="3"):
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    unet = _unet(lib, folder, dtype)
    dt = getattr(torch, dtype)
    h = int(size) // 8
    x = torch.randn(2, 4, h, h, dtype=dt)  # CFG: the batch of two
    ctx = torch.randn(2, 77, unet.config.cross_attention_dim, dtype=dt)
    t = torch.tensor(500)
    with torch.no_grad():
        unet(x, t, ctx)  # warm-up
        with FlopCounterMode(display=False) as fc:
            unet(x, t, ctx)
        flops = fc.get_total_flops()
        times = []
        for _ in range(int(repeats)):
            s = time.perf_counter()
            unet(x, t, ctx)
            times.append(time.perf_counter() - s)
    return {"seconds": statistics.median(times), "flops": flops}


def job_generate(lib, folder, steps="20", size="256"):
    import torch

    m = lib_module(lib)
    pipe = m.StableDiffusionPipeline.from_pretrained(folder, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(0)
    s = time.perf_counter()
    pipe("a photo of a cat", num_inference_steps=int(steps), height=int(size), width=int(size), generator=g,
         output_type="np")
    return {"seconds": time.perf_counter() - s}


def job_vae_decode(lib, folder, size="1024", tiled="0"):
    import torch

    m = lib_module(lib)
    vae = m.AutoencoderKL.from_pretrained(folder, subfolder="vae").eval()
    if tiled == "1":
        vae.enable_tiling()
    z = torch.randn(1, 4, int(size) // 8, int(size) // 8, generator=torch.Generator().manual_seed(0))
    base = peak_rss_mb()
    s = time.perf_counter()
    with torch.no_grad():
        vae.decode(z)
    return {"seconds": time.perf_counter() - s, "peak_rss_mb": peak_rss_mb(), "rss_before_mb": base}


def job_matmul(dtype="float32", n="2048"):
    """The machine's matrix-multiply rate: the floor against which step times are read."""
    import torch

    torch.set_num_threads(2)
    dt = getattr(torch, dtype)
    n = int(n)
    a, b = torch.randn(n, n, dtype=dt), torch.randn(n, n, dtype=dt)
    a @ b
    times = []
    for _ in range(5):
        s = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - s)
    return {"flops_per_s": 2 * n**3 / min(times)}


if __name__ == "__main__":
    job, *args = sys.argv[1:]
    print(json.dumps(globals()[f"job_{job}"](*args)))
