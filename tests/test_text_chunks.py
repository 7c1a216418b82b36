"""Long-prompt chunking: 75-token windows wrapped in bos/eos, padded, encoded and merged."""
import pytest
import torch

import impasto
from impasto.text.chunks import chunked_input_ids, count_chunks, encode_chunked, split_ids, wrap_chunk


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


def test_encode_chunked_equals_separate_windows(tok):
    torch.manual_seed(0)
    model = impasto.CLIPTextModelWithProjection(hidden_size=16, intermediate_size=24, projection_dim=8,
                                                num_hidden_layers=2, num_attention_heads=2)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.1)
    ids, _ = chunked_input_ids(tok, ["word " * 100, "a cat"])
    with torch.no_grad():
        out = encode_chunked(model, ids, output_hidden_states=True)
        window = model(ids[0, 1:2], output_hidden_states=True)
        first = model(ids[1, 0:1])
    assert out.last_hidden_state.shape == (2, 2 * 77, 16) and out.text_embeds.shape == (2, 8)
    assert torch.allclose(out.last_hidden_state[0, 77:], window.last_hidden_state[0], atol=1e-6)
    assert torch.allclose(out.hidden_states[-2][0, 77:], window.hidden_states[-2][0], atol=1e-6)
    assert torch.allclose(out.text_embeds[1], first.text_embeds[0], atol=1e-6)
