"""Compare impasto with diffusers on this machine, in one run, and write benchmarks/RESULTS.md.

    python benchmarks/bench.py [--quick] [--skip-build]

Builds SD-1.5-sized seeded-random weights once (benchmarks/_work/sd15, about 4.3 GB), then runs each
measurement in its own process for both libraries. --quick uses fewer repeats and skips the 2048x2048
decodes. Needs the test extra (diffusers, transformers) for the comparison side.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORK = HERE / "_work"
FOLDER = WORK / "sd15"
LIBS = ("impasto", "diffusers")


def run(job, *args, env=None):
    out = subprocess.run([sys.executable, str(HERE / "jobs.py"), job, *map(str, args)], capture_output=True,
                         text=True, env={**os.environ, **(env or {})})
    if out.returncode != 0:
        raise RuntimeError(f"{job} {args} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def build_sd15(folder: Path) -> None:
    """SD-1.5 architecture (860M UNet, 84M VAE, 123M CLIP-L) with seeded random weights, diffusers layout."""
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    sys.path.insert(0, str(HERE.parent / "tests"))
    import tiny

    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8,
                                block_out_channels=(320, 640, 1280, 1280), layers_per_block=2)
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                        down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
                        sample_size=512, norm_num_groups=32)
    te = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                      num_attention_heads=12, max_position_embeddings=77, vocab_size=49408,
                                      hidden_act="quick_gelu", bos_token_id=49406, eos_token_id=49407, pad_token_id=1))
    tok = CLIPTokenizer.from_pretrained(str(tiny.tokenizer_dir()))
    sched = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True,
                          steps_offset=1, set_alpha_to_one=False)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=te, tokenizer=tok, unet=unet, scheduler=sched,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    tiny.save_folder(pipe, folder)


def median_of(n, job, *args):
    runs = [run(job, *args) for _ in range(n)]
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--skip-build", action="store_true")
    ap.add_argument("--out", default=str(HERE / "RESULTS.md"))
    a = ap.parse_args()
    if not (FOLDER / "model_index.json").exists():
        if a.skip_build:
            sys.exit(f"{FOLDER}: missing; run without --skip-build")
        print("building SD-1.5-sized random weights ...", flush=True)
        build_sd15(FOLDER)
    reps = 3 if a.quick else 5
    rows = []

    def add(name, values, unit, floor=None):
        rows.append((name, values, unit, floor))
        print(name, {k: round(v, 3) for k, v in values.items()}, unit, flush=True)

    mm32 = run("matmul", "float32")["flops_per_s"]
    mm16 = run("matmul", "bfloat16", 512)["flops_per_s"]  # CPUs without bf16 instructions are ~100x slower here
    add("import the pipeline class (s)", {lib: median_of(reps, "import", lib)["seconds"] for lib in LIBS}, "s")
    loads = {lib: median_of(2 if a.quick else 3, "load", lib, FOLDER) for lib in LIBS}
    add("load SD-1.5 pipeline (s)", {lib: loads[lib]["seconds"] for lib in LIBS}, "s")
    add("load SD-1.5 pipeline, peak RSS (MB)", {lib: loads[lib]["peak_rss_mb"] for lib in LIBS}, "MB")
    bf16_size = 256 if mm16 > 0.25 * mm32 else 64  # without native bf16 a 256x256 step takes minutes
    for dtype, rate, size in (("float32", mm32, 256), ("bfloat16", mm16, bf16_size)):
        steps = {lib: run("unet_step", lib, FOLDER, dtype, size, (2 if a.quick else 3) if size == 256 else 1)
                 for lib in LIBS}
        floor = steps["impasto"]["flops"] / rate
        add(f"UNet step {size}x{size} CFG {dtype} (s)", {lib: steps[lib]["seconds"] for lib in LIBS}, "s", floor)
    add("generate 256x256, 20 steps (s)", {lib: run("generate", lib, FOLDER, 20, 256)["seconds"] for lib in LIBS}, "s")
    sizes = (1024,) if a.quick else (1024, 2048)
    for size in sizes:
        for tiled in ("0", "1"):
            r = {lib: run("vae_decode", lib, FOLDER, size, tiled) for lib in LIBS}
            label = f"VAE decode {size}x{size}{' tiled' if tiled == '1' else ''}"
            add(f"{label} (s)", {lib: r[lib]["seconds"] for lib in LIBS}, "s")
            add(f"{label}, peak RSS (MB)", {lib: r[lib]["peak_rss_mb"] for lib in LIBS}, "MB")
    write(a.out, rows, mm32, mm16, a.quick)


def write(path, rows, mm32, mm16, quick):
    import torch

    try:
        import diffusers

        dv = diffusers.__version__
    except ImportError:
        dv = "not installed"
    lines = [
        "# Benchmarks: impasto vs diffusers", "",
        f"Run {datetime.date.today()} by `python benchmarks/bench.py{' --quick' if quick else ''}` on "
        f"{platform.machine()} with {os.cpu_count()} CPU cores, Python {platform.python_version()}, "
        f"torch {torch.__version__}, diffusers {dv}. Weights: SD-1.5 architecture, seeded random, float32 on disk.",
        f"Measured matrix-multiply rate (2048^2, 2 threads): float32 {mm32 / 1e9:.1f} GFLOP/s, "
        f"bfloat16 {mm16 / 1e9:.1f} GFLOP/s (512^2). The floor column is the step's FLOPs (counted by "
        "torch.utils.flop_counter) over that rate: the time at which the CPU would be saturated.", "",
        "| measurement | impasto | diffusers | impasto / diffusers | floor |", "|---|---|---|---|---|",
    ]
    for name, v, unit, floor in rows:
        ratio = v["impasto"] / v["diffusers"] if v.get("diffusers") else float("nan")
        fl = f"{floor:.2f} s" if floor else ""
        lines.append(f"| {name} | {v['impasto']:.3f} | {v['diffusers']:.3f} | {ratio:.2f}x | {fl} |")
    Path(path).write_text("\n".join(lines) + "\n")
    print("wrote", path)


if __name__ == "__main__":
    main()
