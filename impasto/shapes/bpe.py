"""A small BPE vocabulary in the CLIP tokenizer format, learned from the shapes world's words.

CLIP's byte-level rules: every byte maps to a printable character (`byte_alphabet`), a word ends with
"</w>" on its last symbol, vocab.json lists the 256 byte symbols, the same with "</w>", one entry per merge
in merge order, then <|startoftext|> and <|endoftext|>. merges.txt starts with a "#version" line. Any CLIP
tokenizer reads the files, and every word of the world becomes one token.
"""
from __future__ import annotations

import json
import os
from collections import Counter

BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def byte_alphabet() -> dict:
    """CLIP/GPT-2 byte -> printable unicode character table."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def learn_merges(words) -> list:
    """Merge the most frequent adjacent pair (ties: alphabetical) until every word is a single symbol."""
    alphabet = byte_alphabet()
    spelled = {}
    for word in sorted(set(words)):
        symbols = [alphabet[b] for b in word.encode("utf-8")]
        symbols[-1] += "</w>"
        spelled[word] = symbols
    merges = []
    while True:
        pairs = Counter()
        for symbols in spelled.values():
            pairs.update(zip(symbols, symbols[1:]))
        if not pairs:
            return merges
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        for word, symbols in spelled.items():
            merged, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    merged.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            spelled[word] = merged


def write_tokenizer(directory: str, words, model_max_length: int = 77) -> dict:
    """Write vocab.json, merges.txt, tokenizer_config.json and special_tokens_map.json; return the vocab."""
    os.makedirs(directory, exist_ok=True)
    alphabet = list(byte_alphabet().values())
    merges = learn_merges(words)
    tokens = alphabet + [c + "</w>" for c in alphabet] + ["".join(m) for m in merges] + [BOS, EOS]
    vocab = {token: i for i, token in enumerate(tokens)}
    with open(os.path.join(directory, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(os.path.join(directory, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    special = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}
    config = dict(special, tokenizer_class="CLIPTokenizer", model_max_length=model_max_length,
                  do_lower_case=True, errors="replace", add_prefix_space=False,
                  clean_up_tokenization_spaces=True)
    with open(os.path.join(directory, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
    with open(os.path.join(directory, "special_tokens_map.json"), "w", encoding="utf-8") as f:
        json.dump(special, f, indent=2)
    return vocab
