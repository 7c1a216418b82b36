"""Host work of the denoising loop, impasto vs diffusers: what is left per step once the UNet costs nothing.

    python benchmarks/loop_host.py [SCHEDULER ...] [--steps 100] [--reps 7]

Both libraries load the same tiny SD-1.5-like folder; each UNet's forward is replaced by a stub (`sample * 0.5`),
so a step's time is the pipeline's and the scheduler's own Python and tensor-op dispatch: the part a compiled
UNet on a GPU cannot hide when the loop synchronizes every step. Also counts the scalar reads of tensors per
step (`aten._local_scalar_dense`: `.item()`, `bool(t)`, indexing with a tensor, ...), each of which is a
device synchronization when that tensor lives on a GPU. Prints a markdown table; runs in about ten seconds.
"""
from __future__ import annotations

import argparse
import collections
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

SCHEDULERS = ["PNDMScheduler", "EulerDiscreteScheduler", "DPMSolverMultistepScheduler", "DDIMScheduler"]


def pipelines():
    from pipeline_utils import Pair

    pair = Pair(Path(tempfile.mkdtemp(prefix="impasto-loop-")), "sd1")
    for pipe in (pair.ref, pair.mine):
        pipe.unet.forward = lambda sample, t, *args, **kwargs: (sample * 0.5,)
    return {"diffusers": pair.ref, "impasto": pair.mine}


def run(pipe, steps: int, on_step) -> None:
    import torch

    def callback(p, i, t, kwargs):
        on_step(i)
        return {}

    pipe("a cat", num_inference_steps=steps, guidance_scale=7.5, generator=torch.Generator().manual_seed(0),
         callback_on_step_end=callback, output_type="latent")


def step_us(pipe, steps: int) -> float:
    stamps = []
    run(pipe, steps, lambda i: stamps.append(time.perf_counter()))
    return (stamps[-1] - stamps[0]) / (len(stamps) - 1) * 1e6


def scalar_reads(pipe, steps: int = 10) -> int:
    """Scalar reads during one steady-state step (the 6th), counted below the Python API."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        on, n = False, 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if self.on and func.__name__.startswith("_local_scalar_dense"):
                self.n += 1
            return func(*args, **(kwargs or {}))

    mode = Count()

    def on_step(i):
        mode.on = i == 4

    with mode:
        run(pipe, steps, on_step)
    return mode.n


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("schedulers", nargs="*", default=SCHEDULERS)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    import torch

    from pipeline_utils import scheduler_pair

    torch.set_num_threads(args.threads)
    pipes = pipelines()
    config = dict(pipes["diffusers"].scheduler.config)
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, {args.threads} thread(s), {args.steps} steps, "
          f"median of {args.reps} alternating runs")
    print("| scheduler | diffusers us/step | impasto us/step | ratio | scalar reads/step diffusers | impasto |")
    print("|---|---|---|---|---|---|")
    for name in args.schedulers:
        pipes["diffusers"].scheduler, pipes["impasto"].scheduler = scheduler_pair(name, config)
        times = collections.defaultdict(list)
        for _ in range(args.reps):
            for lib, pipe in pipes.items():
                times[lib].append(step_us(pipe, args.steps))
        d, m = (statistics.median(times[lib]) for lib in ("diffusers", "impasto"))
        reads = [scalar_reads(pipes[lib]) for lib in ("diffusers", "impasto")]
        print(f"| {name} | {d:.0f} | {m:.0f} | {m / d:.2f}x | {reads[0]} | {reads[1]} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
