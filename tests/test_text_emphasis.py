"""A1111 prompt syntax (long_prompt="a1111"): the parser, the chunk layout, the weighting, and a pipeline run
whose image equals diffusers' given the same embeddings."""
import numpy as np
import pytest
import torch

import impasto
from impasto.conditioning.sd import encode_prompt, encode_text
from impasto.text.emphasis import BREAK, batch_chunks, parse_emphasis, weighted_chunks

from pipeline_utils import gen, max_diff, shared_pair

pytestmark = pytest.mark.usefixtures("one_thread")
BOS, EOS = 49406, 49407


@pytest.fixture(scope="module")
def tok():
    return impasto.CLIPTokenizer.from_vendored()


@pytest.mark.parametrize("text, expected", [
    # the examples of A1111's own parse_prompt_attention docstring
    ("normal text", [("normal text", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
    ("(unbalanced", [("unbalanced", 1.1)]),
    ("\\(literal\\]", [("(literal]", 1.0)]),
    ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
    ("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
     [("a ", 1.0), ("house", 1.1 * 1.1 * 1.3), (" ", 1.1), ("on", 1.0), (" a ", 1.1), ("hill", 0.55),
      (", sun, ", 1.1), ("sky", 1.1 ** 4), (".", 1.1)]),
    # beyond the docstring
    ("", [("", 1.0)]),
    ("[faded]", [("faded", 1 / 1.1)]),
    ("x ( y : 1.5 ) z", [("x ", 1.0), (" y ", 1.5), (" z", 1.0)]),
    ("ratio 3:2", [("ratio 3:2", 1.0)]),
    ("a BREAK b", [("a", 1.0), BREAK, ("b", 1.0)]),
    ("(a BREAK b)", [("a", 1.1), BREAK, ("b", 1.1)]),  # A1111 would read "BREAK" as text weighted -1.1
    ("a BREAKFAST", [("a BREAKFAST", 1.0)]),
    ("unmatched) and ]", [("unmatched) and ]", 1.0)]),
])
def test_parse(text, expected):
    got = parse_emphasis(text)
    assert [t for t, _ in got] == [t for t, _ in expected]
    assert [w for _, w in got] == pytest.approx([w for _, w in expected], rel=1e-12)


def test_parse_errors():
    with pytest.raises(ValueError, match=r"prompt: ':1\.2\.3\)' is not a weight"):
        parse_emphasis("a (b:1.2.3) c")
    with pytest.raises(ValueError, match="prompt: expected a string"):
        parse_emphasis(3)


def test_chunk_ids_and_weights(tok):
    (ids, weights), = weighted_chunks(tok, "a (red:1.3) circle, [blue] square")
    plain = tok("a red circle, blue square", padding="max_length").input_ids
    assert ids == plain  # the same tokens as the plain prompt, in one window
    n = len(tok("a red circle, blue square").input_ids) - 2
    assert weights[:n + 2] == pytest.approx([1.0, 1.0, 1.3, 1.0, 1.0, 1 / 1.1, 1.0, 1.0])
    assert weights[n + 2:] == [1.0] * (75 - n)


def test_break_and_comma_backtrack(tok):
    chunks = weighted_chunks(tok, "cat BREAK dog")
    assert [c[0][:3] for c in chunks] == [[BOS, tok.convert_tokens_to_ids("cat</w>"), EOS],
                                          [BOS, tok.convert_tokens_to_ids("dog</w>"), EOS]]
    cat, dog, comma = (tok.convert_tokens_to_ids(t) for t in ("cat</w>", "dog</w>", ",</w>"))
    # 70 cats, a comma, 10 dogs: the chunk is full at the 4th dog and the comma is 5 back, so the dogs move on
    first, second = weighted_chunks(tok, "cat " * 70 + ", " + "dog " * 10)
    assert first[0] == [BOS] + [cat] * 70 + [comma] + [EOS] * 5
    assert second[0][:12] == [BOS] + [dog] * 10 + [EOS]
    # the comma is 73 tokens back: cut at 75 (1 cat, the comma, 73 cats | 7 cats)
    first, second = weighted_chunks(tok, "cat, " + "cat " * 80)
    assert first[0][-2:] == [cat, EOS] and second[0][:9] == [BOS] + [cat] * 7 + [EOS]
    # SD 2's tokenizer pads with "!" after the first <eos>
    bang = impasto.CLIPTokenizer.from_vendored(pad_token="!")
    ids, weights = batch_chunks(bang, ["cat", "cat BREAK dog"])
    assert ids.shape == weights.shape == (2, 2, 77)
    assert ids[0, 0, :4].tolist() == [BOS, cat, EOS, 0] and ids[0, 1].tolist() == [BOS, EOS] + [0] * 75


def _tiny_encoder(seed=0):
    torch.manual_seed(seed)
    model = impasto.CLIPTextModel(hidden_size=16, intermediate_size=24, num_hidden_layers=3, num_attention_heads=2)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.1)
    return model


@torch.no_grad()
def test_weighting(tok):
    model = _tiny_encoder()
    # no weights: exactly diffusers' embedding, prompt and negative
    plain = encode_prompt(model, tok, "a red circle", "cpu", 1, True, negative_prompt="blurry")
    a1111 = encode_prompt(model, tok, "a red circle", "cpu", 1, True, negative_prompt="blurry", long_prompt="a1111")
    assert all(torch.equal(x, y) for x, y in zip(plain, a1111))
    # weights: each token's state times its weight, then the chunk rescaled to its old mean
    pos, neg = encode_prompt(model, tok, "a (red:1.5) BREAK [circle]", "cpu", 1, True, negative_prompt="(ugly:0.5)",
                             long_prompt="a1111", clip_skip=1)
    assert pos.shape == neg.shape == (1, 154, 16)
    for emb, windows in ((pos, [("a red", [1, 1, 1.5]), ("circle", [1, 1 / 1.1])]), (neg, [("ugly", [1, 0.5]), ("", [])])):
        for i, (text, w) in enumerate(windows):
            ids = tok(text, padding="max_length", max_length=77).input_ids
            base = encode_text(model, torch.tensor([ids]), "cpu", clip_skip=1)[0]  # clip_skip on the negative too
            weights = torch.ones(77)
            weights[:len(w)] = torch.tensor(w)
            scaled = base * weights[:, None]
            expected = scaled * base.mean() / scaled.mean()
            assert max_diff(emb[0, 77 * i:77 * (i + 1)], expected) < 1e-6
    assert not torch.allclose(pos[0, 2], encode_text(model, torch.tensor([tok("a red", padding="max_length").input_ids]),
                                                     "cpu", clip_skip=1)[0, 2])


@torch.no_grad()
def test_pipeline_a1111_equals_diffusers_given_the_embeddings():
    """The SD pipeline with long_prompt="a1111" draws diffusers' image for the same weighted embeddings, and the
    weights change the image."""
    pair = shared_pair("sd1")
    pair.set_scheduler("EulerDiscreteScheduler")
    prompt, negative = "a (red:1.4) circle, [[blue]] background BREAK small", "(blurry:1.2)"
    pos, neg = pair.mine.encode_prompt(prompt, "cpu", 1, True, negative, long_prompt="a1111")
    kw = dict(num_inference_steps=3, output_type="np")
    mine = pair.mine(prompt, negative_prompt=negative, long_prompt="a1111", generator=gen(0), **kw).images
    ref = pair.ref(prompt_embeds=pos, negative_prompt_embeds=neg, generator=gen(0), **kw).images
    assert max_diff(mine, ref) < 1e-4
    plain = pair.mine("a red circle, blue background small", negative_prompt="blurry", generator=gen(0),
                      long_prompt="chunk", **kw).images
    assert np.abs(mine - plain).max() > 1e-3


def test_long_prompt_modes_named():
    model, tok = _tiny_encoder(), impasto.CLIPTokenizer.from_vendored()
    with pytest.raises(ValueError, match="long_prompt: expected one of .*a1111"):
        encode_prompt(model, tok, "a cat", "cpu", long_prompt="compel")


@torch.no_grad()
def test_extra_networks_removed_and_editing_named(tok, caplog):
    model = _tiny_encoder()
    with caplog.at_level("WARNING", logger="impasto"):
        got = encode_prompt(model, tok, "a cat <lora:detail:0.8>", "cpu", 1, False, long_prompt="a1111")[0]
    assert "<lora:detail:0.8>" in caplog.text and "load_lora_weights" in caplog.text
    assert torch.equal(got, encode_prompt(model, tok, "a cat ", "cpu", 1, False, long_prompt="a1111")[0])
    caplog.clear()
    with caplog.at_level("WARNING", logger="impasto"):
        encode_prompt(model, tok, "a [cat:dog:0.5]", "cpu", 1, False, long_prompt="a1111")
    assert "[cat:dog:0.5]" in caplog.text and "prompt editing" in caplog.text  # encode_prompt knows no steps


@torch.no_grad()
def test_sdxl_modes():
    """SDXL: a plain prompt reads the same in every mode; "chunk" and "a1111" give each tower the same windows,
    weight each tower's features alone, and pool the first window."""
    from sdxl_utils import sdxl_pair

    pipe = sdxl_pair().mine
    args = dict(device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=True, negative_prompt="blurry")
    plain = pipe.encode_prompt("a red circle", **args)
    for mode in ("chunk", "a1111"):
        assert all(torch.equal(x, y) for x, y in zip(plain, pipe.encode_prompt("a red circle", long_prompt=mode,
                                                                                **args)))
    pos, neg, pooled, neg_pooled = pipe.encode_prompt("a (red:1.5) circle BREAK on blue", long_prompt="a1111", **args)
    assert pos.shape[1] == neg.shape[1] == 154
    towers = [(pipe.text_encoder, pipe.tokenizer), (pipe.text_encoder_2, pipe.tokenizer_2)]
    start = 0
    for i, (encoder, tokenizer) in enumerate(towers):
        ids = torch.tensor([tokenizer("a red circle", padding="max_length", max_length=77).input_ids])
        out = encoder(ids, output_hidden_states=True)
        base = out.hidden_states[-2][0]
        weights = torch.ones(77)
        weights[2] = 1.5  # <bos> a (red) circle
        scaled = base * weights[:, None]
        width = base.shape[-1]
        assert max_diff(pos[0, :77, start:start + width], scaled * base.mean() / scaled.mean()) < 1e-6
        start += width
        if i == 1:
            assert max_diff(pooled[0], out[0][0]) < 1e-6  # the first window's pooled embedding
    long = "a red circle, " * 30
    chunked = pipe.encode_prompt(long, long_prompt="chunk", **args)
    assert chunked[0].shape[1] == chunked[1].shape[1] == 77 * 2


@torch.no_grad()
def test_sdxl_pipeline_a1111_equals_diffusers_given_the_embeddings():
    from sdxl_utils import sdxl_pair

    pair = sdxl_pair()
    prompt, negative = "a (red:1.3) square, [blue] circle", "(noise:1.2) BREAK dark"
    embeds = pair.mine.encode_prompt(prompt, device="cpu", negative_prompt=negative, long_prompt="a1111")
    kw = dict(num_inference_steps=2, output_type="np")
    mine = pair.mine(prompt, negative_prompt=negative, long_prompt="a1111", generator=gen(0), **kw).images
    ref = pair.ref(prompt_embeds=embeds[0], negative_prompt_embeds=embeds[1], pooled_prompt_embeds=embeds[2],
                   negative_pooled_prompt_embeds=embeds[3], generator=gen(0), **kw).images
    assert max_diff(mine, ref) < 1e-4
