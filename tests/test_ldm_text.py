"""LDMBertModel and BertTokenizer against diffusers' LDMBertModel and transformers' BertTokenizer."""
import logging

import pytest
import torch

from ldm_utils import make_ldm_bert, varied_strings, vocab_tokens, write_vocab

import impasto

STRINGS = varied_strings(200, seed=0)

pytestmark = pytest.mark.usefixtures("one_thread")


# ---- LDMBertModel ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bert_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ldmbert")
    ref = make_ldm_bert(seed=0)
    ref.save_pretrained(str(folder))
    return folder, ref


def test_ldm_bert_matches_diffusers(bert_folder):
    folder, ref = bert_folder
    mine = impasto.LDMBertModel.from_pretrained(folder)
    assert mine.config.d_model == 32 and mine.config.encoder_layers == 2
    ids = torch.randint(0, len(vocab_tokens()), (3, 77), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(3, 77, dtype=torch.long)
    mask[1, 20:] = 0
    with torch.no_grad():
        a = mine(ids)[0]
        b = ref(ids)[0]
        assert a.shape == (3, 77, 32)
        assert (a - b).abs().max() < 1e-5
        a = mine(ids[:, :12], attention_mask=mask[:, :12], output_hidden_states=True)
        b = ref(ids[:, :12], attention_mask=mask[:, :12], output_hidden_states=True)
        assert (a.last_hidden_state - b.last_hidden_state).abs().max() < 1e-5
        assert len(a.hidden_states) == len(b.hidden_states) == 3
        for x, y in zip(a.hidden_states, b.hidden_states):
            assert (x - y).abs().max() < 1e-5


def test_ldm_bert_save_round_trip_readable_by_diffusers(bert_folder, tmp_path):
    from diffusers.pipelines.latent_diffusion.pipeline_latent_diffusion import LDMBertModel

    folder, ref = bert_folder
    mine = impasto.LDMBertModel.from_pretrained(folder)
    mine.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    back = LDMBertModel.from_pretrained(str(tmp_path)).eval()
    assert back.config.model_type == "ldmbert" and back.config.d_model == 32
    ids = torch.randint(0, 50, (1, 9))
    with torch.no_grad():
        assert torch.equal(back(ids)[0], ref(ids)[0])


def test_ldm_bert_bad_input(bert_folder):
    mine = impasto.LDMBertModel.from_pretrained(bert_folder[0])
    with pytest.raises(ValueError, match="input_ids"):
        mine()
    with pytest.raises(ValueError, match="max_position_embeddings"):
        mine(torch.zeros(1, 78, dtype=torch.long))
    with pytest.raises(ValueError, match="activation_function"):
        impasto.LDMBertModel(activation_function="nope", encoder_layers=1, d_model=8, vocab_size=4)


# ---- BertTokenizer -----------------------------------------------------------------------------------
@pytest.mark.parametrize("lower,strip", [(True, None), (True, False), (False, None)])
def test_tokenizer_ids_equal_transformers(tmp_path, lower, strip):
    from transformers import BertTokenizer

    folder = write_vocab(tmp_path, lower=lower, strip_accents=strip)
    ref = BertTokenizer.from_pretrained(str(folder))
    mine = impasto.BertTokenizer.from_pretrained(folder)
    assert len(mine) == len(ref) and mine.model_max_length == 77
    for s in STRINGS:
        assert mine(s).input_ids == ref(s).input_ids, s
        assert mine.tokenize(s) == ref.tokenize(s), s
    ids = ref(STRINGS[:20]).input_ids
    assert mine.batch_decode(ids) == ref.batch_decode(ids)
    assert mine.batch_decode(ids, skip_special_tokens=True) == ref.batch_decode(ids, skip_special_tokens=True)


def test_tokenizer_padding_truncation(tmp_path, caplog):
    from transformers import BertTokenizer

    folder = write_vocab(tmp_path)
    ref = BertTokenizer.from_pretrained(str(folder))
    mine = impasto.BertTokenizer.from_pretrained(folder)
    batch = STRINGS[:40]
    for kwargs in (dict(padding="max_length", max_length=77, truncation=True),
                   dict(padding="max_length", max_length=10, truncation=True),
                   dict(padding=True), dict(padding="longest", truncation=True, max_length=12)):
        a, b = mine(batch, return_tensors="pt", **kwargs), ref(batch, return_tensors="pt", **kwargs)
        for key in ("input_ids", "attention_mask", "token_type_ids"):
            assert torch.equal(a[key], b[key]), (kwargs, key)
    assert mine(batch, max_length=6).input_ids == ref(batch, max_length=6).input_ids
    pair_a = mine("a cat on the river", "the dog", max_length=6)
    pair_b = ref("a cat on the river", "the dog", max_length=6)
    assert pair_a.input_ids == pair_b.input_ids and pair_a.token_type_ids == pair_b.token_type_ids
    with caplog.at_level(logging.WARNING, logger="impasto"):
        mine("a cat on the river with a dog", padding="max_length", max_length=5, truncation=True)
    assert "truncated" in caplog.text and "with a dog" in caplog.text


def test_tokenizer_reads_transformers_save_and_round_trips(tmp_path):
    from transformers import BertTokenizer

    ref = BertTokenizer.from_pretrained(str(write_vocab(tmp_path / "src")))
    ref.save_pretrained(str(tmp_path / "saved"))  # transformers 5 writes tokenizer.json, no vocab.txt
    mine = impasto.BertTokenizer.from_pretrained(tmp_path / "saved")
    for s in STRINGS[:50]:
        assert mine(s).input_ids == ref(s).input_ids
    mine.save_pretrained(tmp_path / "mine")
    again = BertTokenizer.from_pretrained(str(tmp_path / "mine"))
    for s in STRINGS[:50]:
        assert again(s).input_ids == ref(s).input_ids


def test_tokenizer_bad_input(tmp_path):
    mine = impasto.BertTokenizer.from_pretrained(write_vocab(tmp_path))
    with pytest.raises(ValueError, match="text"):
        mine(3)
    with pytest.raises(ValueError, match="padding"):
        mine("a", padding="sideways")
    with pytest.raises(ValueError, match="return_tensors"):
        mine(["a", "a cat dog"], return_tensors="pt")
    with pytest.raises(FileNotFoundError):
        impasto.BertTokenizer.from_pretrained(tmp_path / "missing")


def test_tokenizer_added_tokens_from_config(tmp_path):
    import json

    from transformers import BertTokenizer

    folder = write_vocab(tmp_path)
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    n = len(vocab_tokens())
    entry = dict(lstrip=False, rstrip=False, single_word=False)
    cfg["added_tokens_decoder"] = {str(n): dict(entry, content="squirrelburger", special=False, normalized=True),
                                   str(n + 1): dict(entry, content="<extra>", special=True, normalized=False)}
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))
    ref = BertTokenizer.from_pretrained(str(folder))
    mine = impasto.BertTokenizer.from_pretrained(folder)
    assert len(mine) == len(ref) == n + 2
    for s in ["a squirrelburger <extra> cat", "SquirrelBurger<extra>x", "<EXTRA>"] + STRINGS[:60]:
        assert mine(s).input_ids == ref(s).input_ids, s
