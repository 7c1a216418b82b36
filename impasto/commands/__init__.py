"""Subcommands of the `impasto` command line; each module has `register(subparsers)` (see impasto.cli)."""
