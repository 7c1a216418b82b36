"""Flax UNet, VAE and CLIP text models against impasto's torch models on the same weights (tiny SD folder)."""
import json

import numpy as np
import pytest
import torch

jax = pytest.importorskip("jax")
pytest.importorskip("flax")
import jax.numpy as jnp  # noqa: E402

from impasto.jax.clip import FlaxCLIPTextModel  # noqa: E402
from impasto.jax.unet import FlaxUNet2DConditionModel  # noqa: E402
from jax_utils import flax_pipeline, max_diff, one_torch_thread, sd_folder, seeded, torch_pipeline  # noqa: E402,F401

TOL = 1e-4


def test_unet_matches_torch():
    pipe, params = flax_pipeline()
    unet = torch_pipeline().unet
    x, ctx = seeded((2, 4, 16, 16), 1), seeded((2, 77, 32), 2)
    t = torch.tensor([981, 21])
    with torch.no_grad():
        ref = unet(x, t, encoder_hidden_states=ctx).sample.numpy()
    run = jax.jit(lambda p, x, t, c: pipe.unet.apply({"params": p}, x, t, c).sample)
    out = run(params["unet"], x.numpy(), t.numpy(), ctx.numpy())
    assert out.shape == ref.shape
    assert max_diff(out, ref) < TOL
    assert np.abs(ref).max() > 0.1  # not a degenerate comparison


def test_vae_encode_decode_match_torch():
    pipe, params = flax_pipeline()
    vae = torch_pipeline().vae
    image, z = seeded((1, 3, 32, 32), 3).clamp(-1, 1), seeded((1, 4, 16, 16), 4)
    with torch.no_grad():
        dist = vae.encode(image).latent_dist
        ref_mean, ref_std, ref_dec = dist.mean.numpy(), dist.std.numpy(), vae.decode(z).sample.numpy()
    fv = pipe.vae
    def encode(p, x):
        dist = fv.apply({"params": p}, x, method=fv.encode).latent_dist
        return dist.mean, dist.std

    enc = jax.jit(encode)
    dec = jax.jit(lambda p, z: fv.apply({"params": p}, z, method=fv.decode).sample)
    mean, std = enc(params["vae"], image.numpy())
    assert max_diff(np.transpose(mean, (0, 3, 1, 2)), ref_mean) < TOL
    assert max_diff(np.transpose(std, (0, 3, 1, 2)), ref_std) < TOL
    assert max_diff(dec(params["vae"], z.numpy()), ref_dec) < TOL


def test_clip_text_matches_torch():
    pipe, params = flax_pipeline()
    ids = pipe.prepare_inputs(["a photo of a cat", ""])
    with torch.no_grad():
        last, pooled = torch_pipeline().text_encoder(torch.from_numpy(ids).long())[:2]
    out = jax.jit(lambda p, i: pipe.text_encoder.apply({"params": p}, i))(params["text_encoder"], ids)
    assert max_diff(out[0], last.numpy()) < TOL
    assert max_diff(out[1], pooled.numpy()) < TOL


def test_param_names_follow_diffusers_flax():
    _, params = flax_pipeline()
    unet, vae, clip = params["unet"], params["vae"], params["text_encoder"]
    attn = unet["down_blocks_1"]["attentions_0"]["transformer_blocks_0"]["attn1"]
    assert set(attn) == {"to_q", "to_k", "to_v", "to_out_0"} and attn["to_q"]["kernel"].shape == (64, 64)
    assert unet["conv_in"]["kernel"].shape == (3, 3, 4, 32)  # (kh, kw, in, out)
    assert set(unet["time_embedding"]) == {"linear_1", "linear_2"}
    assert set(vae["encoder"]["mid_block"]["attentions_0"]) == {"group_norm", "query", "key", "value", "proj_attn"}
    assert set(vae["decoder"]["conv_norm_out"]) == {"scale", "bias"}
    assert set(clip["text_model"]["encoder"]["layers"]["0"]["self_attn"]) == {"q_proj", "k_proj", "v_proj", "out_proj"}
    assert "embedding" in clip["text_model"]["embeddings"]["token_embedding"]


def test_bfloat16_params_and_compute():
    model, params = FlaxCLIPTextModel.from_pretrained(sd_folder(), "text_encoder", dtype=jnp.bfloat16)
    leaf = params["text_model"]["final_layer_norm"]["scale"]
    assert leaf.dtype == jnp.bfloat16
    ids = flax_pipeline()[0].prepare_inputs(["a cat"])
    out = jax.jit(lambda p, i: model.apply({"params": p}, i)[0])(params, ids)
    f32 = model.clone(dtype=jnp.float32)
    ref = jax.jit(lambda p, i: f32.apply({"params": p}, i)[0])(flax_pipeline()[1]["text_encoder"], ids)
    assert out.dtype == jnp.bfloat16
    assert max_diff(out, ref) < 0.1


def test_msgpack_round_trip(tmp_path):
    model, params = flax_pipeline()[0].text_encoder, flax_pipeline()[1]["text_encoder"]
    model.save_pretrained(tmp_path / "te", params)
    assert (tmp_path / "te" / "flax_model.msgpack").is_file()
    again, loaded = FlaxCLIPTextModel.from_pretrained(tmp_path, "te")  # no torch weights there: msgpack
    assert again.config == model.config
    flat = jax.tree_util.tree_leaves(jax.tree_util.tree_map(lambda a, b: float(jnp.abs(a - b).max()), params, loaded))
    assert max(flat) == 0.0


def test_bad_configs_and_weights_raise(tmp_path):
    cfg = dict(torch_pipeline().unet.config)
    with pytest.raises(ValueError, match="time_cond_proj_dim"):
        FlaxUNet2DConditionModel.from_config(dict(cfg, time_cond_proj_dim=32))
    with pytest.raises(ValueError, match="dtype"):
        FlaxUNet2DConditionModel.from_config(cfg, dtype="int8")
    model = FlaxUNet2DConditionModel.from_config(cfg)
    state = dict(torch_pipeline().unet.state_dict())
    state["conv_in.weight"] = state["conv_in.weight"][:16]
    with pytest.raises(ValueError, match="conv_in.weight"):
        model.convert_torch_state(state)
    del state["conv_in.weight"]
    with pytest.raises(ValueError, match="lack 1 params"):
        model.convert_torch_state(state)
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(FileNotFoundError):
        FlaxUNet2DConditionModel.from_pretrained(tmp_path / "m", from_pt=False)
