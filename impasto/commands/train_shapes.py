"""`impasto train-shapes --out DIR`: train the built-in shapes model (hand-built VAE, UNet + text encoder).

Deterministic from --seed on a given device and thread count; checkpoints go to DIR/checkpoints every
--checkpoint-every steps and a rerun with the same DIR resumes from them; the pipeline folder is DIR/model.
"""
from __future__ import annotations

import argparse


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("train-shapes", help="train the built-in shapes text-to-image model",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="output folder (checkpoints/ and model/ are written there)")
    p.add_argument("--steps", type=int, default=2000, help="UNet + text encoder steps (default 2000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    p.add_argument("--batch-size", type=int, default=24)
    p.add_argument("--pool-size", type=int, default=3072, help="world images encoded once for stage 2")
    p.add_argument("--checkpoint-every", type=int, default=100)
    p.add_argument("--lr", type=float, default=1e-3, help="UNet + text encoder learning rate (default 1e-3)")
    p.add_argument("--ema-decay", type=float, default=0.995, help="EMA decay of the exported weights")
    p.add_argument("--unet-channels", default=None,
                   help="UNet block_out_channels, e.g. 16,32,64 (default 32,64,128, the shipped model's)")
    p.add_argument("--stage", choices=("all", "vae", "unet"), default="all",
                   help="train the decoder (vae), the UNet + text encoder (unet) or both (all); the two are "
                        "independent, so they can run side by side with the same --out and --seed")
    p.add_argument("--decoder-steps", type=int, default=2000, help="decoder steps (default 2000)")
    p.add_argument("--decoder-batch-size", type=int, default=32)
    p.add_argument("--decoder-lr", type=float, default=5e-4, help="decoder learning rate (default 5e-4)")
    p.add_argument("--init-from", default=None,
                   help="pipeline folder whose UNet and text encoder start the UNet stage (continue a run)")
    p.add_argument("--caption-noise", type=float, default=0.0,
                   help="probability that a training caption names the shape, the colour, the position wrongly "
                        "(each on its own; default 0)")
    p.add_argument("--caption-noise-on", default="shape,colour,position",
                   help="which attributes --caption-noise may name wrongly (default shape,colour,position)")
    p.add_argument("--caption-dropout", type=float, default=0.15,
                   help="probability that a training caption is left empty, for classifier-free guidance "
                        "(default 0.15)")
    p.add_argument("--timesteps", choices=("uniform", "logit-normal"), default="uniform",
                   help="how UNet training timesteps are drawn: uniform (default) or logit-normal (mostly mid "
                        "noise, as SD3 trains)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--export-only", action="store_true",
                   help="only write DIR/model from the latest checkpoints (EMA weights)")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    import logging

    import torch

    from ..shapes import train

    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be a positive integer, got {args.threads}")
        torch.set_num_threads(args.threads)
    logging.getLogger("impasto").setLevel(logging.INFO)
    if args.export_only:
        path = train.export_checkpoint(args.out)
    else:
        channels = None
        if args.unet_channels:
            try:
                channels = [int(c) for c in args.unet_channels.split(",")]
            except ValueError:
                raise ValueError(f"--unet-channels: expected comma-separated integers, got {args.unet_channels!r}")
        path = train.train(args.out, steps=args.steps, seed=args.seed, device=args.device,
                           batch_size=args.batch_size, pool_size=args.pool_size, lr=args.lr,
                           checkpoint_every=args.checkpoint_every, stage=args.stage,
                           decoder_steps=args.decoder_steps, decoder_batch_size=args.decoder_batch_size,
                           decoder_lr=args.decoder_lr, unet_channels=channels, ema_decay=args.ema_decay,
                           init_from=args.init_from, caption_noise=args.caption_noise,
                           noisy_attributes=tuple(args.caption_noise_on.split(",")),
                           caption_dropout=args.caption_dropout, timesteps=args.timesteps)
    print(path)
    return 0
