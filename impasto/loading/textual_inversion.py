"""Textual inversion: new tokens whose embeddings come from a file, as diffusers and A1111 save them.

Formats: diffusers `learned_embeds.bin` / `.safetensors` ({token: vector}), A1111 `.pt` (`string_to_param`)
and `.safetensors` (`emb_params`), a bare tensor (with `token=`), multi-vector embeddings (token, token_1,
...), and SDXL files with `clip_l` / `clip_g`, which load into both text encoders.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from . import weights as W
from .hub import resolve_file

logger = logging.getLogger("impasto")
TI_NAME_SAFE, TI_NAME = "learned_embeds.safetensors", "learned_embeds.bin"


def read_embedding_file(source, weight_name=None, subfolder=None, **hub):
    if isinstance(source, (dict, torch.Tensor)):
        return source
    path = Path(os.path.expanduser(str(source)))
    if path.is_file():
        return W.load_file(path) if path.suffix == ".safetensors" else W.safe_torch_load(path)
    names = [weight_name] if weight_name else [TI_NAME_SAFE, TI_NAME]
    for name in names:
        file = resolve_file(source, name, subfolder, required=name == names[-1], **hub)
        if file is not None:
            return W.load_file(file) if file.suffix == ".safetensors" else W.safe_torch_load(file)


def token_and_vectors(data, token: str | None, source="embedding") -> tuple[str, torch.Tensor]:
    """(token, vectors of shape (n, dim)) from any supported single-encoder format."""
    if isinstance(data, torch.Tensor):
        if token is None:
            raise ValueError(f"token: {source} is a bare tensor; pass token='<name>' to name it")
        found, vec = token, data
    elif "string_to_param" in data:  # A1111 .pt
        found, vec = data.get("name", token), data["string_to_param"]["*"]
    elif "emb_params" in data:  # A1111 .safetensors
        found, vec = token, data["emb_params"]
    elif len(data) == 1:  # diffusers {token: vector}
        found, vec = next(iter(data.items()))
    else:
        raise ValueError(f"{source}: not a textual-inversion embedding (expected one token, 'string_to_param' "
                         f"or 'emb_params'; found keys {sorted(data)[:6]})")
    if token is not None and found != token:
        logger.info("textual inversion: using token %r instead of the file's %r", token, found)
    token = token or found
    if not isinstance(token, str) or not token:
        raise ValueError(f"token: {source} names no token; pass token='<name>'")
    vec = vec.detach()
    return token, vec.reshape(1, -1) if vec.ndim == 1 else vec


def expand(token: str, vectors: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    return [(token if i == 0 else f"{token}_{i}", v) for i, v in enumerate(vectors)]


def add_embeddings(tokenizer, text_encoder, pairs: list[tuple[str, torch.Tensor]]) -> None:
    emb = text_encoder.get_input_embeddings()
    dim = emb.weight.shape[1]
    vocab = tokenizer.get_vocab()
    for tok, vec in pairs:
        if tok in vocab:
            raise ValueError(f"token: {tok!r} is already in the tokenizer's vocabulary; choose another name")
        if vec.shape[-1] != dim:
            raise ValueError(f"textual inversion for {tok!r}: vector size {vec.shape[-1]} does not match the text "
                             f"encoder's embedding size {dim}; is it for another model?")
    start = len(tokenizer)
    text_encoder.resize_token_embeddings(start + len(pairs))
    weight = text_encoder.get_input_embeddings().weight
    with torch.no_grad():
        for tok, vec in pairs:
            tokenizer.add_tokens(tok)
            weight[tokenizer.convert_tokens_to_ids(tok)] = vec.to(device=weight.device, dtype=weight.dtype)
    logger.info("textual inversion: added %s", ", ".join(t for t, _ in pairs))


class TextualInversionLoaderMixin:
    def load_textual_inversion(self, pretrained_model_name_or_path, token=None, tokenizer=None, text_encoder=None,
                               **kwargs):
        hub = {k: kwargs.pop(k) for k in ("local_files_only", "cache_dir", "revision", "token_") if k in kwargs}
        weight_name, subfolder = kwargs.pop("weight_name", None), kwargs.pop("subfolder", None)
        kwargs.pop("use_safetensors", None)
        if kwargs:
            raise ValueError(f"load_textual_inversion: unexpected arguments {sorted(kwargs)}")
        sources = pretrained_model_name_or_path if isinstance(pretrained_model_name_or_path, list) \
            else [pretrained_model_name_or_path]
        tokens = token if isinstance(token, list) else [token] * len(sources)
        explicit = tokenizer is not None or text_encoder is not None
        tokenizer = tokenizer or getattr(self, "tokenizer", None)
        text_encoder = text_encoder or getattr(self, "text_encoder", None)
        if tokenizer is None or text_encoder is None:
            raise ValueError("load_textual_inversion: the pipeline has no tokenizer/text_encoder; pass them")
        if isinstance(token, list) and len(sources) == 1 and isinstance(sources[0], torch.Tensor):
            sources, tokens = list(sources[0]), token  # one tensor holding n vectors for n tokens
        if len(tokens) != len(sources):
            raise ValueError(f"token: got {len(tokens)} tokens for {len(sources)} embeddings")
        plans = []  # (tokenizer, encoder, pairs) — everything is checked before anything changes
        for src, tok in zip(sources, tokens):
            data = read_embedding_file(src, weight_name, subfolder, **hub)
            if isinstance(data, dict) and "clip_l" in data and "clip_g" in data and not explicit:
                enc2, tok2 = getattr(self, "text_encoder_2", None), getattr(self, "tokenizer_2", None)
                if enc2 is None:
                    raise ValueError(f"{src}: an SDXL embedding (clip_l/clip_g) needs a pipeline with text_encoder_2")
                if tok is None:
                    raise ValueError(f"token: {src} is an SDXL embedding; pass token='<name>'")
                plans.append((tokenizer, text_encoder, expand(*token_and_vectors(data["clip_l"], tok, str(src)))))
                plans.append((tok2, enc2, expand(*token_and_vectors(data["clip_g"], tok, str(src)))))
            else:
                plans.append((tokenizer, text_encoder, expand(*token_and_vectors(data, tok, str(src)))))
        seen = {}
        for tk, _, pairs in plans:
            for t, _ in pairs:
                if (id(tk), t) in seen:
                    raise ValueError(f"token: {t!r} given twice")
                seen[(id(tk), t)] = True
        for tk, enc, pairs in plans:
            add_embeddings(tk, enc, pairs)

    def unload_textual_inversion(self, tokens=None, tokenizer=None, text_encoder=None):
        pairs = [(tokenizer, text_encoder)] if tokenizer is not None else \
            [(getattr(self, a, None), getattr(self, b, None))
             for a, b in (("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2"))]
        for tk, enc in pairs:
            if tk is None or enc is None:
                continue
            added = added_tokens(tk)
            names = list(added) if tokens is None else \
                [t for t in added if any(t == x or t.startswith(x + "_") for x in ([tokens] if isinstance(tokens, str) else tokens))]
            if not names:
                continue
            keep = [t for t in added if t not in names]
            weight = enc.get_input_embeddings().weight.detach().clone()
            base = len(tk) - len(added)
            kept_vectors = [weight[added[t]] for t in keep]
            tk.remove_tokens(names)
            enc.resize_token_embeddings(base + len(keep))
            with torch.no_grad():
                w = enc.get_input_embeddings().weight
                for t, v in zip(keep, kept_vectors):
                    w[tk.convert_tokens_to_ids(t)] = v

    def maybe_convert_prompt(self, prompt, tokenizer):
        """Expand each multi-vector token 'tok' in the prompt to 'tok tok_1 ... tok_n' (as diffusers)."""
        prompts = prompt if isinstance(prompt, list) else [prompt]
        added = added_tokens(tokenizer)
        out = []
        for p in prompts:
            for tok in sorted({t for t in added if not _is_suffix(t, added)}, key=len, reverse=True):
                if tok in p and f"{tok}_1" in added:
                    parts = [tok]
                    i = 1
                    while f"{tok}_{i}" in added:
                        parts.append(f"{tok}_{i}")
                        i += 1
                    p = p.replace(tok, " ".join(parts))
            out.append(p)
        return out if isinstance(prompt, list) else out[0]


def added_tokens(tokenizer) -> dict[str, int]:
    """{token: id} of the tokens added after the base vocabulary (textual inversion's)."""
    return {t: i for t, i in tokenizer.added_tokens_encoder.items() if i >= tokenizer.vocab_size}


def _is_suffix(token: str, added) -> bool:
    head, _, tail = token.rpartition("_")
    return tail.isdigit() and head in added
