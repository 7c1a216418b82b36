"""AUTOMATIC1111's prompt syntax: emphasis weights, BREAK, and 75-token chunks that break at commas.

What A1111 users paste into a prompt, read as A1111 reads it (modules/prompt_parser.py and
modules/sd_hijack_clip.py of stable-diffusion-webui 1.x, "Original" emphasis):

- `(text)` multiplies the weight of `text` by 1.1, `[text]` by 1 / 1.1, `(text:1.5)` by 1.5; brackets nest
  and multiply; an unclosed `(` or `[` applies to the rest of the prompt. `\\(`, `\\)`, `\\[`, `\\]` and `\\\\`
  are the literal characters; anything else is text.
- `BREAK` (upper case, a word of its own) ends the current 75-token chunk: what follows starts a new one.
- The tokens are laid out in chunks of 75; when a chunk is full and the last comma lies at most 20 tokens
  back, the tokens after that comma move to the next chunk, so a phrase is not cut in two. Each chunk is
  wrapped as <bos> tokens <eos> and padded to 77 (with <eos>, then the tokenizer's pad token after the first
  <eos>, as A1111 does for SD 2's OpenCLIP); every token carries the weight of the text it came from, the
  wrapping and padding 1.0.
- Encoding (impasto.conditioning.sd) multiplies each token's hidden state by its weight and rescales the chunk
  so its mean over tokens and channels is what it was before weighting.
"""
from __future__ import annotations

import logging
import re

import torch

from .chunks import wrap_chunk

logger = logging.getLogger("impasto")

ROUND, SQUARE = 1.1, 1 / 1.1
CHUNK = 75
COMMA_BACKTRACK = 20
BREAK = ("BREAK", -1.0)

_TOKENS = re.compile(r"""
    \\\( | \\\) | \\\[ | \\\] | \\\\ | \\       # escapes, and a lone backslash
  | \( | \[                                     # openers
  | :\s* ([+-]?[.\d]+) \s*\)                    # ":1.5)" closes a round bracket with a weight
  | \) | \]                                     # closers
  | [^\\()\[\]:]+                               # text
  | :                                           # a colon that is not a weight
""", re.X)
_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)
_EXTRA_NETWORK = re.compile(r"<(lora|lyco|hypernet):[^>]*>")
_EDITING = re.compile(r"\[[^\[\]]*[:|][^\[\]]*\]")


def strip_extra_networks(text: str) -> str:
    """A1111 removes `<lora:name:0.8>` (and lyco, hypernet) from the prompt and loads the network; impasto removes
    it with a warning saying how to load it, and warns that prompt editing (`[a:b:0.5]`, `[a|b]`) is read as text."""
    found = [m.group(0) for m in _EXTRA_NETWORK.finditer(text)]
    if found:
        logger.warning("prompt: removed %s: load LoRA files with pipe.load_lora_weights(path, adapter_name=...) and "
                       "weight them with pipe.set_adapters([...], [...])", ", ".join(found))
        text = _EXTRA_NETWORK.sub("", text)
    editing = _EDITING.search(text)
    if editing:
        logger.warning("prompt: %s is A1111 prompt editing or alternation, which a pipeline call applies over its "
                       "steps; encode_prompt alone reads it as plain text with [ ] emphasis", editing.group(0))
    return text


def parse_emphasis(text: str) -> list[tuple[str, float]]:
    """[(text, weight), ...] in order, runs of equal weight merged; BREAK markers are ("BREAK", -1.0).

    As A1111, except that a BREAK inside brackets still breaks (A1111 scales its marker and then reads the
    word "BREAK" as text with a negative weight)."""
    if not isinstance(text, str):
        raise ValueError(f"prompt: expected a string, got {type(text).__name__}")
    parts: list[list] = []  # [text, weight]; weight None marks a BREAK
    open_round: list[int] = []
    open_square: list[int] = []

    def scale_from(start: int, factor: float):
        for part in parts[start:]:
            if part[1] is not None:
                part[1] *= factor

    for m in _TOKENS.finditer(text):
        token, weight = m.group(0), m.group(1)
        if token.startswith("\\"):
            parts.append([token[1:], 1.0])  # a lone backslash is dropped, as in A1111
        elif token == "(":
            open_round.append(len(parts))
        elif token == "[":
            open_square.append(len(parts))
        elif weight is not None and open_round:
            scale_from(open_round.pop(), _number(weight, token))
        elif token == ")" and open_round:
            scale_from(open_round.pop(), ROUND)
        elif token == "]" and open_square:
            scale_from(open_square.pop(), SQUARE)
        else:
            for i, piece in enumerate(_BREAK.split(token)):
                if i:
                    parts.append([None, None])
                parts.append([piece, 1.0])
    for start in open_round:
        scale_from(start, ROUND)
    for start in open_square:
        scale_from(start, SQUARE)
    merged: list[list] = []
    for part in parts or [["", 1.0]]:
        if merged and part[1] is not None and merged[-1][1] == part[1]:
            merged[-1][0] += part[0]
        else:
            merged.append(part)
    return [BREAK if w is None else (t, w) for t, w in merged]


def _number(value: str, where: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"prompt: {where!r} is not a weight; write (text:1.2)") from None


class _Chunks:
    """Builds the 77-token windows of one prompt, as A1111's tokenize_line does."""

    def __init__(self, bos: int, eos: int, pad: int, comma: int | None):
        self.bos, self.eos, self.pad, self.comma = bos, eos, pad, comma
        self.done: list[tuple[list[int], list[float]]] = []
        self.ids: list[int] = []
        self.weights: list[float] = []
        self.last_comma = -1

    def close(self):
        fill = CHUNK - len(self.ids)
        ids = wrap_chunk(self.ids, self.bos, self.eos, self.pad, CHUNK)
        self.done.append((ids, [1.0, *self.weights, 1.0] + [1.0] * fill))
        self.ids, self.weights, self.last_comma = [], [], -1

    def add(self, token: int, weight: float):
        if token == self.comma:
            self.last_comma = len(self.ids)
        elif len(self.ids) == CHUNK and self.last_comma != -1 and CHUNK - self.last_comma <= COMMA_BACKTRACK:
            cut = self.last_comma + 1
            moved = self.ids[cut:], self.weights[cut:]
            self.ids, self.weights = self.ids[:cut], self.weights[:cut]
            self.close()
            self.ids, self.weights = list(moved[0]), list(moved[1])
        if len(self.ids) == CHUNK:
            self.close()
        self.ids.append(token)
        self.weights.append(weight)


def _special_ids(tokenizer) -> tuple[int, int, int, int | None]:
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    comma = tokenizer.convert_tokens_to_ids(",</w>")
    if comma is None or comma == getattr(tokenizer, "unk_token_id", None):
        comma = None
    return tokenizer.bos_token_id, eos, pad, comma


def weighted_chunks(tokenizer, text: str) -> list[tuple[list[int], list[float]]]:
    """One prompt -> [(77 ids, 77 weights), ...], one pair per chunk (at least one)."""
    if tokenizer.model_max_length != CHUNK + 2:
        raise ValueError(f"long_prompt='a1111': needs a 77-token CLIP tokenizer, got model_max_length "
                         f"{tokenizer.model_max_length}")
    parsed = parse_emphasis(text)
    pieces = [t for t, w in parsed if (t, w) != BREAK]
    ids = iter(tokenizer(pieces, add_special_tokens=False, truncation=False, verbose=False).input_ids
               if pieces else [])
    chunks = _Chunks(*_special_ids(tokenizer))
    for text_piece, weight in parsed:
        if (text_piece, weight) == BREAK:
            chunks.close()
            continue
        for token in next(ids):
            chunks.add(token, weight)
    if chunks.ids or not chunks.done:
        chunks.close()
    return chunks.done


def empty_chunk(tokenizer) -> tuple[list[int], list[float]]:
    bos, eos, pad, _ = _special_ids(tokenizer)
    return wrap_chunk([], bos, eos, pad, CHUNK), [1.0] * (CHUNK + 2)


def count_chunks(tokenizer, texts: list[str]) -> int:
    return max(len(weighted_chunks(tokenizer, t)) for t in texts)


def batch_chunks(tokenizer, texts: list[str], num_chunks: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, weights), shaped (batch, num_chunks, 77); shorter prompts are padded with empty chunks."""
    per_text = [weighted_chunks(tokenizer, t) for t in texts]
    needed = max(len(c) for c in per_text)
    if num_chunks is None:
        num_chunks = needed
    elif num_chunks < needed:
        raise ValueError(f"prompt: needs {needed} chunks of 75 tokens, more than the {num_chunks} given")
    empty = empty_chunk(tokenizer)
    rows = [c + [empty] * (num_chunks - len(c)) for c in per_text]
    ids = torch.tensor([[i for i, _ in row] for row in rows], dtype=torch.long)
    weights = torch.tensor([[w for _, w in row] for row in rows], dtype=torch.float32)
    return ids, weights


def apply_weights(hidden: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """A1111's "Original" emphasis on (n, 77, dim) hidden states of n chunks with (n, 77) weights: each token
    scaled by its weight, then each chunk rescaled so that its mean is unchanged. Chunks without weights are
    returned as they are; where the weighted mean is near zero (a text encoder whose features average to zero)
    the rescale, which would blow up, is skipped."""
    weights = weights.to(device=hidden.device, dtype=hidden.dtype)
    before = hidden.mean(dim=(1, 2), keepdim=True)
    scaled = hidden * weights.unsqueeze(-1)
    after = scaled.mean(dim=(1, 2), keepdim=True)
    unweighted = (weights == 1).all(dim=1).view(-1, 1, 1)
    degenerate = after.abs() <= 1e-4 * hidden.abs().mean(dim=(1, 2), keepdim=True)
    ratio = torch.where(degenerate, torch.ones_like(after), before / torch.where(degenerate, 1, after))
    return torch.where(unweighted, hidden, scaled * ratio)
