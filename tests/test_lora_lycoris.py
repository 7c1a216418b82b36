"""LyCORIS LoHa, LoKr and full-difference networks in the kohya/A1111 naming, on tiny seeded-random SD / SDXL.

Files are built from random factors; the update each layer should get is written out by hand from the
formulas in lycoris_files.py (LyCORIS / A1111). Checked: the fused weight is base + dW, hooked images equal
fused ones, unfusing restores the weights bit for bit, adapter weights and the per-call scale scale dW, block
weights, te1/te2, deleting, dtype moves, and that the networks impasto does not read are refused by name.
diffusers 0.42.1 refuses all three formats for SD (no oracle): the last test records that.
"""
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import tiny  # noqa: E402
from lycoris_files import build, full, loha, lokr  # noqa: E402

import impasto  # noqa: E402

ARGS = dict(num_inference_steps=2, output_type="np", height=32, width=32)
SD_PREFIX = {"unet": "lora_unet_", "text_encoder": "lora_te_"}
Q = "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"
TE_Q = "text_model.encoder.layers.0.self_attn.q_proj"
TE_FC1 = "text_model.encoder.layers.0.mlp.fc1"


def run(pipe, **kw):
    pipe.set_progress_bar_config(disable=True)
    return pipe("a photo of a cat", **ARGS, **kw, generator=torch.Generator().manual_seed(0)).images


CASES = {
    "loha": [("unet", Q, loha, dict(rank=4, alpha=2.0)),
             ("unet", "down_blocks.0.resnets.0.conv1", loha, dict(rank=2)),  # convolution, no alpha
             ("unet", "down_blocks.0.downsamplers.0.conv", loha, dict(rank=3, alpha=1.5, use_tucker=True)),  # stride 2
             ("text_encoder", TE_Q, loha, dict(rank=2, alpha=4.0))],
    "lokr": [("unet", Q, lokr, dict(w1=(8, 8), rank2=2, alpha=1.0)),  # full w1, factored w2
             ("unet", "mid_block.attentions.0.transformer_blocks.0.ff.net.2", lokr, dict(w1=(4, 16), rank1=2, rank2=3)),
             ("unet", "up_blocks.0.attentions.1.transformer_blocks.0.attn2.to_k", lokr, dict(w1=(8, 4), rank1=2, alpha=3.0)),
             ("unet", "up_blocks.1.resnets.0.conv2", lokr, dict(w1=(4, 4), alpha=5.0)),  # both full: alpha unused
             ("unet", "down_blocks.1.resnets.0.conv1", lokr, dict(w1=(8, 4), rank2=2, alpha=3.0, use_tucker=True)),
             ("text_encoder", TE_FC1, lokr, dict(w1=(1, 4), rank1=1, rank2=2, alpha=1.0))],  # both factored
    "full": [("unet", Q, full, {}),
             ("unet", "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_out.0", full, dict(bias=True)),
             ("unet", "conv_in", full, dict(bias=True)),
             ("text_encoder", TE_Q, full, dict(bias=True))],
}


def layer_of(pipe, comp, name):
    return dict(getattr(pipe, comp).named_modules())[name]


def snapshot(pipe, keys):
    out = {}
    for comp, name in keys:
        layer = layer_of(pipe, comp, name)
        out[comp, name] = (layer.weight.detach().clone(), None if layer.bias is None else layer.bias.detach().clone())
    return out


def assert_fused(pipe, before, expect, factor=1.0):
    worst = 0.0
    for key, (d, b) in expect.items():
        layer = layer_of(pipe, *key)
        want = before[key][0] + factor * d
        worst = max(worst, (layer.weight - want).abs().max().item())
        torch.testing.assert_close(layer.weight, want, atol=2e-6, rtol=0)
        if b is not None:
            torch.testing.assert_close(layer.bias, before[key][1] + factor * b, atol=2e-6, rtol=0)
        elif before[key][1] is not None:
            assert torch.equal(layer.bias, before[key][1])
    return worst


def assert_restored(pipe, before):
    for key, (w, b) in before.items():
        layer = layer_of(pipe, *key)
        assert torch.equal(layer.weight, w) and (b is None or torch.equal(layer.bias, b))


@pytest.fixture(scope="module")
def sd(tmp_path_factory):
    pipe = impasto.StableDiffusionPipeline.from_pretrained(tiny.make_sd_folder(tmp_path_factory.mktemp("sd"), "sd1"))
    return pipe, run(pipe)


@pytest.mark.parametrize("case", sorted(CASES))
@torch.no_grad()
def test_network_is_base_plus_formula(sd, case):
    pipe, base = sd
    state, expect = build(pipe, CASES[case], SD_PREFIX)
    before = snapshot(pipe, expect)
    pipe.load_lora_weights(state, adapter_name=case)
    try:
        assert not any("_lora_delta" in k for k in pipe.unet.state_dict())  # buffers stay out of saved weights
        hooked = run(pipe)
        assert np.abs(hooked - base).max() > 1e-3  # the network changes the picture
        pipe.fuse_lora()
        worst = assert_fused(pipe, before, expect)
        fused = run(pipe)
        print(f"{case}: fused weight vs base + dW {worst:.2e}, fused vs hooked image {np.abs(fused - hooked).max():.2e}")
        np.testing.assert_allclose(fused, hooked, atol=1e-4, rtol=0)
        pipe.unfuse_lora()
        assert_restored(pipe, before)
        np.testing.assert_array_equal(run(pipe), hooked)

        pipe.set_adapters(case, 0.5)
        half = run(pipe)
        pipe.fuse_lora()
        assert_fused(pipe, before, expect, 0.5)
        np.testing.assert_allclose(run(pipe), half, atol=1e-4, rtol=0)
        pipe.unfuse_lora()
        assert_restored(pipe, before)
        pipe.set_adapters(case, 1.0)
        np.testing.assert_array_equal(run(pipe, cross_attention_kwargs={"scale": 0.5}), half)
    finally:
        pipe.unload_lora_weights()
    assert not any(k.startswith("_lora_delta") for m in pipe.unet.modules() for k in m._buffers)
    np.testing.assert_array_equal(run(pipe), base)


@torch.no_grad()
def test_block_weights_two_adapters_and_delete(sd):
    pipe, base = sd
    mid = "mid_block.attentions.0.transformer_blocks.0.attn1.to_q"
    up = "up_blocks.0.attentions.1.transformer_blocks.0.attn1.to_q"
    spec = [("unet", Q, loha, dict(rank=2, alpha=1.0)), ("unet", mid, lokr, dict(w1=(4, 4), rank2=2)),
            ("unet", up, full, {}), ("text_encoder", TE_Q, full, dict(bias=True))]
    state, expect = build(pipe, spec, SD_PREFIX, seed=1)
    other, other_expect = build(pipe, CASES["full"], SD_PREFIX, seed=2)
    before = snapshot(pipe, {**expect, **other_expect})
    pipe.load_lora_weights(state, adapter_name="mixed")
    only_mixed = run(pipe)
    pipe.load_lora_weights(other, adapter_name="other")
    try:
        pipe.set_adapters(["mixed", "other"], [{"unet": {"down": 0.0, "mid": 1.0, "up": 0.5}, "text_encoder": 0.25},
                                                0.0])
        pipe.fuse_lora()
        for (comp, name), factor in {("unet", Q): 0.0, ("unet", mid): 1.0, ("unet", up): 0.5,
                                     ("text_encoder", TE_Q): 0.25}.items():
            assert_fused(pipe, before, {(comp, name): expect[comp, name]}, factor)
        pipe.unfuse_lora()
        assert_restored(pipe, before)
        pipe.delete_adapters("other")
        assert pipe.get_list_adapters() == {"unet": ["mixed"], "text_encoder": ["mixed"]}
        pipe.set_adapters("mixed", 1.0)
        np.testing.assert_array_equal(run(pipe), only_mixed)
        assert Q in pipe.lora_layers("mixed")["unet"]
        with pytest.raises(ValueError, match="only low-rank LoRA"):
            pipe.save_lora_weights("unused", **{f"{c}_lora_layers": w for c, w in pipe.lora_layers("mixed").items()})
    finally:
        pipe.unload_lora_weights()
    np.testing.assert_array_equal(run(pipe), base)


@torch.no_grad()
def test_updates_follow_the_layer_dtype(sd):
    """dW lives on the layer as a buffer: `.to(dtype)` moves it; hooked and fused outputs still agree."""
    pipe, _ = sd
    te = pipe.text_encoder
    state, expect = build(pipe, [("text_encoder", TE_Q, loha, dict(rank=2, alpha=1.0)),
                                 ("text_encoder", TE_FC1, full, dict(bias=True))], SD_PREFIX, seed=3)
    ids = torch.randint(0, 1000, (1, 77), generator=torch.Generator().manual_seed(0))
    pipe.load_lora_weights(state, adapter_name="d")
    try:
        te.to(torch.float64)
        assert layer_of(pipe, "text_encoder", TE_Q)._lora_delta_0.dtype == torch.float64
        hooked = te(ids)[0]
        pipe.fuse_lora()
        assert (te(ids)[0] - hooked).abs().max() < 1e-10
        pipe.unfuse_lora()
    finally:
        te.to(torch.float32)
        pipe.unload_lora_weights()


@pytest.fixture(scope="module")
def sdxl(tmp_path_factory):
    return impasto.StableDiffusionXLPipeline.from_pretrained(tiny.make_sd_folder(tmp_path_factory.mktemp("xl"), "sdxl"))


@torch.no_grad()
def test_sdxl_te1_te2_and_unet(sdxl):
    pipe = sdxl
    base = run(pipe)
    spec = [("text_encoder", TE_Q, loha, dict(rank=2, alpha=1.0)), ("text_encoder_2", TE_FC1, lokr, dict(w1=(1, 4), rank2=2)),
            ("text_encoder_2", TE_Q, full, dict(bias=True)), ("unet", Q, loha, dict(rank=2))]
    state, expect = build(pipe, spec, {"unet": "lora_unet_", "text_encoder": "lora_te1_", "text_encoder_2": "lora_te2_"})
    before = snapshot(pipe, expect)
    pipe.load_lora_weights(state, adapter_name="xl")
    try:
        assert pipe.get_list_adapters() == {"unet": ["xl"], "text_encoder": ["xl"], "text_encoder_2": ["xl"]}
        hooked = run(pipe)
        assert np.abs(hooked - base).max() > 1e-3
        pipe.fuse_lora()
        assert_fused(pipe, before, expect)
        fused = run(pipe)
        print(f"sdxl: fused vs hooked image {np.abs(fused - hooked).max():.2e}")
        np.testing.assert_allclose(fused, hooked, atol=1e-4, rtol=0)
        pipe.unfuse_lora()
        assert_restored(pipe, before)
    finally:
        pipe.unload_lora_weights()
    np.testing.assert_array_equal(run(pipe), base)


TE = "lora_te_" + TE_Q.replace(".", "_")
REFUSED = {  # (what the message names, the file)
    "ia3": ("LyCORIS IA3", {TE + ".weight": torch.ones(32), TE + ".on_input": torch.tensor(False)}),
    "dora": ("DoRA", {TE + ".lora_down.weight": torch.zeros(2, 32), TE + ".lora_up.weight": torch.zeros(32, 2),
                      TE + ".dora_scale": torch.ones(1, 32)}),
    "glora": ("LyCORIS GLoRA", {TE + ".a1.weight": torch.zeros(2, 32), TE + ".a2.weight": torch.zeros(32, 2),
                                TE + ".b1.weight": torch.zeros(2, 32), TE + ".b2.weight": torch.zeros(32, 2)}),
    "dora_peft": ("DoRA", {f"text_encoder.{TE_Q}.lora_A.weight": torch.zeros(2, 32),
                           f"text_encoder.{TE_Q}.lora_B.weight": torch.zeros(32, 2),
                           f"text_encoder.{TE_Q}.lora_magnitude_vector": torch.ones(32)}),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_unread_networks_are_refused_by_name(sd, case):
    pipe, _ = sd
    name, state = REFUSED[case]
    with pytest.raises(ValueError, match=rf"{name} networks are not supported \(key '[^']*q_proj"):
        pipe.load_lora_weights(dict(state))
    assert pipe.get_list_adapters() == {}


def test_incomplete_or_foreign_networks_are_named(sd):
    pipe, _ = sd
    state, _ = build(pipe, [("text_encoder", TE_Q, loha, dict(rank=2))], SD_PREFIX)
    with pytest.raises(ValueError, match="LoHa network for lora_te_text_model_encoder_layers_0_self_attn_q_proj lacks "
                                         "hada_w2_b"):
        pipe.load_lora_weights({k: v for k, v in state.items() if not k.endswith("hada_w2_b")})
    foreign = {k.replace("layers_0", "layers_99"): v for k, v in state.items()}
    with pytest.raises(ValueError, match=r"kohya LoHa.*layers_99"):
        pipe.load_lora_weights(foreign)
    wrong = {**state, TE + ".hada_w1_a": torch.zeros(16, 2), TE + ".hada_w2_a": torch.zeros(16, 2)}
    with pytest.raises(ValueError, match="does not fit"):
        pipe.load_lora_weights(wrong)
    assert pipe.get_list_adapters() == {}


def test_diffusers_refuses_these_formats_for_sd():
    """No oracle: diffusers 0.42.1 leaves LoHa / LoKr / diff keys unconverted and raises for SD pipelines."""
    pytest.importorskip("diffusers")
    pipe = tiny.make_sd_pipeline("sd1")
    for spec in CASES.values():
        state, _ = build(pipe, spec[:1], SD_PREFIX)
        with pytest.raises(ValueError, match="not been correctly renamed"):
            pipe.load_lora_weights(state)
