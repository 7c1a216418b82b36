"""AutoencoderKL parity with diffusers on tiny seeded-random models (float32, CPU)."""
from __future__ import annotations

import json

import pytest
import torch

from impasto.models.autoencoder_kl import AutoencoderKL
from vae_utils import KL_CONFIGS, make_diffusers, max_diff, save

pytestmark = pytest.mark.usefixtures("one_thread")

TOL = 1e-4


@pytest.fixture(scope="module", params=sorted(KL_CONFIGS))
def pair(request, tmp_path_factory):
    ref = make_diffusers("AutoencoderKL", KL_CONFIGS[request.param], seed=1)
    folder = save(ref, tmp_path_factory.mktemp(request.param))
    return request.param, ref, AutoencoderKL.from_pretrained(folder), folder


def _image(cfg, batch=2, seed=3):
    size = 2 ** (len(cfg["block_out_channels"]) - 1) * 4
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def test_encode_decode_match_diffusers(pair):
    name, ref, ours, _ = pair
    x = _image(KL_CONFIGS[name])
    a, b = ref.encode(x).latent_dist, ours.encode(x).latent_dist
    assert max_diff(a.mean, b.mean) <= TOL and max_diff(a.std, b.std) <= TOL and max_diff(a.var, b.var) <= TOL
    assert max_diff(a.kl(), b.kl()) <= TOL * max(1.0, a.kl().abs().max().item())
    sa = a.sample(generator=torch.Generator().manual_seed(7))
    sb = b.sample(generator=torch.Generator().manual_seed(7))
    assert max_diff(sa, sb) <= TOL
    assert max_diff(sb, b.mode()) > 1e-3  # sampling really adds noise
    assert torch.equal(b.mode(), b.mean)
    assert max_diff(ref.decode(sa).sample, ours.decode(sb).sample) <= TOL
    assert max_diff(ref.decode(sa, return_dict=False)[0], ours.decode(sb, return_dict=False)[0]) <= TOL
    fa = ref(x, sample_posterior=True, generator=torch.Generator().manual_seed(5)).sample
    fb = ours(x, sample_posterior=True, generator=torch.Generator().manual_seed(5)).sample
    assert max_diff(fa, fb) <= TOL


def test_config_keys_and_scale_factor(pair):
    name, ref, ours, folder = pair
    for key, value in KL_CONFIGS[name].items():
        got = ours.config[key]
        assert (list(got) if isinstance(got, (list, tuple)) else got) == \
               (list(value) if isinstance(value, (list, tuple)) else value), key
    for key in ("scaling_factor", "shift_factor", "latents_mean", "latents_std", "force_upcast", "sample_size"):
        assert key in ours.config
    assert 2 ** (len(ours.config.block_out_channels) - 1) == 2 ** (len(ref.config.block_out_channels) - 1)
    assert list(ours.state_dict()) == list(ref.state_dict())  # same keys, same order
    assert ours.config.force_upcast == json.loads((folder / "config.json").read_text()).get("force_upcast", True)


@torch.no_grad()
def test_list_of_generators_per_sample():
    ref = make_diffusers("AutoencoderKL", KL_CONFIGS["one_block"])
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution as RefDist

    from impasto.models.vae_blocks import DiagonalGaussianDistribution

    moments = torch.randn(3, 8, 4, 4)
    gens = lambda: [torch.Generator().manual_seed(s) for s in (1, 2, 3)]  # noqa: E731
    a, b = RefDist(moments).sample(gens()), DiagonalGaussianDistribution(moments).sample(gens())
    assert max_diff(a, b) == 0.0
    assert max_diff(RefDist(moments).nll(a), DiagonalGaussianDistribution(moments).nll(b)) <= 1e-3
    other_r, other_o = RefDist(moments.flip(0)), DiagonalGaussianDistribution(moments.flip(0))
    assert max_diff(RefDist(moments).kl(other_r), DiagonalGaussianDistribution(moments).kl(other_o)) <= 1e-3
    assert DiagonalGaussianDistribution(moments, deterministic=True).std.abs().max() == 0
    with pytest.raises(ValueError, match="generator"):
        DiagonalGaussianDistribution(moments).sample(gens()[:2])
    del ref


@torch.no_grad()
def test_slicing_equals_unsliced(tmp_path):
    ref = make_diffusers("AutoencoderKL", KL_CONFIGS["sd_like"])
    ours = AutoencoderKL.from_pretrained(save(ref, tmp_path))
    x = torch.randn(3, 3, 16, 16)
    z = torch.randn(3, 4, 8, 8)
    enc, dec = ours.encode(x).latent_dist.mean, ours.decode(z).sample
    ours.enable_slicing()
    assert ours.use_slicing
    assert max_diff(enc, ours.encode(x).latent_dist.mean) <= 1e-5
    assert max_diff(dec, ours.decode(z).sample) <= 1e-5
    ours.disable_slicing()
    assert not ours.use_slicing
    ours.fuse_qkv_projections()
    assert max_diff(dec, ours.decode(z).sample) <= 1e-5
    ours.unfuse_qkv_projections()


@torch.no_grad()
def test_bfloat16_load_matches_diffusers(tmp_path):
    import diffusers

    folder = save(make_diffusers("AutoencoderKL", KL_CONFIGS["sd_like"]), tmp_path)
    ref = diffusers.AutoencoderKL.from_pretrained(folder, torch_dtype=torch.bfloat16)
    ours = AutoencoderKL.from_pretrained(folder, torch_dtype=torch.bfloat16)
    assert ours.dtype == torch.bfloat16 and ours.encoder.conv_in.weight.dtype == torch.bfloat16
    z = torch.randn(1, 4, 8, 8, dtype=torch.bfloat16)
    a, b = ref.decode(z).sample, ours.decode(z).sample
    assert b.dtype == torch.bfloat16
    assert max_diff(a, b) <= 2e-2 * max(1.0, a.abs().max().item())


@torch.no_grad()
def test_tiling_matches_diffusers_tiled(tmp_path):
    ref = make_diffusers("AutoencoderKL", KL_CONFIGS["sd_like"])  # sample_size 32 -> latent tiles of 16
    ours = AutoencoderKL.from_pretrained(save(ref, tmp_path))
    x = torch.randn(1, 3, 64, 80)
    z = torch.randn(2, 4, 32, 40)
    plain_enc, plain_dec = ours.encode(x).latent_dist.mean, ours.decode(z).sample
    ref.enable_tiling()
    ours.enable_tiling()
    tiled_enc, tiled_dec = ours.encode(x).latent_dist.mean, ours.decode(z).sample
    assert max_diff(ref.encode(x).latent_dist.mean, tiled_enc) <= TOL
    assert max_diff(ref.decode(z).sample, tiled_dec) <= TOL
    assert max_diff(plain_dec, tiled_dec) > 1e-3  # tiling really happened
    assert tiled_enc.shape == plain_enc.shape and tiled_dec.shape == plain_dec.shape
    # tiling with slicing, and an image no larger than a tile (untiled path)
    ours.enable_slicing()
    assert max_diff(ours.decode(z).sample, tiled_dec) <= 1e-5
    small = torch.randn(1, 4, 16, 16)
    assert max_diff(ours.decode(small).sample, ref.decode(small).sample) <= TOL
    # explicit tile sizes and overlap, compared with diffusers given the same attributes
    ours.enable_tiling(tile_sample_min_size=24, tile_overlap_factor=0.5)
    assert (ours.tile_sample_min_size, ours.tile_latent_min_size) == (24, 12)
    ref.tile_sample_min_size, ref.tile_latent_min_size, ref.tile_overlap_factor = 24, 12, 0.5
    assert max_diff(ref.decode(z).sample, ours.decode(z).sample) <= TOL
    assert max_diff(ref.encode(x).latent_dist.mean, ours.encode(x).latent_dist.mean) <= TOL
    ours.disable_tiling()
    assert max_diff(ours.decode(z).sample, plain_dec) <= 1e-5
    with pytest.raises(ValueError, match="tile_overlap_factor"):
        ours.enable_tiling(tile_overlap_factor=1.5)


@torch.no_grad()
def test_legacy_attention_names_load(tmp_path):
    from safetensors.torch import save_file

    ref = make_diffusers("AutoencoderKL", KL_CONFIGS["sd_like"])
    save(ref, tmp_path)
    old = {}
    names = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    for key, value in ref.state_dict().items():
        for new, legacy in names.items():
            if f".attentions.0.{new}." in key:
                key = key.replace(f".{new}.", f".{legacy}.")
                if key.endswith("weight") and "encoder" in key:  # as 1x1 convs, the original LDM layout
                    value = value[:, :, None, None]
        old[key] = value.contiguous()
    assert any(".query.weight" in k for k in old) and any(v.ndim == 4 and "proj_attn" in k for k, v in old.items())
    save_file(old, str(tmp_path / "diffusion_pytorch_model.safetensors"))
    ours = AutoencoderKL.from_pretrained(tmp_path)
    x = torch.randn(1, 3, 16, 16)
    assert max_diff(ref.encode(x).latent_dist.mean, ours.encode(x).latent_dist.mean) <= TOL
    z = torch.randn(1, 4, 8, 8)
    assert max_diff(ref.decode(z).sample, ours.decode(z).sample) <= TOL


@torch.no_grad()
def test_impasto_save_loads_in_diffusers(tmp_path):
    import diffusers

    ref = make_diffusers("AutoencoderKL", KL_CONFIGS["wide_latent"])
    ours = AutoencoderKL.from_pretrained(save(ref, tmp_path / "ref"))
    ours.save_pretrained(tmp_path / "ours")
    back, info = diffusers.AutoencoderKL.from_pretrained(tmp_path / "ours", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert back.config.latent_channels == 16 and back.config.use_quant_conv is False
    x = torch.randn(1, 3, 16, 16)
    assert max_diff(back.encode(x).latent_dist.mean, ours.encode(x).latent_dist.mean) <= TOL


def test_truncated_weights_name_the_file(tmp_path):
    ref = make_diffusers("AutoencoderKL", KL_CONFIGS["one_block"])
    save(ref, tmp_path)
    file = tmp_path / "diffusion_pytorch_model.safetensors"
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="diffusion_pytorch_model.safetensors"):
        AutoencoderKL.from_pretrained(tmp_path)


def test_bad_inputs_and_configs(tmp_path):
    ours = AutoencoderKL(**KL_CONFIGS["one_block"])
    with pytest.raises(ValueError, match="x"):
        ours.encode(torch.randn(1, 4, 8, 8))
    with pytest.raises(ValueError, match="z"):
        ours.decode(torch.randn(1, 3, 8, 8))
    with pytest.raises(ValueError, match="down_block_types"):
        AutoencoderKL(**{**KL_CONFIGS["one_block"], "down_block_types": ("CrossAttnDownBlock2D",)})
    with pytest.raises(ValueError, match="norm_num_groups"):
        AutoencoderKL(**{**KL_CONFIGS["one_block"], "norm_num_groups": 3})
    with pytest.raises(ValueError, match="act_fn"):
        AutoencoderKL(**{**KL_CONFIGS["one_block"], "act_fn": "tanhh"})
