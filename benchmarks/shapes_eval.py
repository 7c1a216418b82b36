"""Score the built-in shapes model with the deterministic analyser on held-out world captions.

    python benchmarks/shapes_eval.py [--model impasto/shapes] [-n 200] [--steps 20] [--guidance 7.5 1]

Captions come from a world seed that training never uses (held out); each names colour, shape, position and
background (size in 60%). Each caption's image is analysed and every named attribute scored as a hit or a
miss. Prints a markdown table with one row per guidance scale ("default" = the pipeline's own default).
--oracle diffusers runs the same model folder through diffusers' StableDiffusionPipeline instead.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

HELD_OUT_SEED = 1_000_003
ATTRIBUTES = ("colour", "position", "shape", "size", "background")


def held_out_scenes(n: int):
    from impasto.shapes.world import ShapesWorld

    return ShapesWorld(HELD_OUT_SEED, p_position=1.0, p_background=1.0).scenes(n)


def load(model: str, oracle: str | None, device: str = "cpu"):
    import torch

    if oracle == "diffusers":
        from diffusers import StableDiffusionPipeline

        from impasto.pipelines.pipeline_utils import resolve_model_path

        pipe = StableDiffusionPipeline.from_pretrained(str(resolve_model_path(model)), safety_checker=None)
    else:
        import impasto

        pipe = impasto.StableDiffusionPipeline.from_pretrained(model)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(torch.device(device))


def hit_rates(pairs) -> dict:
    """Hit rate in % per attribute, over the (scene, image) pairs whose caption names it."""
    from impasto.shapes.analyse import analyse, score

    hits = {a: [0, 0] for a in ATTRIBUTES}
    for scene, image in pairs:
        for attribute, hit in score(scene, analyse(image)).items():
            hits[attribute][0] += int(hit)
            hits[attribute][1] += 1
    return {a: round(100.0 * h / n, 1) for a, (h, n) in hits.items() if n}


def evaluate(pipe, scenes, guidance, steps: int = 20, batch: int = 25, seed: int = 0) -> dict:
    """Hit rates for one guidance scale (None = default)."""
    import torch

    kwargs = {} if guidance is None else {"guidance_scale": guidance}

    def pairs():
        for start in range(0, len(scenes), batch):
            chunk = scenes[start:start + batch]
            generator = torch.Generator().manual_seed(seed + start)
            yield from zip(chunk, pipe([s.caption for s in chunk], num_inference_steps=steps, generator=generator,
                                       **kwargs).images)

    return hit_rates(pairs())


def vae_ceiling(pipe, scenes, batch: int = 50) -> dict:
    """Hit rates of the analyser on decode(encode(world image)): the most any UNet could score with this VAE."""
    import numpy as np
    import torch

    from impasto.shapes.train import to_tensor
    from impasto.shapes.world import render

    vae = pipe.vae

    def pairs():
        for start in range(0, len(scenes), batch):
            chunk = scenes[start:start + batch]
            x = to_tensor(np.stack([np.asarray(render(s)) for s in chunk])).to(vae.device, vae.dtype)
            with torch.no_grad():
                y = vae.decode(vae.encode(x).latent_dist.mean).sample
            yield from zip(chunk, y.clamp(-1, 1).add(1).mul(127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy())

    return hit_rates(pairs())


def table_row(name: str, figures: dict, seconds: str = "") -> str:
    return f"| {name} | " + " | ".join(f"{figures.get(a, float('nan')):.1f}" for a in ATTRIBUTES) + f" | {seconds} |"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="impasto/shapes")
    parser.add_argument("-n", type=int, default=200, help="number of held-out captions")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", nargs="+", default=["default", "1"],
                        help="guidance scales to score; 'default' = the pipeline's default")
    parser.add_argument("--oracle", choices=("diffusers",), default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="torch device (noise still comes from a CPU generator)")
    parser.add_argument("--batch", type=int, default=25, help="captions per pipeline call")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    pipe = load(args.model, args.oracle, args.device)
    scenes = held_out_scenes(args.n)
    rows = {"vae round trip (ceiling)": vae_ceiling(pipe, scenes)}
    print(f"| guidance | " + " | ".join(ATTRIBUTES) + " | seconds |")
    print("|---" * (len(ATTRIBUTES) + 2) + "|")
    print(table_row("vae round trip (ceiling)", rows["vae round trip (ceiling)"]))
    for g in args.guidance:
        started = time.time()
        figures = evaluate(pipe, scenes, None if g == "default" else float(g), args.steps, args.batch)
        rows[g] = figures
        print(table_row(g, figures, f"{time.time() - started:.0f}"), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(model=args.model, n=args.n, steps=args.steps, scores=rows), f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
