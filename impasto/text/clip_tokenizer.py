"""CLIP's byte-level BPE tokenizer on the `tokenizers` library, giving the ids transformers' CLIPTokenizer gives.

Pipeline (as transformers builds it): NFC, runs of whitespace -> one space, lower-case; split into words,
contractions, single digits and runs of other symbols; byte-level symbols; BPE with "</w>" closing each
word; then <|startoftext|> ... <|endoftext|>. Special tokens (and tokens added for textual inversion) are
matched whole in the raw text first.

The vocabulary comes from a tokenizer folder (vocab.json + merges.txt and/or tokenizer.json) or from the
bundled CLIP merge list (`CLIPTokenizer.from_vendored()`), which every Stable Diffusion text encoder uses.
"""
from __future__ import annotations

import gzip
import json
import logging
import os
from functools import lru_cache
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import BPE

from ..loading.hub import resolve_file
from .bert_tokenizer import BatchEncoding

logger = logging.getLogger("impasto")

VENDORED_MERGES = Path(__file__).resolve().parent.parent / "data" / "bpe_simple_vocab_16e6.txt.gz"
SPLIT_PATTERN = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token")
# tokenizer settings that describe transformers' classes or files, not CLIP's fixed pipeline
DESCRIPTIVE_KEYS = frozenset({"errors", "do_lower_case", "add_prefix_space", "clean_up_tokenization_spaces",
                              "name_or_path", "tokenizer_class", "special_tokens_map_file", "tokenizer_file",
                              "backend", "is_local", "local_files_only", "model_input_names", "padding_side",
                              "truncation_side", "processor_class", "extra_special_tokens"})


def byte_symbols() -> list[str]:
    """GPT-2's printable stand-ins for the 256 byte values, in CLIP's vocabulary order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(extra))]


@lru_cache(maxsize=1)
def vendored_vocab() -> tuple[dict[str, int], tuple[tuple[str, str], ...]]:
    """The 49,408-entry CLIP vocabulary and its merges, derived from the bundled merge list."""
    with gzip.open(VENDORED_MERGES, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = tuple(tuple(line.split()) for line in lines[1:1 + 49152 - 256 - 2])
    symbols = byte_symbols()
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [BOS, EOS]
    return {t: i for i, t in enumerate(tokens)}, merges


def _content(value) -> str | None:
    """A token from a config: a string or an AddedToken dict ({"content": ...})."""
    if isinstance(value, dict):
        value = value.get("content")
    if value is not None and not isinstance(value, str):
        raise ValueError(f"special token: expected a string or {{'content': ...}}, got {value!r}")
    return value


def _read_json(file) -> dict:
    try:
        return json.loads(Path(file).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{file}: not valid JSON ({e})") from None


def _read_merges(file) -> list[tuple[str, str]]:
    merges = []
    for line in Path(file).read_text(encoding="utf-8").split("\n"):
        if line.startswith("#version") or not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(f"{file}: a merge line must hold two symbols, got {line!r}")
        merges.append(tuple(parts))
    return merges


def plan_lengths(padding, truncation, max_length, model_max_length: int) -> tuple[int | str | None, int | None]:
    """(pad target: a length, "longest" or None; truncation length or None), with transformers' defaults."""
    if padding in (True, "longest"):
        padding = "longest"
    elif padding in (False, None, "do_not_pad"):
        padding = None
    elif padding != "max_length":
        raise ValueError(f"padding: expected True/'longest', 'max_length' or False/'do_not_pad', got {padding!r}")
    if truncation is None:
        truncation = max_length is not None and padding is None
    if truncation in ("longest_first", "only_first"):
        truncation = True
    elif truncation == "do_not_truncate":
        truncation = False
    if not isinstance(truncation, bool):
        raise ValueError(f"truncation: expected a bool or 'longest_first', got {truncation!r}")
    if max_length is not None and (not isinstance(max_length, int) or max_length < 1):
        raise ValueError(f"max_length: expected a positive int, got {max_length!r}")
    length = max_length if max_length is not None else model_max_length
    return (length if padding == "max_length" else padding), (length if truncation else None)


def finish_batch(sequences: list[list[int]], single: bool, pad_to, pad_id: int | None, multiple: int | None,
                 return_tensors, attention_mask: bool) -> BatchEncoding:
    """Pad on the right, build attention masks, convert to tensors."""
    if pad_to == "longest":
        pad_to = max((len(s) for s in sequences), default=0)
    if pad_to is not None and multiple:
        pad_to = -(-pad_to // multiple) * multiple
    if pad_to is not None and pad_id is None:
        raise ValueError("padding: this tokenizer has no pad_token")
    ids, masks = [], []
    for s in sequences:
        n = max(0, (pad_to or 0) - len(s))
        ids.append(s + [pad_id] * n)
        masks.append([1] * len(s) + [0] * n)
    data = {"input_ids": ids, "attention_mask": masks} if attention_mask else {"input_ids": ids}
    if return_tensors is None:
        return BatchEncoding({k: v[0] if single else v for k, v in data.items()})
    if len({len(s) for s in ids}) > 1:
        raise ValueError("padding: sequences of different lengths cannot form a tensor; "
                         "use padding='longest' or 'max_length'")
    if return_tensors == "pt":
        import torch

        return BatchEncoding({k: torch.tensor(v, dtype=torch.long).reshape(len(v), -1) for k, v in data.items()})
    if return_tensors == "np":
        import numpy as np

        return BatchEncoding({k: np.array(v, dtype=np.int64).reshape(len(v), -1) for k, v in data.items()})
    raise ValueError(f"return_tensors: expected None, 'pt' or 'np', got {return_tensors!r}")


class CLIPTokenizer:
    """transformers-compatible CLIP tokenizer (CLIPTokenizerFast is the same class)."""

    vocab_files_names = {"vocab_file": "vocab.json", "merges_file": "merges.txt", "tokenizer_file": "tokenizer.json"}
    model_input_names = ["input_ids", "attention_mask"]
    padding_side = "right"

    def __init__(self, vocab_file=None, merges_file=None, *, vocab: dict | str | None = None, merges=None,
                 model_max_length: int = 77, bos_token: str = BOS, eos_token: str = EOS, pad_token: str = EOS,
                 unk_token: str = EOS, **kwargs):
        vocab = vocab if vocab is not None else vocab_file
        merges = merges if merges is not None else merges_file
        if vocab is None and merges is None:
            vocab, merges = vendored_vocab()
        if isinstance(vocab, (str, os.PathLike)):
            vocab = _read_json(vocab)
        if isinstance(merges, (str, os.PathLike)):
            merges = _read_merges(merges)
        if not isinstance(vocab, dict) or merges is None:
            raise ValueError("vocab/merges: expected a vocab dict (or vocab.json path) and a merges list "
                             "(or merges.txt path); give both or neither (neither uses the bundled CLIP vocab)")
        if not isinstance(model_max_length, int) or model_max_length < 2:
            raise ValueError(f"model_max_length: expected an int >= 2, got {model_max_length!r}")
        self.model_max_length = model_max_length
        unknown = sorted(set(kwargs) - DESCRIPTIVE_KEYS)
        if unknown:
            logger.info("CLIPTokenizer: ignoring settings %s", ", ".join(unknown))
        self._vocab = dict(vocab)
        self._merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in merges]
        self._special = {"bos_token": _content(bos_token), "eos_token": _content(eos_token),
                         "unk_token": _content(unk_token), "pad_token": _content(pad_token)}
        for key, token in self._special.items():
            if token is not None and token not in vocab:
                raise ValueError(f"{key}: {token!r} is not in the vocabulary")
        self._tokenizer = self._build_backend()
        self._warned_long = False

    def _build_backend(self) -> Tokenizer:
        tok = Tokenizer(BPE(vocab=self._vocab, merges=self._merges, unk_token=self._special["unk_token"],
                            end_of_word_suffix="</w>", continuing_subword_prefix="", fuse_unk=False, dropout=None))
        tok.normalizer = normalizers.Sequence(
            [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="removed", invert=True),
             pre_tokenizers.ByteLevel(add_prefix_space=False)])
        tok.decoder = decoders.ByteLevel()
        specials = []
        for key in ("pad_token", "bos_token", "eos_token", "unk_token"):
            token = self._special[key]
            if token is not None and token not in specials:
                specials.append(token)
        tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
        bos, eos = self._special["bos_token"], self._special["eos_token"]
        tok.post_processor = processors.RobertaProcessing((eos, tok.token_to_id(eos)), (bos, tok.token_to_id(bos)),
                                                          trim_offsets=False, add_prefix_space=False)
        return tok

    # ---- construction from files ------------------------------------------------------------------------
    @classmethod
    def from_vendored(cls, pad_token: str = EOS, model_max_length: int = 77, **kwargs) -> "CLIPTokenizer":
        """The standard CLIP tokenizer from the bundled merge list (no files, no network). SD 2.x and SDXL's
        second tokenizer pad with "!"."""
        vocab, merges = vendored_vocab()
        return cls(vocab=vocab, merges=merges, pad_token=pad_token, model_max_length=model_max_length, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, subfolder: str | None = None, *,
                        local_files_only: bool = False, cache_dir=None, revision=None, token=None, **overrides):
        hub = dict(local_files_only=local_files_only, cache_dir=cache_dir, revision=revision, token=token)

        def find(name):
            return resolve_file(pretrained_model_name_or_path, name, subfolder, required=False, **hub)

        settings: dict = {}
        config_file, map_file = find("tokenizer_config.json"), find("special_tokens_map.json")
        config = _read_json(config_file) if config_file else {}
        for source in (config, _read_json(map_file) if map_file else {}):  # the map wins, as in transformers
            settings.update({k: _content(source[k]) for k in SPECIAL_KEYS if source.get(k) is not None})
        if isinstance(config.get("model_max_length"), int) and config["model_max_length"] < 10**6:
            settings["model_max_length"] = config["model_max_length"]
        elif config_file is not None:
            logger.info("%s: no usable model_max_length in tokenizer_config.json; using CLIP's 77", config_file)

        vocab_file, merges_file, json_file = find("vocab.json"), find("merges.txt"), find("tokenizer.json")
        data = _read_json(json_file) if json_file is not None else {}
        if vocab_file is not None and merges_file is not None:
            vocab, merges = _read_json(vocab_file), _read_merges(merges_file)
        elif json_file is not None:
            model = data.get("model") or {}
            if model.get("type") != "BPE" or "vocab" not in model or "merges" not in model:
                raise ValueError(f"{json_file}: expected a BPE model with vocab and merges")
            vocab, merges = model["vocab"], model["merges"]
        else:
            where = f"{pretrained_model_name_or_path}/{subfolder}" if subfolder else str(pretrained_model_name_or_path)
            raise FileNotFoundError(f"{where}: no tokenizer files (vocab.json + merges.txt, or tokenizer.json)")
        # tokens added after training (textual inversion), in the places transformers keeps them
        added = {int(item["id"]): item for item in data.get("added_tokens") or []}
        for token_id, item in (config.get("added_tokens_decoder") or {}).items():
            added.setdefault(int(token_id), {"content": _content(item), **(item if isinstance(item, dict) else {})})
        added_file = find("added_tokens.json")
        if added_file is not None:
            for content, token_id in _read_json(added_file).items():
                added.setdefault(int(token_id), {"content": content})
        settings.update(overrides)
        tokenizer = cls(vocab=vocab, merges=merges, **settings)
        tokenizer._restore_added(added, str(pretrained_model_name_or_path))
        tokenizer.name_or_path = str(pretrained_model_name_or_path)
        return tokenizer

    def _restore_added(self, added: dict[int, dict], source: str) -> None:
        for token_id in sorted(added):
            item = added[token_id]
            content = item["content"]
            if content in self._vocab or self._tokenizer.token_to_id(content) is not None:
                continue
            flags = {k: bool(item[k]) for k in ("single_word", "lstrip", "rstrip", "normalized") if k in item}
            special = bool(item.get("special", False))
            flags.setdefault("normalized", not special)
            self._tokenizer.add_tokens([AddedToken(content, special=special, **flags)])
            got = self._tokenizer.token_to_id(content)
            if got != token_id:
                logger.warning("%s: added token %r gets id %d here, its file says %d", source, content, got, token_id)

    # ---- saving -----------------------------------------------------------------------------------------
    def save_pretrained(self, save_directory, **kwargs) -> tuple[str, ...]:
        """Write vocab.json, merges.txt, tokenizer.json, tokenizer_config.json and special_tokens_map.json."""
        out = Path(save_directory)
        if out.is_file():
            raise ValueError(f"save_directory: {out} is a file, expected a folder")
        out.mkdir(parents=True, exist_ok=True)
        (out / "vocab.json").write_text(json.dumps(self._vocab, ensure_ascii=False), encoding="utf-8")
        (out / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in self._merges),
                                        encoding="utf-8")
        self._tokenizer.save(str(out / "tokenizer.json"))
        specials = {k: v for k, v in self._special.items() if v is not None}
        decoder = {str(i): {"content": t.content, "lstrip": t.lstrip, "normalized": t.normalized, "rstrip": t.rstrip,
                            "single_word": t.single_word, "special": t.special}
                   for i, t in sorted(self.added_tokens_decoder.items())}
        config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": self.model_max_length,
                  "do_lower_case": True, "errors": "replace", "clean_up_tokenization_spaces": False,
                  "add_prefix_space": False, "added_tokens_decoder": decoder, **specials}
        (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n",
                                                   encoding="utf-8")
        (out / "special_tokens_map.json").write_text(json.dumps(specials, indent=2) + "\n", encoding="utf-8")
        return tuple(str(out / n) for n in ("tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                                            "merges.txt", "tokenizer.json"))

    # ---- vocabulary -------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    @property
    def vocab_size(self) -> int:
        return len(self._vocab)

    @property
    def backend_tokenizer(self) -> Tokenizer:
        return self._tokenizer

    def get_vocab(self) -> dict[str, int]:
        return self._tokenizer.get_vocab(with_added_tokens=True)

    @property
    def added_tokens_decoder(self) -> dict[int, AddedToken]:
        return dict(self._tokenizer.get_added_tokens_decoder())

    @property
    def added_tokens_encoder(self) -> dict[str, int]:
        return {t.content: i for i, t in sorted(self.added_tokens_decoder.items())}

    def get_added_vocab(self) -> dict[str, int]:
        return self.added_tokens_encoder

    def add_tokens(self, new_tokens, special_tokens: bool = False) -> int:
        """Add whole-word tokens (textual inversion); returns how many were new."""
        if isinstance(new_tokens, (str, AddedToken)):
            new_tokens = [new_tokens]
        if not all(isinstance(t, (str, AddedToken)) for t in new_tokens):
            raise ValueError(f"new_tokens: expected strings or AddedToken objects, got {new_tokens!r}")
        if special_tokens:
            return self._tokenizer.add_special_tokens(list(new_tokens))
        return self._tokenizer.add_tokens(list(new_tokens))

    def remove_tokens(self, tokens) -> None:
        """Drop added (non-special) tokens again, e.g. when unloading textual inversion embeddings."""
        tokens = {tokens} if isinstance(tokens, str) else set(tokens)
        keep = [t for _, t in sorted(self.added_tokens_decoder.items())
                if t.content not in tokens and t.content not in self._vocab]
        unknown = tokens - set(self.added_tokens_encoder)
        if unknown:
            raise ValueError(f"tokens: not added tokens of this tokenizer: {sorted(unknown)}")
        self._tokenizer = self._build_backend()
        for t in keep:
            if t.special:
                self._tokenizer.add_special_tokens([t])
            else:
                self._tokenizer.add_tokens([t])

    def convert_tokens_to_ids(self, tokens):
        if isinstance(tokens, str):
            found = self._tokenizer.token_to_id(tokens)
            return self.unk_token_id if found is None else found
        return [self.convert_tokens_to_ids(t) for t in tokens]

    def convert_ids_to_tokens(self, ids, skip_special_tokens: bool = False):
        if isinstance(ids, int):
            return self._tokenizer.id_to_token(ids)
        skip = set(self.all_special_ids) if skip_special_tokens else set()
        return [self._tokenizer.id_to_token(int(i)) for i in ids if int(i) not in skip]

    # ---- special tokens ---------------------------------------------------------------------------------
    def _id(self, key: str) -> int | None:
        token = self._special[key]
        return None if token is None else self._tokenizer.token_to_id(token)

    bos_token = property(lambda self: self._special["bos_token"])
    eos_token = property(lambda self: self._special["eos_token"])
    pad_token = property(lambda self: self._special["pad_token"])
    unk_token = property(lambda self: self._special["unk_token"])
    bos_token_id = property(lambda self: self._id("bos_token"))
    eos_token_id = property(lambda self: self._id("eos_token"))
    pad_token_id = property(lambda self: self._id("pad_token"))
    unk_token_id = property(lambda self: self._id("unk_token"))

    @property
    def special_tokens_map(self) -> dict[str, str]:
        return {k: v for k, v in self._special.items() if v is not None}

    @property
    def all_special_tokens(self) -> list[str]:
        return list(dict.fromkeys(self.special_tokens_map.values()))

    @property
    def all_special_ids(self) -> list[int]:
        return [self._tokenizer.token_to_id(t) for t in self.all_special_tokens]

    # ---- encoding ---------------------------------------------------------------------------------------
    def tokenize(self, text: str, **kwargs) -> list[str]:
        if not isinstance(text, str):
            raise ValueError(f"text: expected a string, got {type(text).__name__}")
        return self._tokenizer.encode(text, add_special_tokens=False).tokens

    def encode_ids(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text, without bos/eos, untruncated."""
        return [e.ids for e in self._tokenizer.encode_batch(list(texts), add_special_tokens=False)]

    def __call__(self, text, text_pair=None, add_special_tokens: bool = True, padding=False, truncation=None,
                 max_length: int | None = None, return_tensors=None, return_attention_mask: bool | None = None,
                 pad_to_multiple_of: int | None = None, verbose: bool = True, **kwargs) -> BatchEncoding:
        if text_pair is not None:
            raise ValueError("text_pair: sentence pairs are not used by CLIP; pass one text or a list of texts")
        single = isinstance(text, str)
        texts = [text] if single else text
        if not isinstance(texts, (list, tuple)) or not all(isinstance(t, str) for t in texts):
            raise ValueError(f"text: expected a string or a list of strings, got {type(text).__name__}")
        for key in ("return_token_type_ids", "return_overflowing_tokens", "return_special_tokens_mask",
                    "return_offsets_mapping", "return_length"):
            if kwargs.pop(key, False):
                raise ValueError(f"{key}: not supported by impasto's CLIPTokenizer")
        if kwargs:
            raise ValueError(f"unexpected arguments: {', '.join(sorted(kwargs))}")
        pad_to, cut_to = plan_lengths(padding, truncation, max_length, self.model_max_length)
        extra = 2 if add_special_tokens else 0
        if cut_to is not None and cut_to < extra:
            raise ValueError(f"max_length: {cut_to} leaves no room for the {extra} special tokens")
        sequences = []
        for i, ids in enumerate(self.encode_ids(texts)):
            if cut_to is not None and len(ids) + extra > cut_to:
                dropped = len(ids) + extra - cut_to
                if verbose:
                    logger.warning("CLIPTokenizer: text %d has %d tokens, more than max_length %d; the last %d "
                                   "were dropped: %r", i, len(ids) + extra, cut_to, dropped,
                                   self.decode(ids[len(ids) - dropped:]))
                ids = ids[:cut_to - extra]
            elif cut_to is None and verbose and len(ids) + extra > self.model_max_length and not self._warned_long:
                self._warned_long = True
                logger.warning("CLIPTokenizer: text %d has %d tokens, more than model_max_length %d; the text "
                               "encoder cannot take it whole (said once per tokenizer)", i, len(ids) + extra,
                               self.model_max_length)
            sequences.append([self.bos_token_id, *ids, self.eos_token_id] if add_special_tokens else ids)
        return finish_batch(sequences, single, pad_to, self.pad_token_id, pad_to_multiple_of, return_tensors,
                            return_attention_mask is not False)

    def encode(self, text: str, add_special_tokens: bool = True, padding=False, truncation=None,
               max_length: int | None = None, return_tensors=None, **kwargs):
        out = self(text, add_special_tokens=add_special_tokens, padding=padding, truncation=truncation,
                   max_length=max_length, return_tensors=return_tensors, **kwargs)
        return out["input_ids"]

    # ---- decoding ---------------------------------------------------------------------------------------
    def decode(self, token_ids, skip_special_tokens: bool = False, **kwargs) -> str:
        if hasattr(token_ids, "tolist"):
            token_ids = token_ids.tolist()
        if isinstance(token_ids, int):
            token_ids = [token_ids]
        text = self._tokenizer.decode([int(i) for i in token_ids], skip_special_tokens=skip_special_tokens)
        return text.replace("</w>", " ").strip()

    def batch_decode(self, sequences, skip_special_tokens: bool = False, **kwargs) -> list[str]:
        if hasattr(sequences, "tolist"):
            sequences = sequences.tolist()
        return [self.decode(s, skip_special_tokens=skip_special_tokens) for s in sequences]

    def __repr__(self):
        return (f"CLIPTokenizer(vocab_size={self.vocab_size}, added={len(self) - self.vocab_size}, "
                f"model_max_length={self.model_max_length}, pad_token={self.pad_token!r})")


CLIPTokenizerFast = CLIPTokenizer
