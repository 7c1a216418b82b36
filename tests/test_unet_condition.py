"""UNet2DConditionModel against diffusers on tiny seeded-random models of every checkpoint family."""
from __future__ import annotations

import json
import logging

import pytest
import torch

import impasto
from unet_utils import CONFIGS, inputs, make_reference, max_diff

TOL = 1e-4


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """name -> (diffusers model, impasto model, folder), built lazily once per module."""
    cache = {}

    def get(name):
        if name not in cache:
            folder = tmp_path_factory.mktemp(name)
            ref = make_reference("UNet2DConditionModel", CONFIGS[name], folder)
            cache[name] = (ref, impasto.UNet2DConditionModel.from_pretrained(folder), folder)
        return cache[name]

    return get


def _plain(v):
    return [_plain(x) for x in v] if isinstance(v, (list, tuple)) else v


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_matches_diffusers(built, name):
    ref, mine, _ = built(name)
    assert list(mine.state_dict()) == list(ref.state_dict())
    for key, value in ref.config.items():
        if not key.startswith("_"):
            assert _plain(mine.config[key]) == _plain(value), key
    kw = inputs(name)
    with torch.no_grad():
        expected = ref(**kw).sample
        got = mine(**kw).sample
    assert got.shape == expected.shape
    assert max_diff(got, expected) <= TOL


def test_sd1_call_variants(built, caplog):
    ref, mine, _ = built("sd1")
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4, 9, 14, generator=g)  # odd height: the up blocks get explicit sizes
    text = torch.randn(2, 7, 32, generator=g)
    keep = torch.tensor([[1, 1, 1, 0, 0, 1, 1], [1, 1, 1, 1, 1, 1, 0]])
    with torch.no_grad():
        for t in (25, 25.5, torch.tensor(999), torch.tensor([10, 500])):
            assert max_diff(mine(x, t, text).sample, ref(x, t, text).sample) <= TOL, t
        assert max_diff(mine(x, 5, text, encoder_attention_mask=keep).sample,
                        ref(x, 5, text, encoder_attention_mask=keep).sample) <= TOL
        base = mine(x, 5, text, return_dict=False)[0]
        assert max_diff(mine(x, 5, text, cross_attention_kwargs={"scale": 0.3}).sample, base) == 0
        with caplog.at_level(logging.WARNING, logger="impasto"):
            mine(x, 5, text, cross_attention_kwargs={"made_up": 1})
        assert "made_up" in caplog.text
        with pytest.raises(ValueError, match="timestep"):
            mine(x, torch.tensor([1, 2, 3]), text)


def test_sd1_residuals_and_freeu(built):
    ref, mine, _ = built("sd1")
    g = torch.Generator().manual_seed(4)
    x, text = torch.randn(2, 4, 16, 16, generator=g), torch.randn(2, 7, 32, generator=g)
    # ControlNet: one residual per skip state (conv_in, 2 layers + downsample, 2 layers) and one for the mid block
    shapes = [(32, 16)] * 3 + [(32, 8)] + [(64, 8)] * 2
    down = [torch.randn(2, c, s, s, generator=g) for c, s in shapes]
    mid = torch.randn(2, 64, 8, 8, generator=g)
    # T2I-Adapter: one per down block
    intra = [torch.randn(2, 32, 16, 16, generator=g), torch.randn(2, 64, 8, 8, generator=g)]
    with torch.no_grad():
        a = mine(x, 7, text, down_block_additional_residuals=down, mid_block_additional_residual=mid).sample
        b = ref(x, 7, text, down_block_additional_residuals=down, mid_block_additional_residual=mid).sample
        assert max_diff(a, b) <= TOL
        a = mine(x, 7, text, down_intrablock_additional_residuals=[t.clone() for t in intra]).sample
        b = ref(x, 7, text, down_intrablock_additional_residuals=[t.clone() for t in intra]).sample
        assert max_diff(a, b) <= TOL
        plain = mine(x, 7, text).sample
        for model in (mine, ref):
            model.enable_freeu(s1=0.9, s2=0.2, b1=1.2, b2=1.4)
        a, b = mine(x, 7, text).sample, ref(x, 7, text).sample
        assert max_diff(a, b) <= TOL and max_diff(a, plain) > 1e-3
        for model in (mine, ref):
            model.disable_freeu()
        assert max_diff(mine(x, 7, text).sample, plain) == 0


def test_attention_controls_keep_output(built):
    _, mine, _ = built("sd2")
    kw = inputs("sd2")
    with torch.no_grad():
        base = mine(**kw).sample
        layers = mine._attention_layers()
        for size in ("auto", "max", 1, [2] * len(layers)):
            mine.set_attention_slice(size)
            assert all(layer.attn_backend.kind == "sliced" and layer.attn_backend.slice_size for layer in layers)
            assert max_diff(mine(**kw).sample, base) <= 1e-5, size
        assert all(layer.attn_backend.upcast for layer in layers)  # upcast_attention survives the switch
        mine.set_attention_slice(None)
        assert all(layer.attn_backend.kind == "sdpa" for layer in layers)
        mine.fuse_qkv_projections()
        assert all(layer.fused for layer in layers)
        assert max_diff(mine(**kw).sample, base) <= 1e-5
        mine.enable_xformers_memory_efficient_attention()  # CPU: falls back to SDPA
        assert max_diff(mine(**kw).sample, base) <= 1e-5
        mine.disable_xformers_memory_efficient_attention()
        mine.set_default_attn_processor()
        assert not any(layer.fused for layer in layers)
        assert max_diff(mine(**kw).sample, base) == 0
    with pytest.raises(ValueError, match="slice_size"):
        mine.set_attention_slice(99)
    with pytest.raises(ValueError, match="slice_size"):
        mine.set_attention_slice([1, 2])


def test_saved_folder_loads_in_diffusers(built, tmp_path):
    import diffusers

    ref, mine, _ = built("sdxl")
    mine.save_pretrained(tmp_path)
    back, info = diffusers.UNet2DConditionModel.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    kw = inputs("sdxl")
    with torch.no_grad():
        assert max_diff(back.eval()(**kw).sample, ref(**kw).sample) == 0


def test_errors(built, tmp_path):
    _, mine, folder = built("sdxl")
    kw = inputs("sdxl")
    kw["added_cond_kwargs"] = {"text_embeds": kw["added_cond_kwargs"]["text_embeds"]}
    with pytest.raises(ValueError, match="time_ids"):
        mine(**kw)
    # a config that does not fit the weights: the error names the weights file
    cfg = json.loads((folder / "config.json").read_text())
    cfg["cross_attention_dim"] = 40
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    (tmp_path / "diffusion_pytorch_model.safetensors").write_bytes(
        (folder / "diffusion_pytorch_model.safetensors").read_bytes())
    with pytest.raises(ValueError, match="diffusion_pytorch_model.safetensors"):
        impasto.UNet2DConditionModel.from_pretrained(tmp_path)


@pytest.mark.parametrize("key,value", [
    ("dual_cross_attention", True), ("class_embed_type", "timestep"), ("addition_embed_type", "text"),
    ("down_block_types", ("SimpleCrossAttnDownBlock2D", "DownBlock2D")), ("encoder_hid_dim_type", "text_proj"),
    ("time_embedding_type", "fourier"), ("mid_block_type", "UNetMidBlock2DSimpleCrossAttn"),
    ("attention_head_dim", (2, 4, 8)), ("transformer_layers_per_block", ([1], [1, 2])),
])
def test_unsupported_config_names_key(key, value):
    with torch.device("meta"), pytest.raises(ValueError, match=key):
        impasto.UNet2DConditionModel(**dict(CONFIGS["sd1"], **{key: value}))


def test_compiles_without_graph_breaks(built):
    ref, mine, _ = built("lcm")
    kw = inputs("lcm")
    compiled = torch.compile(mine, backend="eager", fullgraph=True)
    with torch.no_grad():
        assert max_diff(compiled(**kw).sample, ref(**kw).sample) <= TOL


def test_num_attention_heads_takes_precedence():
    with torch.device("meta"):
        model = impasto.UNet2DConditionModel(**dict(CONFIGS["sd2"], attention_head_dim=8, num_attention_heads=(2, 4)))
    heads = [layer.heads for layer in model._attention_layers()]
    assert heads[0] == 2 and set(heads) == {2, 4}
