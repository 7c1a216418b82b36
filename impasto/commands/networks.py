"""LoRA and textual-inversion files for `impasto generate`: --lora / --embedding files, and A1111's folders
(--lora-dir resolves `<lora:NAME:W>` tags in the prompts; --embeddings-dir loads the embeddings the prompts name).
"""
from __future__ import annotations

import os
import re
from pathlib import Path

SUFFIXES = (".safetensors", ".pt", ".ckpt", ".bin")
LORA_TAG = re.compile(r"<lora:([^:>]+)(?::([^:>]*))?(?::[^>]*)?>")


def split_option(value: str, flag: str, number: bool) -> tuple[str, str | None]:
    """'FILE:X' -> (FILE, X) when FILE exists and X is given (a number for --lora); else (value, None)."""
    head, sep, tail = value.rpartition(":")
    if sep and tail and Path(os.path.expanduser(head)).is_file():
        if number:
            try:
                float(tail)
            except ValueError:
                raise ValueError(f"{flag}: expected FILE or FILE:WEIGHT with a number, got {value!r}") from None
        return head, tail
    if not Path(os.path.expanduser(value)).is_file():
        raise ValueError(f"{flag}: no such file: {value}")
    return value, None


def _files(folder: str, flag: str) -> list[Path]:
    root = Path(os.path.expanduser(folder))
    if not root.is_dir():
        raise ValueError(f"{flag}: no such folder: {folder}")
    return sorted(f for f in root.rglob("*") if f.suffix in SUFFIXES and f.is_file())


def lora_tags(text: str | None, folder: str) -> tuple[str | None, list[tuple[Path, float]]]:
    """(text without its <lora:NAME:W> tags, [(file, weight), ...]) with each NAME found in `folder`."""
    if not text:
        return text, []
    files = {f.stem: f for f in _files(folder, "--lora-dir")}
    found = []
    for name, weight in LORA_TAG.findall(text):
        if name not in files:
            raise ValueError(f"--lora-dir: no LoRA named {name!r} in {folder} (looked for {name}"
                             f"{{{','.join(SUFFIXES)}}})")
        try:
            found.append((files[name], float(weight) if weight else 1.0))
        except ValueError:
            raise ValueError(f"prompt: <lora:{name}:{weight}>: the weight is not a number") from None
    return LORA_TAG.sub("", text), found


def named_embeddings(texts: list[str | None], folder: str) -> list[tuple[Path, str]]:
    """[(file, token), ...] for the embeddings in `folder` whose name appears as a word in `texts`."""
    joined = " ".join(LORA_TAG.sub("", t) for t in texts if t)  # a LoRA's name in its tag is not a word
    return [(f, f.stem) for f in _files(folder, "--embeddings-dir")
            if re.search(rf"(?<![\w-]){re.escape(f.stem)}(?![\w-])", joined)]


def add_networks(pipe, args) -> tuple[str, str | None]:
    """Loads --embedding / --embeddings-dir and --lora / --lora-dir files into the pipeline (LoRAs weighted with
    set_adapters); returns (prompt, negative prompt) without the <lora:...> tags --lora-dir resolved."""
    prompt, negative = args.prompt, args.negative
    embeddings = [split_option(v, "--embedding", number=False) for v in args.embedding]
    embeddings = [(path, token or Path(path).stem) for path, token in embeddings]
    if args.embeddings_dir:
        embeddings += named_embeddings([prompt, negative], args.embeddings_dir)
    loras = [split_option(v, "--lora", number=True) for v in args.lora]
    loras = [(path, float(w) if w is not None else 1.0) for path, w in loras]
    if args.lora_dir:
        prompt, found = lora_tags(prompt, args.lora_dir)
        negative, found_negative = lora_tags(negative, args.lora_dir)
        loras += found + found_negative
    for path, token in embeddings:
        if not hasattr(pipe, "load_textual_inversion"):
            raise ValueError(f"--embedding: {type(pipe).__name__} does not take textual inversion")
        pipe.load_textual_inversion(path, token=token)
    names = []
    for i, (path, _) in enumerate(loras):
        if not hasattr(pipe, "load_lora_weights"):
            raise ValueError(f"--lora: {type(pipe).__name__} does not take LoRA")
        names.append(f"lora_{i}")
        pipe.load_lora_weights(path, adapter_name=names[-1])
    if names:
        pipe.set_adapters(names, [w for _, w in loras])
    return prompt, negative
