"""Helpers for the text-encoder / tokenizer / safety-checker tests: tiny seeded models and varied prompts."""
from __future__ import annotations

import json
import random
from pathlib import Path

import torch

WORDS = ["a", "photo", "of", "an", "astronaut", "riding", "horse", "on", "mars", "Portrait", "CAT", "dog's",
         "highly", "detailed", "8k", "4K", "unreal-engine", "trending", "artstation", "by", "Greg", "Rutkowski",
         "café", "naïve", "Ångström", "résumé", "Zürich", "São", "Paulo", "日本語", "東京", "Москва", "ελληνικά",
         "العربية", "हिन्दी", "한국어", "🚀", "❤️", "👩‍🚀", "🐱🐶", "✨✨", "(masterpiece:1.2)", "[blurry]", "{a|b}",
         "---", "...", "!!!", "?!", "\"quoted\"", "'single'", "don't", "we're", "I'LL", "she'd", "you've", "x²",
         "½", "3.14159", "1,000,000", "#hashtag", "@user", "e-mail@example.com", "http://x.y/z?q=1", "<tag>",
         "C++", "$100", "100%", "a_b_c", "snake_case", "CamelCaseWord", "ＦＵＬＬＷＩＤＴＨ", "ﬁ", "e\u0301",
         "\u00a0nbsp", "tab\there", "new\nline", "sks", "<cat-toy>", "!", "!!", "hello!", "<|endoftext|>",
         "<|startoftext|>", "🏳️‍🌈", "Ω", "ß", "İstanbul", "ǅ"]


def varied_prompts(n: int = 300, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    prompts = ["", " ", "   many    spaces   ", "\t\n", "a photo of an astronaut riding a horse on mars",
               "A PHOTO OF AN ASTRONAUT", "word " * 90, "x" * 300, ",".join(["red"] * 40), "1234567890" * 5]
    while len(prompts) < n:
        k = rng.choice([1, 2, 3, 5, 8, 13, 40, 70])
        seps = [" ", " ", " ", ", ", "  ", "", "\t", " . "]
        prompts.append("".join(rng.choice(WORDS) + rng.choice(seps) for _ in range(k)).strip(rng.choice(["", " "])))
    return prompts


def write_vendored_tokenizer(folder, pad_token: str = "<|endoftext|>", model_max_length: int = 77) -> Path:
    """The bundled CLIP vocabulary written as a transformers tokenizer folder (vocab.json + merges.txt)."""
    from impasto.text.clip_tokenizer import vendored_vocab

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = vendored_vocab()
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": model_max_length, "do_lower_case": True,
              "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
              "pad_token": "<|endoftext|>"}
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    special = {k: config[k] for k in ("bos_token", "eos_token", "unk_token")}
    special["pad_token"] = pad_token  # SD 2.x folders: the map says "!" (and wins over tokenizer_config)
    (folder / "special_tokens_map.json").write_text(json.dumps(special), encoding="utf-8")
    return folder


def tiny_text_config(layers: int = 2, act: str = "quick_gelu", eos: int = 49407, vocab: int = 49408, **kw):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(vocab_size=vocab, hidden_size=32, intermediate_size=37, num_hidden_layers=layers,
                          num_attention_heads=4, projection_dim=32, max_position_embeddings=77, hidden_act=act,
                          eos_token_id=eos, **kw)


def tiny_clip_config(layers: int = 2):
    from transformers import CLIPConfig

    vision = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=layers, num_attention_heads=4,
                  image_size=32, patch_size=8, projection_dim=16, hidden_act="quick_gelu")
    text = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                vocab_size=1000, max_position_embeddings=77, bos_token_id=0, eos_token_id=2, pad_token_id=1)
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)


def seeded(module: torch.nn.Module, seed: int = 0, scale: float = 0.2) -> torch.nn.Module:
    """Give every parameter seeded random values (so layer norms and biases are exercised too)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    return module.eval()


def token_batch(batch: int = 3, length: int = 77, vocab: int = 49406, eos: int = 49407, seed: int = 0):
    """bos, random ids, eos at varied places, eos padding after (as the tokenizer produces)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (batch, length), generator=g)
    ids[:, 0] = 49406 if vocab > 49406 else vocab - 2
    mask = torch.ones_like(ids)
    for i in range(batch):
        end = [5, length - 1, 30][i % 3]
        ids[i, end:] = eos
        mask[i, end + 1:] = 0
    return ids, mask
