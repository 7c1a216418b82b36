"""Prompts and micro-conditioning for SDXL (diffusers' `encode_prompt` / `_get_add_time_ids` semantics).

- Two CLIP towers: `text_encoder` (CLIP-L, may be None as in the refiner) and `text_encoder_2` (OpenCLIP-G with
  projection). `prompt` feeds the first, `prompt_2` (default: `prompt`) the second; the same for negatives.
- Token features are the penultimate hidden state of each tower (no final LayerNorm), or with clip_skip=k
  the state k layers before that; the towers' features are concatenated along the channel axis.
- The pooled embedding is the projected text embedding of the tower that returns one (`text_encoder_2`).
- force_zeros_for_empty_prompt: without a negative prompt, the negative embeddings are zeros (not "").
- `long_prompt`: "truncate" (diffusers), "chunk" (75-token windows joined along the token axis) or "a1111"
  (AUTOMATIC1111's syntax, impasto.text.emphasis), as for SD 1.x/2.x; both towers get the same number of
  windows, each tower's features are weighted on their own, and the pooled embedding is that of the first window.
- Time ids: original_size + crops_coords_top_left + target_size (6 numbers), or for UNets trained with an
  aesthetic score (the refiner) original_size + crops_coords_top_left + (aesthetic_score,) (5 numbers).
"""
from __future__ import annotations

import torch

from ..text import emphasis
from ..text.chunks import chunked_input_ids, flatten_chunks, merge_chunks
from .sd import LONG_PROMPT_MODES, as_list, chunk_counter, tokenize_truncated


def _run_tower(text_encoder, ids: torch.Tensor, device, clip_skip):
    """(token features from hidden_states[-(clip_skip + 2)], pooled output or None) of one tower."""
    out = text_encoder(ids.to(device), output_hidden_states=True)
    hidden = out.hidden_states if getattr(out, "hidden_states", None) is not None else out[-1]
    skip = clip_skip or 0
    if not 0 <= skip < len(hidden) - 1:
        raise ValueError(f"clip_skip: expected 0..{len(hidden) - 2} for a text encoder of {len(hidden) - 1} layers, "
                         f"got {clip_skip}")
    first = out[0]
    return hidden[-(skip + 2)], first if first.ndim == 2 else None


def _tower_features(text_encoder, tokenizer, texts: list[str], device, clip_skip, mode="truncate", n_chunks=None,
                    max_length=None, warn=True):
    if mode == "truncate":
        return _run_tower(text_encoder, tokenize_truncated(tokenizer, texts, max_length, warn).input_ids, device,
                          clip_skip)
    if mode == "chunk":
        ids, weights = chunked_input_ids(tokenizer, texts, n_chunks)[0], None
    else:
        ids, weights = emphasis.batch_chunks(tokenizer, texts, n_chunks)
    feats, pooled = _run_tower(text_encoder, flatten_chunks(ids), device, clip_skip)
    if weights is not None:
        feats = emphasis.apply_weights(feats, flatten_chunks(weights))
    if pooled is not None:
        pooled = pooled.reshape(len(texts), -1, pooled.shape[-1])[:, 0]  # the first window's
    return merge_chunks(feats, len(texts)), pooled


def _encode(pairs, texts_per_tower, device, clip_skip, mode="truncate", n_chunks=None, max_length=None, warn=True):
    features, pooled = [], None
    for (encoder, tokenizer), texts in zip(pairs, texts_per_tower):
        feats, pool = _tower_features(encoder, tokenizer, texts, device, clip_skip, mode, n_chunks, max_length, warn)
        features.append(feats)
        if pooled is None and pool is not None:
            pooled = pool
    return torch.cat(features, dim=-1), pooled


def _count(pairs, texts_per_tower, mode) -> int:
    count = chunk_counter(mode)
    return max(count(tok, texts) for (_, tok), texts in zip(pairs, texts_per_tower) if texts)


def _negatives(negative, batch: int, prompt, name: str) -> list[str]:
    if isinstance(negative, str):
        return [negative] * batch
    items = as_list(negative, name)
    if prompt is not None and isinstance(prompt, str):
        raise ValueError(f"{name}: expected a string like prompt, got a list")
    if len(items) != batch:
        raise ValueError(f"{name}: got {len(items)} negative prompts for {batch} prompts; give one per prompt")
    return items


def _repeat(x: torch.Tensor, n: int) -> torch.Tensor:
    return x.repeat_interleave(n, dim=0)


def encode_prompt(text_encoder, text_encoder_2, tokenizer, tokenizer_2, prompt, prompt_2=None, device=None,
                  num_images_per_prompt: int = 1, do_classifier_free_guidance: bool = True, negative_prompt=None,
                  negative_prompt_2=None, prompt_embeds=None, negative_prompt_embeds=None, pooled_prompt_embeds=None,
                  negative_pooled_prompt_embeds=None, clip_skip: int | None = None,
                  force_zeros_for_empty_prompt: bool = True, dtype: torch.dtype | None = None, convert=None,
                  long_prompt: str = "truncate"):
    """(prompt_embeds, negative_prompt_embeds, pooled_prompt_embeds, negative_pooled_prompt_embeds), each
    repeated num_images_per_prompt times per prompt; the negatives are None without guidance.

    `dtype`: the fallback when there is no `text_encoder_2` (the UNet's); `convert(texts, tokenizer)` rewrites
    prompts for textual inversion tokens."""
    if long_prompt not in LONG_PROMPT_MODES:
        raise ValueError(f"long_prompt: expected one of {LONG_PROMPT_MODES}, got {long_prompt!r}")
    pairs = [(e, t) for e, t in ((text_encoder, tokenizer), (text_encoder_2, tokenizer_2)) if e is not None]
    if prompt_embeds is None and not pairs:
        raise ValueError("prompt_embeds: this pipeline has no text encoder; pass prompt_embeds and "
                         "pooled_prompt_embeds")
    convert = convert or (lambda texts, _tok: texts)
    clean = emphasis.strip_extra_networks if long_prompt == "a1111" else (lambda text: text)

    def tower_texts(first, second):
        per_tower = [first, second][-len(pairs):]
        return [convert([clean(t) for t in texts], tok) for texts, (_, tok) in zip(per_tower, pairs)]

    texts = as_list(prompt, "prompt") if prompt is not None else None
    batch = len(texts) if texts is not None else prompt_embeds.shape[0]
    positives = None
    if prompt_embeds is None:
        texts_2 = as_list(prompt_2, "prompt_2") if prompt_2 else texts
        if len(texts_2) != batch:
            raise ValueError(f"prompt_2: got {len(texts_2)} prompts for {batch} prompts; give one per prompt")
        positives = tower_texts(texts, texts_2)
    negatives = None
    zeros = negative_prompt is None and force_zeros_for_empty_prompt
    if do_classifier_free_guidance and negative_prompt_embeds is None and not zeros:
        if not pairs:
            raise ValueError("negative_prompt_embeds: this pipeline has no text encoder; pass "
                             "negative_prompt_embeds and negative_pooled_prompt_embeds")
        negative_prompt = negative_prompt or ""
        negative_prompt_2 = negative_prompt_2 or negative_prompt
        negatives = tower_texts(_negatives(negative_prompt, batch, prompt, "negative_prompt"),
                                _negatives(negative_prompt_2, batch, prompt, "negative_prompt_2"))
    n_chunks = None
    if long_prompt != "truncate":
        if positives is not None:
            n_chunks = _count(pairs, [p + n for p, n in zip(positives, negatives or [[]] * len(pairs))], long_prompt)
        else:
            n_chunks = max(1, prompt_embeds.shape[1] // pairs[0][1].model_max_length) if pairs else 1
            if negatives and _count(pairs, negatives, long_prompt) > n_chunks:
                raise ValueError("negative_prompt: needs more 75-token chunks than the given prompt_embeds hold")
    if positives is not None:
        prompt_embeds, pooled = _encode(pairs, positives, device, clip_skip, long_prompt, n_chunks)
        pooled_prompt_embeds = pooled_prompt_embeds if pooled_prompt_embeds is not None else pooled
    if pooled_prompt_embeds is None:
        raise ValueError("pooled_prompt_embeds: required with prompt_embeds (and none of the text encoders gives a "
                         "pooled output)")
    if do_classifier_free_guidance and negative_prompt_embeds is None:
        if zeros:
            negative_prompt_embeds = torch.zeros_like(prompt_embeds)
            negative_pooled_prompt_embeds = torch.zeros_like(pooled_prompt_embeds)
        else:
            negative_prompt_embeds, neg_pooled = _encode(
                pairs, negatives, device, clip_skip if long_prompt == "a1111" else None, long_prompt, n_chunks,
                max_length=prompt_embeds.shape[1], warn=False)
            if negative_pooled_prompt_embeds is None:
                negative_pooled_prompt_embeds = neg_pooled
    if do_classifier_free_guidance and negative_pooled_prompt_embeds is None:
        raise ValueError("negative_pooled_prompt_embeds: required with negative_prompt_embeds")
    dtype = text_encoder_2.dtype if text_encoder_2 is not None else (dtype or prompt_embeds.dtype)
    n = num_images_per_prompt
    out = [_repeat(prompt_embeds.to(device=device, dtype=dtype), n), None,
           _repeat(pooled_prompt_embeds.to(device=device, dtype=dtype), n), None]
    if do_classifier_free_guidance:
        out[1] = _repeat(negative_prompt_embeds.to(device=device, dtype=dtype), n)
        out[3] = _repeat(negative_pooled_prompt_embeds.to(device=device, dtype=dtype), n)
    return tuple(out)


def check_size(value, name: str, length: int = 2):
    """A tuple of `length` numbers, or None; ValueError naming the argument otherwise."""
    if value is None:
        return None
    if not isinstance(value, (tuple, list)) or len(value) != length or \
            not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        raise ValueError(f"{name}: expected a tuple of {length} numbers (height, width) or (top, left), got {value!r}")
    return tuple(value)


def time_ids(original_size, crops_coords_top_left, target_size, aesthetic_score=None) -> list[float]:
    """The micro-conditioning numbers: 6 (sizes and crop), or 5 with an aesthetic score instead of target_size."""
    tail = (aesthetic_score,) if aesthetic_score is not None else tuple(target_size)
    return list(tuple(original_size) + tuple(crops_coords_top_left) + tail)


def check_time_ids(unet, n_ids: int, projection_dim: int, requires_aesthetics_score: bool):
    """The UNet's added embedding must take n_ids * addition_time_embed_dim + projection_dim inputs."""
    per_id = unet.config.addition_time_embed_dim
    expected = unet.add_embedding.linear_1.in_features
    passed = per_id * n_ids + projection_dim
    if expected == passed:
        return
    hint = "The UNet's config or text_encoder_2.config.projection_dim does not match"
    if expected - passed == per_id and requires_aesthetics_score:
        hint = "This UNet takes a target size, not an aesthetic score: set requires_aesthetics_score=False"
    elif passed - expected == per_id and not requires_aesthetics_score:
        hint = "This UNet was trained with an aesthetic score: set requires_aesthetics_score=True"
    raise ValueError(f"requires_aesthetics_score: the UNet expects {expected} added-embedding inputs, the "
                     f"micro-conditioning gives {passed}. {hint} "
                     "(pipe.register_to_config(requires_aesthetics_score=...)).")
