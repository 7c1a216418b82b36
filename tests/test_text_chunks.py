"""Long-prompt chunking: 75-token windows wrapped in bos/eos, padded, encoded and merged."""
import pytest
import torch

import impasto
from impasto.conditioning.sd import encode_prompt
from impasto.text.chunks import chunked_input_ids, count_chunks, split_ids, wrap_chunk

from text_utils import write_vendored_tokenizer


@pytest.fixture(scope="module")
def tok():
    return impasto.CLIPTokenizer.from_vendored()


def test_windows_hold_every_token_in_order(tok):
    prompt = " ".join(f"w{i}" for i in range(120))  # every word is several tokens: > 2 windows
    plain = tok.encode_ids([prompt])[0]
    ids, mask = chunked_input_ids(tok, prompt)
    n = -(-len(plain) // 75)
    assert ids.shape == mask.shape == (1, n, 77) and n >= 3
    assert (ids[0, :, 0] == 49406).all()
    inner = [row[1:1 + int(m.sum()) - 2] for row, m in zip(ids[0].tolist(), mask[0])]
    assert sum(inner, []) == plain
    last = ids[0, -1].tolist()
    used = len(plain) - 75 * (n - 1)
    assert last[used + 1] == 49407 and last[used + 2:] == [49407] * (75 - used)
    # a short prompt is exactly the tokenizer's padded window
    short, _ = chunked_input_ids(tok, "a photo of a cat")
    assert short[0, 0].tolist() == tok("a photo of a cat", padding="max_length").input_ids


def test_common_chunk_count_and_sd2_padding(tok):
    bang = impasto.CLIPTokenizer.from_vendored(pad_token="!")
    texts = ["a cat", "word " * 80]
    assert count_chunks(bang, texts) == 2
    ids, mask = chunked_input_ids(bang, texts, num_chunks=3)
    assert ids.shape == (2, 3, 77)
    assert ids[0, 1].tolist() == [49406, 49407] + [0] * 75 and mask[0, 1].sum() == 2
    with pytest.raises(ValueError, match="num_chunks"):
        chunked_input_ids(bang, texts, num_chunks=1)
    assert split_ids([], 75) == [[]] and split_ids(list(range(151)), 75)[-1] == [150]
    with pytest.raises(ValueError, match="piece"):
        wrap_chunk(list(range(76)), 1, 2, 3)


def test_chunk_mode_equals_separate_windows(tok):
    """conditioning's long_prompt="chunk" encodes each window alone and joins them (also with clip_skip)."""
    torch.manual_seed(0)
    model = impasto.CLIPTextModel(hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=2)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.1)
    texts = ["word " * 100, "a cat"]
    ids, _ = chunked_input_ids(tok, texts)
    with torch.no_grad():
        emb, neg = encode_prompt(model, tok, texts, "cpu", 1, True, long_prompt="chunk", clip_skip=1)
        window = model(ids[0, 1:2], output_hidden_states=True)
        empty = model(chunked_input_ids(tok, "")[0][0])
    assert emb.shape == neg.shape == (2, 2 * 77, 16)
    assert torch.allclose(emb[0, 77:], model.text_model.final_layer_norm(window.hidden_states[-2])[0], atol=1e-6)
    # negatives ("") are empty windows, padded to the prompt's 2 chunks, encoded without clip_skip
    assert torch.allclose(neg[1], empty.last_hidden_state.reshape(77, 16).repeat(2, 1), atol=1e-6)


def test_any_clip_tokenizer_with_the_plain_call(tok, tmp_path):
    transformers = pytest.importorskip("transformers")
    ref = transformers.CLIPTokenizer.from_pretrained(write_vendored_tokenizer(tmp_path))
    texts = [" ".join(f"w{i}" for i in range(120)), "a cat"]
    assert count_chunks(ref, texts) == count_chunks(tok, texts) >= 3
    assert torch.equal(chunked_input_ids(ref, texts, 6)[0], chunked_input_ids(tok, texts, 6)[0])
