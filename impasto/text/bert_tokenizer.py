"""BERT WordPiece tokenizer (the LDM text-to-image `tokenizer/` folder), built on the `tokenizers` library.

A folder holds `vocab.txt` (one token a line, id = line number), `tokenizer_config.json` (`do_lower_case`,
`strip_accents`, `tokenize_chinese_chars`, `model_max_length`, special tokens) and optionally
`special_tokens_map.json` / `tokenizer.json`. The pipeline is BERT's: clean text, split CJK characters, lower-case
and strip accents as configured (accents follow `do_lower_case` when `strip_accents` is unset), split on
whitespace and punctuation, greedy longest-match WordPiece with `##` continuations, then `[CLS] A [SEP]`
(`[CLS] A [SEP] B [SEP]` for pairs). Special tokens written in the text are matched verbatim (case-sensitive).
Ids equal transformers' `BertTokenizer` for the same folder.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import WordPiece

logger = logging.getLogger("impasto")

VERY_LARGE_INTEGER = int(1e30)  # model_max_length when the folder does not give one (as transformers)
SPECIAL_KEYS = ("unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
# tokenizer_config.json keys that only describe the file or transformers' Python classes
_DESCRIPTIVE = {"name_or_path", "tokenizer_class", "special_tokens_map_file", "clean_up_tokenization_spaces",
                "added_tokens_decoder", "model_input_names", "extra_special_tokens", "do_basic_tokenize",
                "never_split", "tokenizer_file", "vocab_file", "backend", "processor_class", "auto_map",
                "additional_special_tokens", "full_tokenizer_file", "max_len", "init_inputs", "is_local",
                "local_files_only"}


class BatchEncoding(dict):
    """Dict of `input_ids`, `token_type_ids`, `attention_mask`, readable as attributes (`enc.input_ids`)."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def to(self, device):
        return BatchEncoding({k: v.to(device) if hasattr(v, "to") else v for k, v in self.items()})


def _token_text(value) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict):  # AddedToken as serialised by transformers
        return value.get("content")
    return str(value)


def load_vocab(file: str | os.PathLike) -> dict[str, int]:
    with open(file, encoding="utf-8") as f:
        tokens = [line.rstrip("\n") for line in f]
    if tokens and tokens[-1] == "":
        tokens.pop()
    if not tokens:
        raise ValueError(f"{file}: empty vocabulary, expected one WordPiece token per line")
    vocab = {}
    for i, token in enumerate(tokens):
        vocab.setdefault(token, i)  # a repeated line keeps its first id, as transformers
    return vocab


class BertTokenizer:
    """WordPiece tokenizer with transformers' `__call__` (padding / truncation / return_tensors)."""

    vocab_files_names = {"vocab_file": "vocab.txt"}
    model_input_names = ["input_ids", "token_type_ids", "attention_mask"]

    def __init__(self, vocab_file: str | os.PathLike | None = None, do_lower_case: bool = True,
                 unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]", cls_token="[CLS]", mask_token="[MASK]",
                 tokenize_chinese_chars: bool = True, strip_accents: bool | None = None,
                 model_max_length: int | None = None, padding_side: str = "right", truncation_side: str = "right",
                 vocab: dict[str, int] | None = None, tokenizer_object: Tokenizer | None = None, **kwargs):
        unknown = sorted(set(kwargs) - _DESCRIPTIVE)
        if unknown:
            logger.info("BertTokenizer: ignoring tokenizer_config keys %s", ", ".join(unknown))
        for name, side in (("padding_side", padding_side), ("truncation_side", truncation_side)):
            if side not in ("left", "right"):
                raise ValueError(f"{name}: expected 'left' or 'right', got {side!r}")
        self.do_lower_case = do_lower_case
        self.strip_accents = strip_accents
        self.tokenize_chinese_chars = tokenize_chinese_chars
        self.model_max_length = int(model_max_length) if model_max_length is not None else VERY_LARGE_INTEGER
        self.padding_side, self.truncation_side = padding_side, truncation_side
        specials = dict(unk_token=unk_token, sep_token=sep_token, pad_token=pad_token, cls_token=cls_token,
                        mask_token=mask_token)
        for key, value in specials.items():
            setattr(self, key, _token_text(value))
        if tokenizer_object is not None:
            self._tok = tokenizer_object
        else:
            if vocab is None:
                if vocab_file is None:
                    raise ValueError("vocab_file: expected the path of a vocab.txt (or pass vocab=dict)")
                vocab = load_vocab(vocab_file)
            self._tok = self._build(vocab)
        self._tok.no_truncation()
        self._tok.no_padding()
        present = [t for t in (getattr(self, k) for k in SPECIAL_KEYS) if t is not None]
        self._tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in present])
        if tokenizer_object is None:
            self._set_post_processor()

    def _build(self, vocab: dict[str, int]) -> Tokenizer:
        if self.unk_token not in vocab:
            raise ValueError(f"unk_token: {self.unk_token!r} is not in the vocabulary")
        tok = Tokenizer(WordPiece(vocab, unk_token=self.unk_token, max_input_chars_per_word=100))
        tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=self.tokenize_chinese_chars,
                                                    strip_accents=self.strip_accents, lowercase=self.do_lower_case)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece(prefix="##")
        return tok

    def _set_post_processor(self):
        cls, sep = self.cls_token, self.sep_token
        cls_id, sep_id = self._tok.token_to_id(cls), self._tok.token_to_id(sep)
        self._tok.post_processor = processors.TemplateProcessing(
            single=f"{cls}:0 $A:0 {sep}:0", pair=f"{cls}:0 $A:0 {sep}:0 $B:1 {sep}:1",
            special_tokens=[(cls, cls_id), (sep, sep_id)])

    # ---- loading and saving ---------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, subfolder: str | None = None, local_files_only=False,
                        cache_dir=None, revision=None, token=None, **overrides):
        """Read a tokenizer folder (or a hub id, resolved offline-first); keyword arguments override the config."""
        from ..loading.hub import resolve_file

        hub = dict(local_files_only=local_files_only, cache_dir=cache_dir, revision=revision, token=token)

        def find(name, required=False):
            return resolve_file(pretrained_model_name_or_path, name, subfolder, required=required, **hub)

        config = {}
        for name in ("special_tokens_map.json", "tokenizer_config.json"):  # the config wins over the map
            file = find(name)
            if file is not None:
                with open(file, encoding="utf-8") as f:
                    config.update({k: v for k, v in json.load(f).items()})
        config = {k: _token_text(v) if k in SPECIAL_KEYS else v for k, v in config.items()}
        config.update(overrides)
        vocab_file = find("vocab.txt")
        if vocab_file is None:
            tokenizer_json = find("tokenizer.json")
            if tokenizer_json is None:
                where = Path(str(pretrained_model_name_or_path)) / (subfolder or "")
                raise FileNotFoundError(f"{where}: no vocab.txt or tokenizer.json for BertTokenizer")
            config["tokenizer_object"] = Tokenizer.from_file(str(tokenizer_json))
        config.pop("vocab_file", None)
        obj = cls(vocab_file=vocab_file, **config)
        obj.add_declared_tokens(config.get("added_tokens_decoder") or {})
        obj.name_or_path = str(pretrained_model_name_or_path)
        return obj

    def add_declared_tokens(self, entries: dict) -> None:
        """Add the tokens of tokenizer_config.json's `added_tokens_decoder` that the vocabulary lacks, in id order."""
        for index, entry in sorted(entries.items(), key=lambda kv: int(kv[0])):
            entry = entry if isinstance(entry, dict) else {"content": str(entry)}
            content = entry.get("content")
            if not content or self._tok.token_to_id(content) is not None:
                continue
            special = bool(entry.get("special", False))
            token = AddedToken(content, single_word=entry.get("single_word", False), lstrip=entry.get("lstrip", False),
                               rstrip=entry.get("rstrip", False), normalized=entry.get("normalized", not special),
                               special=special)
            if special:
                self._tok.add_special_tokens([token])
            else:
                self._tok.add_tokens([token])
            if self._tok.token_to_id(content) != int(index):
                logger.warning("added token %r got id %d, but tokenizer_config.json declares %s",
                               content, self._tok.token_to_id(content), index)

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs) -> tuple[str, ...]:
        out = Path(save_directory)
        if out.is_file():
            raise ValueError(f"save_directory: {out} is a file, expected a folder")
        out.mkdir(parents=True, exist_ok=True)
        vocab = sorted(self._tok.get_vocab(with_added_tokens=False).items(), key=lambda kv: kv[1])
        (out / "vocab.txt").write_text("".join(t + "\n" for t, _ in vocab), encoding="utf-8")
        specials = {k: getattr(self, k) for k in SPECIAL_KEYS}
        config = dict(specials, do_lower_case=self.do_lower_case, strip_accents=self.strip_accents,
                      tokenize_chinese_chars=self.tokenize_chinese_chars, model_max_length=self.model_max_length,
                      padding_side=self.padding_side, truncation_side=self.truncation_side,
                      tokenizer_class=type(self).__name__)
        (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        (out / "special_tokens_map.json").write_text(json.dumps(specials, indent=2) + "\n", encoding="utf-8")
        return tuple(str(out / n) for n in ("tokenizer_config.json", "special_tokens_map.json", "vocab.txt"))

    # ---- vocabulary ---------------------------------------------------------------------------------
    @property
    def backend_tokenizer(self) -> Tokenizer:
        return self._tok

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=False)

    def __len__(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def get_vocab(self) -> dict[str, int]:
        return self._tok.get_vocab(with_added_tokens=True)

    def convert_tokens_to_ids(self, tokens):
        unk = self._tok.token_to_id(self.unk_token)
        if isinstance(tokens, str):
            found = self._tok.token_to_id(tokens)
            return unk if found is None else found
        return [self.convert_tokens_to_ids(t) for t in tokens]

    def convert_ids_to_tokens(self, ids, skip_special_tokens: bool = False):
        if isinstance(ids, int):
            return self._tok.id_to_token(ids)
        special = set(self.all_special_ids) if skip_special_tokens else set()
        return [self._tok.id_to_token(int(i)) for i in ids if int(i) not in special]

    @property
    def all_special_tokens(self) -> list[str]:
        return [t for t in (getattr(self, k) for k in SPECIAL_KEYS) if t is not None]

    @property
    def all_special_ids(self) -> list[int]:
        return [self.convert_tokens_to_ids(t) for t in self.all_special_tokens]

    def __getattr__(self, name):
        # unk_token_id, sep_token_id, pad_token_id, cls_token_id, mask_token_id
        if name.endswith("_token_id") and name[: -len("_id")] in SPECIAL_KEYS:
            token = getattr(self, name[: -len("_id")])
            return None if token is None else self._tok.token_to_id(token)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    # ---- encoding -----------------------------------------------------------------------------------
    def tokenize(self, text: str, **kwargs) -> list[str]:
        return self._tok.encode(text, add_special_tokens=False).tokens

    def encode(self, text, text_pair=None, add_special_tokens: bool = True, **kwargs) -> list[int]:
        return self(text, text_pair, add_special_tokens=add_special_tokens, **kwargs)["input_ids"]

    def __call__(self, text, text_pair=None, add_special_tokens: bool = True, padding=False, truncation=None,
                 max_length: int | None = None, return_tensors: str | None = None,
                 return_token_type_ids: bool | None = None, return_attention_mask: bool | None = None,
                 padding_side: str | None = None, **kwargs) -> BatchEncoding:
        """Encode a string or a list of strings (and optional pairs) as transformers' tokenizers do.

        padding: False | True / "longest" | "max_length"; truncation: None | bool | "longest_first" |
        "only_first" | "only_second". A `max_length` with neither padding nor truncation truncates (as
        transformers). Dropped tokens are reported with a warning naming the removed text.
        """
        batched = isinstance(text, (list, tuple))
        texts = list(text) if batched else [text]
        if not all(isinstance(t, str) for t in texts):
            raise ValueError(f"text: expected a string or a list of strings, got {type(text).__name__}")
        pairs = None
        if text_pair is not None:
            pairs = list(text_pair) if isinstance(text_pair, (list, tuple)) else [text_pair]
            if len(pairs) != len(texts) or not all(isinstance(t, str) for t in pairs):
                raise ValueError("text_pair: expected as many strings as text")
        if kwargs.get("stride") or kwargs.get("return_overflowing_tokens") or kwargs.get("is_split_into_words"):
            raise ValueError("BertTokenizer: stride, return_overflowing_tokens and is_split_into_words are not supported")
        padding, truncation, max_length = self._strategies(padding, truncation, max_length)
        tok = self._tok
        if truncation:
            strategy = "longest_first" if truncation is True else truncation
            if strategy not in ("longest_first", "only_first", "only_second"):
                raise ValueError(f"truncation: expected a bool or 'longest_first'/'only_first'/'only_second', got {truncation!r}")
            tok.enable_truncation(max_length, strategy=strategy, direction=self.truncation_side)
        side = padding_side or self.padding_side
        if padding:
            tok.enable_padding(direction=side, pad_id=self.pad_token_id, pad_token=self.pad_token,
                               length=max_length if padding == "max_length" else None,
                               pad_to_multiple_of=kwargs.get("pad_to_multiple_of"))
        try:
            inputs = texts if pairs is None else list(zip(texts, pairs))
            encodings = tok.encode_batch(inputs, add_special_tokens=add_special_tokens)
        finally:
            tok.no_truncation()
            tok.no_padding()
        removed = [" ".join(tok.decode(o.ids, skip_special_tokens=True) for o in e.overflowing)
                   for e in encodings if e.overflowing]
        if removed:
            logger.warning("%d of %d inputs were truncated to max_length=%d tokens; removed: %s", len(removed),
                           len(encodings), max_length, "; ".join(repr(r) for r in removed[:3])
                           + (" ..." if len(removed) > 3 else ""))
        too_long = [len(e.ids) for e in encodings if not truncation and len(e.ids) > self.model_max_length]
        if too_long:
            logger.warning("Token sequence of length %d is longer than this tokenizer's model_max_length (%d); "
                           "the model may not accept it", max(too_long), self.model_max_length)
        data = {"input_ids": [e.ids for e in encodings]}
        if return_token_type_ids is not False:
            data["token_type_ids"] = [e.type_ids for e in encodings]
        if return_attention_mask is not False:
            data["attention_mask"] = [e.attention_mask for e in encodings]
        return BatchEncoding({k: self._as(v, return_tensors, batched) for k, v in data.items()})

    def _strategies(self, padding, truncation, max_length):
        if max_length is not None and padding is False and truncation is None:
            truncation = "longest_first"
        if padding in (False, None, "do_not_pad"):
            padding = False
        elif padding in (True, "longest"):
            padding = "longest"
        elif padding != "max_length":
            raise ValueError(f"padding: expected a bool, 'longest', 'max_length' or 'do_not_pad', got {padding!r}")
        if truncation in (None, False, "do_not_truncate"):
            truncation = False
        if max_length is None:
            if self.model_max_length > int(1e20):
                padding = False if padding == "max_length" else padding
                truncation = False
            else:
                max_length = self.model_max_length
        elif not isinstance(max_length, int) or max_length <= 0:
            raise ValueError(f"max_length: expected a positive int, got {max_length!r}")
        if padding and self.pad_token_id is None:
            raise ValueError("padding: this tokenizer has no pad_token in its vocabulary")
        return padding, truncation, max_length

    @staticmethod
    def _as(rows, return_tensors, batched):
        if return_tensors is None:
            return rows if batched else rows[0]
        lengths = {len(r) for r in rows}
        if len(lengths) > 1:
            raise ValueError("return_tensors: sequences have different lengths; pass padding=True or 'max_length'")
        if return_tensors == "pt":
            import torch

            return torch.tensor(rows, dtype=torch.long)
        if return_tensors == "np":
            import numpy as np

            return np.array(rows, dtype=np.int64)
        raise ValueError(f"return_tensors: expected None, 'pt' or 'np', got {return_tensors!r}")

    # ---- decoding -----------------------------------------------------------------------------------
    def decode(self, token_ids, skip_special_tokens: bool = False, **kwargs) -> str:
        if hasattr(token_ids, "tolist"):
            token_ids = token_ids.tolist()
        if isinstance(token_ids, int):
            token_ids = [token_ids]
        return self._tok.decode([int(i) for i in token_ids], skip_special_tokens=skip_special_tokens)

    def batch_decode(self, sequences, skip_special_tokens: bool = False, **kwargs) -> list[str]:
        if hasattr(sequences, "tolist"):
            sequences = sequences.tolist()
        return [self.decode(s, skip_special_tokens=skip_special_tokens) for s in sequences]

    def __repr__(self):
        return (f"{type(self).__name__}(vocab_size={self.vocab_size}, model_max_length={self.model_max_length}, "
                f"do_lower_case={self.do_lower_case})")


BertTokenizerFast = BertTokenizer
