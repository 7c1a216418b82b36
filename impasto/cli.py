"""The `impasto` command line: `impasto generate`, `impasto info`, and the subcommands other modules add.

Each subcommand lives in `impasto/commands/<module>.py` with a `register(subparsers)` function that adds its
parser and sets `func` (called with the parsed arguments, returns an exit code). Add a subcommand by writing
such a module and one entry in SUBCOMMANDS. Errors print one line (set IMPASTO_DEBUG=1 for the traceback).
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

# modules in impasto.commands, in --help order
SUBCOMMANDS = ["generate", "info", "upscale", "convert", "train_shapes"]


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="impasto", description="Latent diffusion image generation (diffusers API).")
    parser.add_argument("--version", action="version", version=f"impasto {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="show informational log messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f".commands.{name}", __package__)
        except ImportError as e:  # a subcommand whose module is missing must not break the others
            logging.getLogger("impasto").debug("subcommand %s unavailable: %s", name, e)
            continue
        module.register(sub)
    return parser


def _setup_logging(verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    log = logging.getLogger("impasto")
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO if verbose else logging.WARNING)
    log.propagate = False


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("impasto: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # one readable line instead of a traceback
        if os.environ.get("IMPASTO_DEBUG"):
            raise
        message = " ".join(str(e).split()) or type(e).__name__
        print(f"impasto {args.command}: error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
