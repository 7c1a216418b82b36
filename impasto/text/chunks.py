"""Long prompts: token ids cut into 75-token chunks, each wrapped as a full 77-token CLIP window.

CLIP sees at most 77 positions. The opt-in long-prompt mode (`long_prompt="chunk"`) tokenizes without
truncation, cuts the ids into pieces of `chunk_size` (75), wraps each piece as `<bos> piece <eos> <pad>...`,
encodes every window separately and concatenates the hidden states along the token axis (B, chunks * 77, D).
Prompt and negative prompt must have the same number of chunks for classifier-free guidance, so every list
here is padded to a common count with empty windows.

Only the plain tokenizer call (`tokenizer(texts, add_special_tokens=False, ...).input_ids`) and its
bos/eos/pad ids and `model_max_length` are used, so any CLIP tokenizer with diffusers' interface works.
"""
from __future__ import annotations

import torch


def split_ids(ids: list[int], chunk_size: int = 75) -> list[list[int]]:
    """Consecutive pieces of at most `chunk_size` ids; an empty prompt gives one empty piece."""
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size: expected a positive int, got {chunk_size!r}")
    return [ids[i:i + chunk_size] for i in range(0, len(ids), chunk_size)] or [[]]


def wrap_chunk(piece: list[int], bos_id: int, eos_id: int, pad_id: int, chunk_size: int = 75) -> list[int]:
    """<bos> piece <eos>, padded with `pad_id` to chunk_size + 2 ids."""
    if len(piece) > chunk_size:
        raise ValueError(f"piece: {len(piece)} ids, more than chunk_size {chunk_size}")
    return [bos_id, *piece, eos_id] + [pad_id] * (chunk_size - len(piece))


def _pieces(tokenizer, texts: list[str], chunk_size: int) -> list[list[list[int]]]:
    """Each text's ids (no bos/eos, untruncated) cut into pieces of `chunk_size`."""
    ids = tokenizer(texts, add_special_tokens=False, truncation=False, verbose=False).input_ids
    return [split_ids(list(row), chunk_size) for row in ids]


def count_chunks(tokenizer, texts: list[str], chunk_size: int | None = None) -> int:
    """How many windows the longest of `texts` needs (at least 1)."""
    chunk_size = chunk_size or tokenizer.model_max_length - 2
    return max(len(p) for p in _pieces(tokenizer, list(texts), chunk_size))


def chunked_input_ids(tokenizer, texts: str | list[str], num_chunks: int | None = None,
                      chunk_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), both (batch, num_chunks, chunk_size + 2).

    `num_chunks` (at least what the longest text needs; see `count_chunks`) lets a prompt and its negative
    prompt share one count. Empty windows are <bos> <eos> <pad>...; their mask covers <bos> and <eos>.
    """
    texts = [texts] if isinstance(texts, str) else list(texts)
    if not texts or not all(isinstance(t, str) for t in texts):
        raise ValueError("texts: expected a string or a non-empty list of strings")
    chunk_size = chunk_size or tokenizer.model_max_length - 2
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    pieces = _pieces(tokenizer, texts, chunk_size)
    needed = max(len(p) for p in pieces)
    if num_chunks is None:
        num_chunks = needed
    elif not isinstance(num_chunks, int) or num_chunks < needed:
        raise ValueError(f"num_chunks: the longest text needs {needed} chunks, got {num_chunks!r}")
    ids, mask = [], []
    for text_pieces in pieces:
        text_pieces = text_pieces + [[]] * (num_chunks - len(text_pieces))
        ids.append([wrap_chunk(p, bos, eos, pad, chunk_size) for p in text_pieces])
        mask.append([[1] * (len(p) + 2) + [0] * (chunk_size - len(p)) for p in text_pieces])
    return torch.tensor(ids, dtype=torch.long), torch.tensor(mask, dtype=torch.long)


def flatten_chunks(input_ids: torch.Tensor) -> torch.Tensor:
    """(batch, chunks, n) -> (batch * chunks, n), the shape a text encoder takes."""
    if input_ids.ndim != 3:
        raise ValueError(f"input_ids: expected (batch, chunks, tokens), got shape {tuple(input_ids.shape)}")
    return input_ids.reshape(-1, input_ids.shape[-1])


def merge_chunks(hidden: torch.Tensor, batch: int) -> torch.Tensor:
    """(batch * chunks, n, dim) hidden states -> (batch, chunks * n, dim): windows side by side."""
    if hidden.ndim != 3 or hidden.shape[0] % batch:
        raise ValueError(f"hidden: expected (batch * chunks, tokens, dim) with batch {batch}, "
                         f"got shape {tuple(hidden.shape)}")
    chunks = hidden.shape[0] // batch
    return hidden.reshape(batch, chunks * hidden.shape[1], hidden.shape[2])
