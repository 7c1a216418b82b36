"""A kohya/A1111 LoRA file built from known deltas applies exactly those deltas; fuse/unfuse restores exactly."""
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import tiny  # noqa: E402

from impasto.loading.lora import LoraLoaderMixin  # noqa: E402


class Holder(LoraLoaderMixin):
    def __init__(self, **components):
        for k, v in components.items():
            setattr(self, k, v)


@pytest.fixture(scope="module")
def text_encoder(tmp_path_factory):
    from impasto import CLIPTextModel

    folder = tmp_path_factory.mktemp("te")
    tiny._text_encoder(0).save_pretrained(str(folder))
    return CLIPTextModel.from_pretrained(folder)


def kohya_file(module, names, prefix, rank=4, alpha=2.0, seed=1):
    torch.manual_seed(seed)
    state, expect = {}, {}
    mods = dict(module.named_modules())
    for name in names:
        out_f, in_f = mods[name].weight.shape[:2]
        down, up = torch.randn(rank, in_f), torch.randn(out_f, rank)
        key = prefix + name.replace(".", "_")
        state.update({key + ".lora_down.weight": down, key + ".lora_up.weight": up, key + ".alpha": torch.tensor(alpha)})
        expect[name] = up @ down * (alpha / rank)
    return state, expect


NAMES = ["text_model.encoder.layers.0.self_attn.q_proj", "text_model.encoder.layers.1.mlp.fc1",
         "text_model.encoder.layers.2.self_attn.out_proj"]


@torch.no_grad()
def test_kohya_text_encoder_deltas_exact_and_unfuse_restores(text_encoder):
    pipe = Holder(text_encoder=text_encoder)
    state, expect = kohya_file(text_encoder, NAMES, "lora_te_")
    mods = dict(text_encoder.named_modules())
    before = {n: mods[n].weight.detach().clone() for n in NAMES}
    ids = torch.randint(0, 1000, (2, 77), generator=torch.Generator().manual_seed(0))
    base = text_encoder(ids)[0]
    pipe.load_lora_weights(state, adapter_name="k")
    hooked = text_encoder(ids)[0]
    assert (hooked - base).abs().max() > 1e-2
    pipe.fuse_lora()
    for n in NAMES:
        torch.testing.assert_close(mods[n].weight - before[n], expect[n], atol=1e-5, rtol=0)
    torch.testing.assert_close(text_encoder(ids)[0], hooked, atol=1e-4, rtol=0)
    pipe.unfuse_lora()
    assert all(torch.equal(mods[n].weight, before[n]) for n in NAMES)
    with pipe.lora_scale(0.0):
        torch.testing.assert_close(text_encoder(ids)[0], base, atol=0, rtol=0)
    pipe.set_adapters(["k"], [0.5])
    half = text_encoder(ids)[0]
    pipe.fuse_lora()  # fusing uses the adapter weights too: delta * 0.5
    for n in NAMES:
        torch.testing.assert_close(mods[n].weight - before[n], 0.5 * expect[n], atol=1e-5, rtol=0)
    torch.testing.assert_close(text_encoder(ids)[0], half, atol=1e-4, rtol=0)
    pipe.unfuse_lora()
    assert pipe.get_active_adapters() == ["k"]
    pipe.unload_lora_weights()
    torch.testing.assert_close(text_encoder(ids)[0], base, atol=0, rtol=0)
    assert pipe.get_list_adapters() == {}


def test_unknown_keys_are_named_and_pipeline_unchanged(text_encoder):
    pipe = Holder(text_encoder=text_encoder)
    state, _ = kohya_file(text_encoder, NAMES[:1], "lora_te_")
    state["lora_te_text_model_encoder_layers_99_mlp_fc1.lora_down.weight"] = torch.zeros(4, 32)
    with pytest.raises(ValueError, match="layers_99"):
        pipe.load_lora_weights(state)
    assert pipe.get_list_adapters() == {}


def test_wrong_shape_is_refused_before_anything_changes(text_encoder):
    pipe = Holder(text_encoder=text_encoder)
    state, _ = kohya_file(text_encoder, NAMES[:2], "lora_te_")
    key = "lora_te_" + NAMES[1].replace(".", "_") + ".lora_up.weight"
    state[key] = torch.zeros(5, 4)
    with pytest.raises(ValueError, match="does not fit"):
        pipe.load_lora_weights(state)
    assert pipe.get_list_adapters() == {}


@torch.no_grad()
def test_save_then_load_round_trip(text_encoder, tmp_path):
    pipe = Holder(text_encoder=text_encoder)
    state, _ = kohya_file(text_encoder, NAMES, "lora_te_", alpha=8.0)
    ids = torch.randint(0, 1000, (1, 77), generator=torch.Generator().manual_seed(0))
    pipe.load_lora_weights(state, adapter_name="a")
    want = text_encoder(ids)[0]
    file = Holder.save_lora_weights(tmp_path, text_encoder_lora_layers=pipe.lora_layers("a")["text_encoder"])
    pipe.unload_lora_weights()
    pipe.load_lora_weights(tmp_path)
    assert file.name == "pytorch_lora_weights.safetensors"
    torch.testing.assert_close(text_encoder(ids)[0], want, atol=1e-6, rtol=0)
    # lora_state_dict reads a file without loading it; load_lora_weights takes the dict back
    pipe.unload_lora_weights()
    read, alphas = Holder.lora_state_dict(tmp_path)
    assert all(k.startswith("text_encoder.") for k in read) and set(alphas.values()) == {8.0}  # from the metadata
    assert Holder.lora_state_dict(state)[1] == {k: 8.0 for k in state if k.endswith(".alpha")}
    pipe.load_lora_weights(read, adapter_name="b")
    torch.testing.assert_close(text_encoder(ids)[0], want, atol=1e-6, rtol=0)
    pipe.unload_lora_weights()
