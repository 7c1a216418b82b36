"""UNet2DModel (LDM super-resolution / DDPM style) against diffusers on tiny seeded-random models."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

import impasto
from unet_utils import LDM_SR, make_reference, max_diff

TOL = 1e-4
VARIANTS = {
    "ldm_sr": LDM_SR,
    # one head per layer (attention_head_dim None), class labels, scale_shift resnets (mid attention: no norm)
    "ddpm": dict(LDM_SR, in_channels=3, attention_head_dim=None, num_class_embeds=5,
                 resnet_time_scale_shift="scale_shift", flip_sin_to_cos=False, freq_shift=1, layers_per_block=1,
                 center_input_sample=True),
}


pytestmark = pytest.mark.usefixtures("one_thread")


def _inputs(cfg, seed=2):
    g = torch.Generator().manual_seed(seed)
    kw = dict(sample=torch.randn(2, cfg["in_channels"], 16, 16, generator=g), timestep=torch.tensor([3, 700]))
    if cfg.get("num_class_embeds"):
        kw["class_labels"] = torch.tensor([1, 4])
    return kw


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_matches_diffusers(name, tmp_path):
    cfg = VARIANTS[name]
    ref = make_reference("UNet2DModel", cfg, tmp_path)
    mine = impasto.UNet2DModel.from_pretrained(tmp_path)
    assert list(mine.state_dict()) == list(ref.state_dict())
    kw = _inputs(cfg)
    with torch.no_grad():
        expected = ref(**kw).sample
        assert max_diff(mine(**kw).sample, expected) <= TOL
        assert max_diff(mine(kw["sample"], 50, kw.get("class_labels")).sample,
                        ref(kw["sample"], 50, kw.get("class_labels")).sample) <= TOL
        mine.set_attention_slice("max")
        assert max_diff(mine(**kw, return_dict=False)[0], expected) <= TOL


def test_old_attention_names_and_round_trip(tmp_path):
    import diffusers

    ref = make_reference("UNet2DModel", LDM_SR, tmp_path / "new")
    state = load_file(tmp_path / "new" / "diffusion_pytorch_model.safetensors")
    old_names = {".to_q.": ".query.", ".to_k.": ".key.", ".to_v.": ".value.", ".to_out.0.": ".proj_attn."}
    renamed = {}
    for key, value in state.items():
        for new, old in old_names.items():
            key = key.replace(new, old)
        renamed[key] = value
    assert sum(".query." in k for k in renamed) == 12  # 2 down + 1 mid + 3 up layers, weight and bias
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "config.json").write_bytes((tmp_path / "new" / "config.json").read_bytes())
    save_file(renamed, tmp_path / "old" / "diffusion_pytorch_model.safetensors")
    mine = impasto.UNet2DModel.from_pretrained(tmp_path / "old")
    kw = _inputs(LDM_SR)
    with torch.no_grad():
        assert max_diff(mine(**kw).sample, ref(**kw).sample) <= TOL
    mine.save_pretrained(tmp_path / "mine")
    back, info = diffusers.UNet2DModel.from_pretrained(tmp_path / "mine", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    with torch.no_grad():
        assert max_diff(back.eval()(**kw).sample, ref(**kw).sample) == 0


@pytest.mark.parametrize("key,value", [
    ("downsample_type", "resnet"), ("time_embedding_type", "fourier"),
    ("down_block_types", ("AttnSkipDownBlock2D", "AttnDownBlock2D")), ("class_embed_type", "identity"),
    ("up_block_types", ("AttnUpBlock2D",)),
])
def test_unsupported_config_names_key(key, value):
    with torch.device("meta"), pytest.raises(ValueError, match=key):
        impasto.UNet2DModel(**dict(LDM_SR, **{key: value}))
