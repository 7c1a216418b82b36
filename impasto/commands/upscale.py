"""`impasto upscale IMAGE -o out.png --model PATH [--steps N] [--seed S]`: 4x latent diffusion super-resolution.

Images larger than the UNet's `sample_size` (the low-resolution size the model was trained on) are denoised in
overlapping tiles whose predictions are blended every step, then decoded in tiles, so memory stays bounded.
The image is padded (edge pixels repeated) to a size the UNet accepts and the result is cropped back, so the
output is exactly `scale x` the input size.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

logger = logging.getLogger("impasto")


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("upscale", help="4x super-resolution with an LDM upscaler (tiled for large images)",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("image", help="input image file")
    p.add_argument("-o", "--output", required=True, help="output image file (PNG recommended)")
    p.add_argument("--model", required=True,
                   help="LDMSuperResolutionPipeline folder or hub id (e.g. CompVis/ldm-super-resolution-4x-openimages)")
    p.add_argument("--steps", type=int, default=100, help="denoising steps (default 100)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: a random one, printed)")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM eta; >0 adds seeded noise each step (default 0)")
    p.add_argument("--tile-size", type=int, default=None,
                   help="tile size in input pixels (default: the model's sample_size)")
    p.add_argument("--tile-overlap", type=int, default=None, help="tile overlap in input pixels (default: tile/4)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.set_defaults(func=run)
    return p


def _unet_factor(unet) -> int:
    return 2 ** (len(unet.config.block_out_channels) - 1)


def _trained_size(unet) -> int:
    size = unet.config.sample_size
    if isinstance(size, (list, tuple)):
        size = min(size)
    return int(size) if size else 64


def load_image(path: str):
    """Read an image file as a (1, 3, H, W) tensor in [-1, 1]; alpha / grey / palette images become RGB."""
    import PIL.Image

    from ..pipelines.latent_diffusion_superresolution import pil_to_tensor

    try:
        image = PIL.Image.open(path)
        image.load()
    except (OSError, PIL.Image.DecompressionBombError) as e:
        raise ValueError(f"image: cannot read {path}: {e}") from None
    return pil_to_tensor(image)


def upscale(pipe, image, steps: int, generator, eta: float = 0.0, tile_size: int | None = None,
            tile_overlap: int | None = None):
    """Upscale a (1, 3, H, W) tensor in [-1, 1] -> PIL image of exactly scale x (W, H)."""
    import torch.nn.functional as F

    h, w = image.shape[-2:]
    factor = _unet_factor(pipe.unet)
    pad_h, pad_w = -h % factor, -w % factor
    if pad_h or pad_w:
        image = F.pad(image, (0, pad_w, 0, pad_h), mode="replicate")
    tile = tile_size or _trained_size(pipe.unet)
    tile -= tile % factor
    tiled = max(image.shape[-2:]) > tile
    if tiled:
        logger.info("upscale: %dx%d input, denoising in %d-pixel tiles", w, h, tile)
    out = pipe(image, num_inference_steps=steps, eta=eta, generator=generator, output_type="pt",
               tile_size=tile if tiled else None, tile_overlap=tile_overlap if tiled else None).images
    scale = out.shape[-1] // image.shape[-1]
    out = out[..., : h * scale, : w * scale]
    return pipe.numpy_to_pil(out.permute(0, 2, 3, 1).float().cpu().numpy())[0]


def run(args) -> int:
    import torch

    from ..pipelines.latent_diffusion_superresolution import LDMSuperResolutionPipeline

    if args.steps <= 0:
        raise ValueError(f"--steps: expected a positive number, got {args.steps}")
    if args.eta < 0:
        raise ValueError(f"--eta: expected a number >= 0, got {args.eta}")
    image = load_image(args.image)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    pipe = LDMSuperResolutionPipeline.from_pretrained(args.model).to(device)
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "little") & 0x7FFFFFFF
    if args.seed is None:
        print(f"seed: {seed}", file=sys.stderr)
    generator = torch.Generator("cpu").manual_seed(seed)
    result = upscale(pipe, image, args.steps, generator, eta=args.eta, tile_size=args.tile_size,
                     tile_overlap=args.tile_overlap)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    result.save(output)
    print(f"wrote {output} ({result.width}x{result.height})", file=sys.stderr)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="impasto")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as e:
        parser.exit(2, f"impasto {args.command}: error: {e}\n")


if __name__ == "__main__":
    sys.exit(main())
