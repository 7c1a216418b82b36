"""The original-layout key maps agree with diffusers' own single-file converters, in both directions."""
import pytest
import torch

from impasto.loading.single_file import keys as K

diffusers = pytest.importorskip("diffusers")
from diffusers.loaders import single_file_utils as su  # noqa: E402

UNET_CONFIGS = [
    dict(block_out_channels=(32, 64), layers_per_block=2, sample_size=16, in_channels=4, out_channels=4,
         down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
         cross_attention_dim=32, norm_num_groups=8),
    dict(block_out_channels=(32, 64, 64), layers_per_block=1, sample_size=16, in_channels=9, out_channels=4,
         down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
         up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
         norm_num_groups=8, addition_embed_type="text_time", addition_time_embed_dim=8,
         projection_class_embeddings_input_dim=8 * 6 + 32, transformer_layers_per_block=(1, 2, 2),
         use_linear_projection=True, attention_head_dim=(2, 4, 4)),
]


@pytest.mark.parametrize("cfg", UNET_CONFIGS, ids=["sd1-like", "sdxl-like"])
def test_unet_keys_match_diffusers_converter(cfg):
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(**cfg)
    sd = unet.state_dict()
    original = K.to_original(sd, K.unet_pairs(unet.config), K.UNET_PREFIX)
    assert all(k.startswith(K.UNET_PREFIX) for k in original)
    theirs = su.convert_ldm_unet_checkpoint(original, dict(unet.config))
    assert set(theirs) == set(sd)
    assert all(torch.equal(theirs[k], sd[k]) for k in sd)
    ours = K.from_original(original, K.unet_pairs(unet.config), K.UNET_PREFIX)
    assert set(ours) == set(sd) and all(torch.equal(ours[k], sd[k]) for k in sd)


def test_vae_keys_match_diffusers_converter():
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2,
                                  up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=8,
                                  layers_per_block=2)
    sd = vae.state_dict()
    original = K.vae_to_original(sd, vae.config)
    assert original["first_stage_model.encoder.mid.attn_1.q.weight"].ndim == 4  # 1x1 conv in the original
    theirs = su.convert_ldm_vae_checkpoint(original, dict(vae.config))
    assert set(theirs) == set(sd) and all(torch.equal(theirs[k], sd[k]) for k in sd)
    ours = K.vae_from_original(original, vae.config)
    assert set(ours) == set(sd) and all(torch.equal(ours[k], sd[k]) for k in sd)


def test_open_clip_keys_match_diffusers_converter():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.CLIPTextConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=1,
                                      projection_dim=48, vocab_size=1000, hidden_act="gelu")
    enc = transformers.CLIPTextModelWithProjection(cfg)
    sd = {k: v for k, v in enc.state_dict().items() if "position_ids" not in k}
    prefix = "conditioner.embedders.1.model."
    original = K.open_clip_to_original(sd, prefix, 3)
    assert original[prefix + "transformer.resblocks.0.attn.in_proj_weight"].shape == (192, 64)
    assert original[prefix + "text_projection"].shape == (64, 48)  # transposed in OpenCLIP
    theirs = su.convert_open_clip_checkpoint(enc, original, prefix=prefix)
    for k in sd:
        assert torch.equal(theirs[k], sd[k]), k
    ours = K.open_clip_from_original(original, prefix, 3, with_projection=True)
    assert set(ours) == set(sd) and all(torch.equal(ours[k], sd[k]) for k in sd)


def test_sd2_files_carry_an_extra_unused_layer():
    torch.manual_seed(0)
    sd = {"text_model.embeddings.token_embedding.weight": torch.randn(10, 64),
          "text_model.embeddings.position_embedding.weight": torch.randn(8, 64),
          "text_model.final_layer_norm.weight": torch.randn(64), "text_model.final_layer_norm.bias": torch.randn(64)}
    for a in ("layer_norm1", "layer_norm2"):
        sd.update({f"text_model.encoder.layers.0.{a}.{p}": torch.randn(64) for p in ("weight", "bias")})
    for a, shape in (("mlp.fc1", (96, 64)), ("mlp.fc2", (64, 96)), ("self_attn.out_proj", (64, 64)),
                     ("self_attn.q_proj", (64, 64)), ("self_attn.k_proj", (64, 64)), ("self_attn.v_proj", (64, 64))):
        sd[f"text_model.encoder.layers.0.{a}.weight"] = torch.randn(shape)
        sd[f"text_model.encoder.layers.0.{a}.bias"] = torch.randn(shape[0])
    original = K.open_clip_to_original(sd, "cond_stage_model.model.", 1, extra_last_layer=True)
    assert K.count_blocks(original, "cond_stage_model.model.transformer.resblocks.") == 2
    back = K.open_clip_from_original(original, "cond_stage_model.model.", 1, with_projection=False)
    assert set(back) == set(sd) and all(torch.equal(back[k], sd[k]) for k in sd)
