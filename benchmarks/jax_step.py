"""Steady-state denoising-step time: the compiled Flax UNet vs impasto's torch UNet, same weights, this CPU.

    python benchmarks/jax_step.py [--folder benchmarks/_work/sd15] [--latent 64] [--batch 1] [--repeats 3]

One step is one UNet call on a classifier-free-guidance batch (2 x batch latents of 4 x latent x latent, 77 text
tokens), as both pipelines run it. The Flax UNet is converted in memory from the torch one; the compile time is
reported apart. Uses the SD-1.5-sized folder that benchmarks/bench.py builds when it is there, else a smaller
seeded-random UNet (block_out_channels 64/128/256/256). Prints one line of figures.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SMALL = dict(sample_size=32, block_out_channels=(64, 128, 256, 256), layers_per_block=2, cross_attention_dim=768,
             attention_head_dim=8, norm_num_groups=32)


def torch_unet(folder: Path):
    import torch

    import impasto

    if (folder / "unet" / "config.json").is_file():
        return impasto.UNet2DConditionModel.from_pretrained(folder, subfolder="unet"), folder.name
    torch.manual_seed(0)
    return impasto.UNet2DConditionModel(**SMALL).eval(), "small (64/128/256/256)"


def timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, default=HERE / "_work" / "sd15")
    parser.add_argument("--latent", type=int, default=64, help="latent side (64 = 512 px images)")
    parser.add_argument("--batch", type=int, default=1, help="images per step (the UNet sees twice as many)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import jax
    import numpy as np
    import torch

    from impasto.jax.unet import FlaxUNet2DConditionModel

    unet, name = torch_unet(args.folder)
    n, size = 2 * args.batch, args.latent
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, unet.config.in_channels, size, size)).astype(np.float32)
    ctx = rng.standard_normal((n, 77, unet.config.cross_attention_dim)).astype(np.float32)
    t = np.full((n,), 500, dtype=np.int64)

    with torch.no_grad():
        tx, tt, tc = torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(ctx)
        ref = unet(tx, tt, encoder_hidden_states=tc).sample.numpy()  # warm-up
        torch_times = timed(lambda: unet(tx, tt, encoder_hidden_states=tc), args.repeats)

    model, params = FlaxUNet2DConditionModel.from_torch(unet)
    del unet
    step = jax.jit(lambda p, x, t, c: model.apply({"params": p}, x, t, c).sample)
    jx, jt, jc = jax.device_put(x), jax.device_put(t.astype(np.int32)), jax.device_put(ctx)
    start = time.perf_counter()
    out = step(params, jx, jt, jc).block_until_ready()
    compile_s = time.perf_counter() - start
    flax_times = timed(lambda: step(params, jx, jt, jc).block_until_ready(), args.repeats)

    torch_s, flax_s = statistics.median(torch_times), statistics.median(flax_times)
    diff = float(np.abs(np.asarray(out) - ref).max())
    print(f"jax_step unet={name} latents={n}x4x{size}x{size} cpus={os.cpu_count()} "
          f"torch_threads={torch.get_num_threads()} "
          f"torch={torch_s:.3f}s/step flax={flax_s:.3f}s/step flax/torch={flax_s / torch_s:.2f} "
          f"flax_compile={compile_s:.1f}s max_abs_diff={diff:.1e} jax={jax.__version__} torch={torch.__version__}")


if __name__ == "__main__":
    main()
