"""Prompts -> CLIP text embeddings for Stable Diffusion 1.x / 2.x (diffusers' `encode_prompt` semantics).

- Prompts are tokenized to `tokenizer.model_max_length` (77) tokens; longer ones are cut with a warning
  naming the dropped text (`long_prompt="truncate"`, the default, as diffusers does).
- `long_prompt="chunk"` instead splits each prompt's tokens into pieces of 75, wraps each piece in
  <|startoftext|> ... <|endoftext|> and padding (77 tokens), encodes the pieces separately and joins the
  results along the sequence axis (77 * n_chunks tokens; the UNet's cross-attention takes any length).
  All prompts and negative prompts of a call are padded to the same number of chunks with empty chunks.
  A prompt of up to 75 tokens gives exactly the embedding of the default mode.
- `long_prompt="a1111"` reads prompts as AUTOMATIC1111 does (impasto.text.emphasis): `(word:1.2)`, `(word)`,
  `[word]` weights, `BREAK`, 75-token chunks that break after a comma; each token's hidden state is scaled by
  its weight and each chunk rescaled to keep its mean. Negative prompts get the same syntax and clip_skip.
- `clip_skip=k` takes the hidden state k layers before the last and applies the final LayerNorm. As in
  diffusers, negative prompts are encoded without clip_skip (except with long_prompt="a1111", as in A1111).
"""
from __future__ import annotations

import logging

import torch

from ..text import emphasis
from ..text.chunks import chunked_input_ids, count_chunks, flatten_chunks, merge_chunks

logger = logging.getLogger("impasto")

LONG_PROMPT_MODES = ("truncate", "chunk", "a1111")


def as_list(prompt, name: str) -> list[str]:
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, (list, tuple)) and all(isinstance(p, str) for p in prompt):
        return list(prompt)
    raise ValueError(f"{name}: expected a string or a list of strings, got {type(prompt).__name__}")


def encode_text(text_encoder, ids: torch.Tensor, device, clip_skip: int | None = None, attention_mask=None):
    """Last hidden state (after the final LayerNorm), or with clip_skip=k the state k layers earlier + LayerNorm."""
    ids = ids.to(device)
    mask = attention_mask.to(device) if attention_mask is not None else None
    if clip_skip is None:
        return text_encoder(ids, attention_mask=mask)[0]
    out = text_encoder(ids, attention_mask=mask, output_hidden_states=True)
    hidden = out.hidden_states if getattr(out, "hidden_states", None) is not None else out[-1]
    if not 0 <= clip_skip < len(hidden) - 1:
        raise ValueError(f"clip_skip: expected 0..{len(hidden) - 2} for a text encoder of {len(hidden) - 1} layers, "
                         f"got {clip_skip}")
    tower = getattr(text_encoder, "text_model", text_encoder)  # transformers 5 flattened CLIPTextModel
    return tower.final_layer_norm(hidden[-(clip_skip + 1)])


def _mask(text_encoder, tokens):
    use = getattr(getattr(text_encoder, "config", None), "use_attention_mask", False)
    return tokens.attention_mask if use else None


def tokenize_truncated(tokenizer, texts: list[str], max_length: int | None = None, warn: bool = True):
    """Ids padded/cut to max_length (default model_max_length); warns with the text that was cut off."""
    limit = max_length or tokenizer.model_max_length
    tokens = tokenizer(texts, padding="max_length", max_length=limit, truncation=True, return_tensors="pt",
                       verbose=False)
    if warn:
        full = tokenizer(texts, padding="longest", return_tensors="pt", verbose=False).input_ids
        if full.shape[-1] >= tokens.input_ids.shape[-1] and not torch.equal(full[:, :limit], tokens.input_ids):
            removed = tokenizer.batch_decode(full[:, limit - 1:-1])
            logger.warning("The following part of your input was truncated because CLIP can only handle sequences "
                           "up to %d tokens (use long_prompt='chunk' to keep it): %s", limit, removed)
    return tokens


def chunk_counter(mode: str):
    """How a long-prompt mode counts the 75-token windows of prompts: count(tokenizer, texts) -> int."""
    return count_chunks if mode == "chunk" else emphasis.count_chunks


def _encode(text_encoder, tokenizer, texts, device, clip_skip, mode, n_chunks=None, max_length=None, warn=True):
    if mode == "chunk":
        ids, _ = chunked_input_ids(tokenizer, texts, n_chunks)
        return merge_chunks(encode_text(text_encoder, flatten_chunks(ids), device, clip_skip), len(texts))
    if mode == "a1111":
        ids, weights = emphasis.batch_chunks(tokenizer, texts, n_chunks)
        hidden = encode_text(text_encoder, flatten_chunks(ids), device, clip_skip)
        return merge_chunks(emphasis.apply_weights(hidden, flatten_chunks(weights)), len(texts))
    tokens = tokenize_truncated(tokenizer, texts, max_length, warn)
    return encode_text(text_encoder, tokens.input_ids, device, clip_skip, _mask(text_encoder, tokens))


def _repeat(emb: torch.Tensor, n: int) -> torch.Tensor:
    b, seq, _ = emb.shape
    return emb.repeat(1, n, 1).view(b * n, seq, -1)


def encode_prompt(text_encoder, tokenizer, prompt, device, num_images_per_prompt: int = 1,
                  do_classifier_free_guidance: bool = True, negative_prompt=None, prompt_embeds=None,
                  negative_prompt_embeds=None, clip_skip: int | None = None, long_prompt: str = "truncate",
                  dtype: torch.dtype | None = None):
    """(prompt_embeds, negative_prompt_embeds), each repeated num_images_per_prompt times per prompt.

    negative_prompt_embeds is None without classifier-free guidance. `dtype` is used when there is no text
    encoder (embeddings given); otherwise the text encoder's dtype is used."""
    if long_prompt not in LONG_PROMPT_MODES:
        raise ValueError(f"long_prompt: expected one of {LONG_PROMPT_MODES}, got {long_prompt!r}")
    texts = as_list(prompt, "prompt") if prompt is not None else None
    batch = len(texts) if texts is not None else prompt_embeds.shape[0]
    negatives = None
    if do_classifier_free_guidance and negative_prompt_embeds is None:
        if negative_prompt is None:
            negatives = [""] * batch
        elif prompt is not None and type(prompt) is not type(negative_prompt):
            raise ValueError(f"negative_prompt: expected the same type as prompt ({type(prompt).__name__}), "
                             f"got {type(negative_prompt).__name__}")
        else:
            negatives = as_list(negative_prompt, "negative_prompt")
            if len(negatives) != batch:
                raise ValueError(f"negative_prompt: got {len(negatives)} negative prompts for {batch} prompts; "
                                 "give one per prompt")
    if long_prompt == "a1111":
        texts = [emphasis.strip_extra_networks(t) for t in texts] if texts is not None else None
        negatives = [emphasis.strip_extra_networks(t) for t in negatives] if negatives else negatives
    n_chunks = None
    if long_prompt != "truncate":
        count = chunk_counter(long_prompt)
        if prompt_embeds is None:
            n_chunks = count(tokenizer, texts + (negatives or []))
        else:
            n_chunks = max(1, prompt_embeds.shape[1] // tokenizer.model_max_length)
            if negatives and count(tokenizer, negatives) > n_chunks:
                raise ValueError("negative_prompt: needs more 75-token chunks than the given prompt_embeds hold")
    if prompt_embeds is None:
        prompt_embeds = _encode(text_encoder, tokenizer, texts, device, clip_skip, long_prompt, n_chunks)
    if text_encoder is not None:
        dtype = text_encoder.dtype
    dtype = dtype or prompt_embeds.dtype
    prompt_embeds = _repeat(prompt_embeds.to(dtype=dtype, device=device), num_images_per_prompt)
    if not do_classifier_free_guidance:
        return prompt_embeds, None
    if negative_prompt_embeds is None:
        negative_clip_skip = clip_skip if long_prompt == "a1111" else None
        negative_prompt_embeds = _encode(text_encoder, tokenizer, negatives, device, negative_clip_skip, long_prompt,
                                         n_chunks, max_length=prompt_embeds.shape[1], warn=False)
    negative_prompt_embeds = _repeat(negative_prompt_embeds.to(dtype=dtype, device=device), num_images_per_prompt)
    return prompt_embeds, negative_prompt_embeds
