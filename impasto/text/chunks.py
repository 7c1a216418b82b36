"""Long prompts: token ids cut into 75-token chunks, each wrapped as a full 77-token CLIP window.

CLIP sees at most 77 positions. The opt-in long-prompt mode tokenizes without truncation, cuts the ids into
pieces of `chunk_size` (75), wraps each piece as `<bos> piece <eos> <pad>...`, encodes every window separately
and concatenates the hidden states along the token axis (B, chunks * 77, D). Prompt and negative prompt must
have the same number of chunks for classifier-free guidance, so every list here is padded to a common count
with empty windows.
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


def count_chunks(tokenizer, texts: list[str], chunk_size: int | None = None) -> int:
    """How many windows the longest of `texts` needs."""
    chunk_size = chunk_size or tokenizer.model_max_length - 2
    return max(len(split_ids(ids, chunk_size)) for ids in tokenizer.encode_ids(list(texts)))


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
    pieces = [split_ids(ids, chunk_size) for ids in tokenizer.encode_ids(texts)]
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


def first_chunk(pooled: torch.Tensor, batch: int) -> torch.Tensor:
    """Pooled outputs (batch * chunks, dim) -> the first window's, (batch, dim) (SDXL's pooled prompt)."""
    return pooled.reshape(batch, -1, pooled.shape[-1])[:, 0]


def encode_chunked(text_encoder, input_ids: torch.Tensor, output_hidden_states: bool = False):
    """Run `text_encoder` over every window of (batch, chunks, n) ids; returns its output with
    `last_hidden_state` (and each `hidden_states` entry) merged to (batch, chunks * n, dim) and the
    pooled / projected output of each prompt's first window."""
    batch = input_ids.shape[0]
    out = text_encoder(flatten_chunks(input_ids), output_hidden_states=output_hidden_states)
    fields = {"last_hidden_state": merge_chunks(out.last_hidden_state, batch)}
    if getattr(out, "hidden_states", None) is not None:
        fields["hidden_states"] = tuple(merge_chunks(h, batch) for h in out.hidden_states)
    for name in ("pooler_output", "text_embeds"):
        if getattr(out, name, None) is not None:
            fields[name] = first_chunk(getattr(out, name), batch)
    return type(out)(**fields)
