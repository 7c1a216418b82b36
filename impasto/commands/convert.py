"""`impasto convert SRC DST`: a diffusers folder -> one original-layout checkpoint, or the reverse.

A destination ending in .safetensors or .ckpt is written as a single file (CompVis / Stability layout, readable
by A1111 and ComfyUI); any other destination is written as a diffusers folder. Nothing is fetched.
"""
from __future__ import annotations

import argparse
from pathlib import Path

SINGLE = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("convert", help="convert between a diffusers folder and a single checkpoint file",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("source", help="diffusers folder, or .safetensors / .ckpt checkpoint")
    p.add_argument("destination", help="output: a .safetensors / .ckpt file, or a folder")
    p.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default=None,
                   help="store the weights in this precision (default: as loaded, float32)")
    p.add_argument("--prediction-type", choices=("epsilon", "v_prediction"), default=None,
                   help="single file -> folder: the scheduler's prediction type (SD 2.x 768-v needs v_prediction)")
    p.set_defaults(func=run)
    return p


def pipeline_class(path):
    """The pipeline class a checkpoint file is for, from its keys alone (no weights are built)."""
    import impasto

    from ..loading.single_file import keys, read_checkpoint
    from ..loading.single_file.detect import detect_family

    state, configs = read_checkpoint(path)
    family = configs.get("family") or detect_family(state)
    conv_in = state.get(keys.UNET_PREFIX + "input_blocks.0.0.weight")
    inpaint = conv_in is not None and conv_in.shape[1] == 9
    if family == "sdxl_refiner":
        return impasto.StableDiffusionXLImg2ImgPipeline
    if family == "sdxl":
        return impasto.StableDiffusionXLInpaintPipeline if inpaint else impasto.StableDiffusionXLPipeline
    return impasto.StableDiffusionInpaintPipeline if inpaint else impasto.StableDiffusionPipeline


def run(args) -> int:
    import torch

    from ..loading.single_file import save_single_file

    src, dst = Path(args.source), Path(args.destination)
    dtype = getattr(torch, args.dtype) if args.dtype else None
    if src.is_dir():
        if dst.suffix not in SINGLE:
            raise ValueError(f"destination: converting a folder needs a .safetensors or .ckpt file name, got {dst}")
        import impasto

        pipe = impasto.DiffusionPipeline.from_pretrained(src)
        save_single_file(pipe, dst, dtype=dtype)
    elif src.suffix in SINGLE:
        pipe = pipeline_class(src).from_single_file(src, prediction_type=args.prediction_type, dtype=dtype)
        pipe.save_pretrained(dst)
    else:
        raise ValueError(f"source: expected a diffusers folder or a checkpoint file ({', '.join(SINGLE)}), got {src}")
    print(dst)
    return 0
