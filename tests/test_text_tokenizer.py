"""CLIPTokenizer against transformers' CLIPTokenizer, both reading the bundled vocabulary as a folder."""
import json
import logging

import pytest
import torch

import impasto
from impasto.text.clip_tokenizer import vendored_vocab
from text_utils import varied_prompts, write_vendored_tokenizer

transformers = pytest.importorskip("transformers")

PADS = {"eot": "<|endoftext|>", "bang": "!"}
PROMPTS = varied_prompts(300)


@pytest.fixture(scope="module", params=sorted(PADS))
def pair(request, tmp_path_factory):
    folder = write_vendored_tokenizer(tmp_path_factory.mktemp(request.param), PADS[request.param])
    return transformers.CLIPTokenizer.from_pretrained(folder), impasto.CLIPTokenizer.from_pretrained(folder), folder


def test_vendored_vocabulary_and_check_sentence():
    vocab, merges = vendored_vocab()
    assert len(vocab) == 49408 and len(merges) == 48894
    assert vocab["<|startoftext|>"] == 49406 and vocab["<|endoftext|>"] == 49407 and vocab["!"] == 0
    tok = impasto.CLIPTokenizer.from_vendored()
    ids = tok("a photo of an astronaut riding a horse on mars").input_ids
    assert ids == [49406, 320, 1125, 539, 550, 18376, 6765, 320, 4558, 525, 7496, 49407]
    assert tok.model_max_length == 77 and tok.pad_token_id == 49407 and len(tok) == 49408
    assert impasto.CLIPTokenizer.from_vendored(pad_token="!").pad_token_id == 0
    assert impasto.CLIPTokenizerFast is impasto.CLIPTokenizer


def test_ids_match_transformers(pair):
    ref, mine, _ = pair
    assert (mine.pad_token_id, mine.bos_token_id, mine.eos_token_id, mine.model_max_length, len(mine)) == \
           (ref.pad_token_id, ref.bos_token_id, ref.eos_token_id, ref.model_max_length, len(ref))
    mismatches = []
    for prompt in PROMPTS:
        for kwargs in ({}, {"padding": "max_length", "max_length": 77, "truncation": True}):
            a, b = ref(prompt, **kwargs), mine(prompt, verbose=False, **kwargs)
            if a.input_ids != b.input_ids or a.attention_mask != b.attention_mask:
                mismatches.append((prompt, kwargs))
        if ref.tokenize(prompt) != mine.tokenize(prompt):
            mismatches.append((prompt, "tokenize"))
    assert not mismatches, mismatches[:5]
    assert any(len(ref(p).input_ids) > 77 for p in PROMPTS)  # the long ones really are long


def test_batches_tensors_and_decoding_match(pair):
    ref, mine, _ = pair
    batch = PROMPTS[:24]
    for kwargs in ({"padding": "longest"}, {"padding": "max_length", "truncation": True},
                   {"padding": True, "truncation": True, "max_length": 20}):
        a = ref(batch, return_tensors="pt", **kwargs)
        b = mine(batch, return_tensors="pt", verbose=False, **kwargs)
        assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a["attention_mask"], b["attention_mask"])
    ids = ref(batch, padding="max_length", truncation=True, return_tensors="pt").input_ids
    assert mine.batch_decode(ids) == ref.batch_decode(ids)
    assert mine.batch_decode(ids, skip_special_tokens=True) == ref.batch_decode(ids, skip_special_tokens=True)
    single = mine("a cat", return_tensors="pt")
    assert single.input_ids.shape == (1, 4) and mine.encode("a cat") == ref.encode("a cat")
    assert mine.convert_tokens_to_ids(["a</w>", "cat</w>", "not-a-token"]) == \
           ref.convert_tokens_to_ids(["a</w>", "cat</w>", "not-a-token"])


def test_added_tokens_and_save_roundtrips(pair, tmp_path):
    ref, mine, folder = pair
    ref = transformers.CLIPTokenizer.from_pretrained(folder)  # fresh copies: tokens get added
    mine = impasto.CLIPTokenizer.from_pretrained(folder)
    for tok in (ref, mine):
        assert tok.add_tokens(["<Cat-Toy>", "sks", "<emb_0>", "<emb_1>"]) == 4
        assert tok.add_tokens(["sks"]) == 0
    prompts = ["a <cat-toy> <Cat-Toy> sks sksks x<Cat-Toy>y <emb_0><emb_1>", "SKS photo", "<emb_0>, <emb_1>!"]
    prompts += PROMPTS[:40]
    assert [mine(p).input_ids for p in prompts] == [ref(p).input_ids for p in prompts]
    assert len(mine) == len(ref) == 49412 and mine.added_tokens_encoder["<emb_1>"] == 49411
    mine.save_pretrained(tmp_path / "mine")
    ref.save_pretrained(tmp_path / "ref")
    from_mine = transformers.CLIPTokenizer.from_pretrained(tmp_path / "mine")
    from_ref = impasto.CLIPTokenizer.from_pretrained(tmp_path / "ref")  # transformers 5 writes tokenizer.json only
    for tok in (from_mine, from_ref):
        assert [tok(p).input_ids for p in prompts] == [ref(p).input_ids for p in prompts]
        assert tok.pad_token_id == ref.pad_token_id and tok.model_max_length == 77 and len(tok) == 49412
    mine.remove_tokens(["sks"])
    assert len(mine) == 49411 and mine("sks").input_ids == impasto.CLIPTokenizer.from_vendored()("sks").input_ids


def test_truncation_warns_with_the_count(caplog):
    tok = impasto.CLIPTokenizer.from_vendored()
    with caplog.at_level(logging.WARNING, logger="impasto"):
        out = tok(["word " * 100, "short"], padding="max_length", truncation=True, return_tensors="pt")
    assert out.input_ids.shape == (2, 77) and out.input_ids[0, -1].item() == 49407
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "25 were dropped" in warnings[0] and "text 0" in warnings[0]


def test_sd2_style_folder_where_special_tokens_map_wins(tmp_path):
    folder = write_vendored_tokenizer(tmp_path, pad_token="!")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["pad_token"] = {"__type": "AddedToken", "content": "<|endoftext|>", "normalized": True}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    tok = impasto.CLIPTokenizer.from_pretrained(tmp_path)
    ids = tok("a cat", padding="max_length", max_length=8).input_ids
    assert ids == [49406, 320, 2368, 49407, 0, 0, 0, 0] == \
           transformers.CLIPTokenizer.from_pretrained(tmp_path)("a cat", padding="max_length", max_length=8).input_ids


def test_bad_arguments_raise_value_errors():
    tok = impasto.CLIPTokenizer.from_vendored()
    with pytest.raises(ValueError, match="padding"):
        tok("a", padding="sideways")
    with pytest.raises(ValueError, match="padding"):
        tok(["a", "a b c"], return_tensors="pt")
    with pytest.raises(ValueError, match="text"):
        tok(5)
    with pytest.raises(ValueError, match="return_tensors"):
        tok("a", return_tensors="tf")
    with pytest.raises(ValueError, match="max_length"):
        tok("a", max_length=0, truncation=True)
    with pytest.raises(FileNotFoundError):
        impasto.CLIPTokenizer.from_pretrained("/nonexistent/folder")


def test_added_tokens_from_older_folders(tmp_path):
    """transformers 4 wrote textual-inversion tokens to added_tokens.json / added_tokens_decoder."""
    folder = write_vendored_tokenizer(tmp_path)
    (folder / "added_tokens.json").write_text(json.dumps({"<emb_a>": 49408, "<emb_b>": 49409}))
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["added_tokens_decoder"] = {"49410": {"content": "<emb_c>", "special": False, "normalized": True,
                                                "lstrip": False, "rstrip": False, "single_word": False}}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    tok = impasto.CLIPTokenizer.from_pretrained(folder)
    assert len(tok) == 49411
    assert tok("<emb_a> <emb_b><emb_c> cat").input_ids == [49406, 49408, 49409, 49410, 2368, 49407]
