"""IP-Adapter Plus / Full Face, several adapters at once and per-block scales, against diffusers: tiny random
adapters in the released file layouts (flat .safetensors and nested .bin) load into both libraries' SD 1.x and
SDXL pipelines; images agree, the UNet's state dict has diffusers' keys, bad input is refused by name."""
from __future__ import annotations

import PIL.Image
import pytest
import torch

import impasto
import tiny
from pipeline_utils import max_diff
from test_ip_adapter import TOL, adapter_state, image_encoder, ip_image, nested, run

pytestmark = pytest.mark.usefixtures("one_thread")
HIDDEN = 32  # the tiny image encoder's hidden size (what Plus / Full Face read)


def _randn(g, *shape, scale=0.3):
    return torch.randn(*shape, generator=g) * scale


def _norm(g, state, key, dim):
    state[f"{key}.weight"] = 1 + _randn(g, dim, scale=0.1)
    state[f"{key}.bias"] = _randn(g, dim, scale=0.1)


def with_layers(unet, image_proj: dict, seed: int) -> dict:
    """image_proj weights + random to_k_ip / to_v_ip for this diffusers UNet, keyed as the released files."""
    layers = {k: v for k, v in adapter_state(unet, seed).items() if k.startswith("ip_adapter.")}
    return {**{f"image_proj.{k}": v for k, v in image_proj.items()}, **layers}


def plus_state(unet, seed: int = 2, queries: int = 6, width: int = 32, depth: int = 4) -> dict:
    """A Plus resampler in the released names (layers.i.0 = attention with norm1/norm2/to_q/to_kv/to_out,
    layers.i.1 = LayerNorm, Linear, GELU, Linear), one 64-wide head."""
    g = torch.Generator().manual_seed(seed)
    cross = unet.config.cross_attention_dim
    proj = {"latents": _randn(g, 1, queries, width, scale=width ** -0.5),
            "proj_in.weight": _randn(g, width, HIDDEN), "proj_in.bias": _randn(g, width, scale=0.1),
            "proj_out.weight": _randn(g, cross, width), "proj_out.bias": _randn(g, cross, scale=0.1)}
    _norm(g, proj, "norm_out", cross)
    for i in range(depth):
        _norm(g, proj, f"layers.{i}.0.norm1", width)
        _norm(g, proj, f"layers.{i}.0.norm2", width)
        proj[f"layers.{i}.0.to_q.weight"] = _randn(g, 64, width)
        proj[f"layers.{i}.0.to_kv.weight"] = _randn(g, 128, width)
        proj[f"layers.{i}.0.to_out.weight"] = _randn(g, width, 64, scale=0.1)
        _norm(g, proj, f"layers.{i}.1.0", width)
        proj[f"layers.{i}.1.1.weight"] = _randn(g, 4 * width, width)
        proj[f"layers.{i}.1.3.weight"] = _randn(g, width, 4 * width, scale=0.1)
    return with_layers(unet, proj, seed)


def full_face_state(unet, seed: int = 3) -> dict:
    g = torch.Generator().manual_seed(seed)
    cross = unet.config.cross_attention_dim
    proj = {"proj.0.weight": _randn(g, HIDDEN, HIDDEN), "proj.0.bias": _randn(g, HIDDEN, scale=0.1),
            "proj.2.weight": _randn(g, cross, HIDDEN), "proj.2.bias": _randn(g, cross, scale=0.1)}
    _norm(g, proj, "proj.3", cross)
    return with_layers(unet, proj, seed)


def ip_keys(unet) -> dict:
    return {k: v for k, v in unet.state_dict().items() if "_ip." in k or k.startswith("encoder_hid_proj")}


class Setup:
    """Both libraries' tiny pipelines and root/models/{plus, basic, full}.{safetensors, bin} + image_encoder/."""

    def __init__(self, root, variant: str):
        from safetensors.torch import save_file

        self.ref = tiny.make_sd_pipeline(variant)
        self.mine = impasto.DiffusionPipeline.from_pretrained(tiny.save_folder(self.ref, root / variant))
        self.mine.set_progress_bar_config(disable=True)
        self.size = dict(height=32, width=32)
        self.plain = run(self.mine, **self.size)  # before any adapter
        self.root = root / "ip"
        models = self.root / "models"
        image_encoder().save_pretrained(str(models / "image_encoder"))
        unet = self.ref.unet
        self.states = {"plus": plus_state(unet), "basic": adapter_state(unet, 5), "full": full_face_state(unet)}
        for name, state in self.states.items():
            save_file(state, str(models / f"{name}.safetensors"))
            torch.save(nested(state), models / f"{name}.bin")

    def load(self, weight_name, mine_name=None, **kw):
        self.ref.load_ip_adapter(str(self.root), subfolder="models", weight_name=weight_name, **kw)
        self.mine.load_ip_adapter(str(self.root), subfolder="models", weight_name=mine_name or weight_name, **kw)

    def both(self, scale, **kw):
        for pipe in (self.ref, self.mine):
            pipe.set_ip_adapter_scale(scale)
        kw = {**self.size, **kw}
        return run(self.ref, **kw), run(self.mine, **kw)


@pytest.fixture(scope="module")
def sd1(tmp_path_factory):
    return Setup(tmp_path_factory.mktemp("ip-plus"), "sd1")


@pytest.mark.parametrize("guidance", [7.5, 1.0])
def test_plus_txt2img_matches_diffusers(sd1, guidance):
    sd1.load("plus.safetensors")
    ref, mine = sd1.both(0.6, ip_adapter_image=ip_image(), guidance_scale=guidance)
    assert max_diff(ref, mine) < TOL
    assert max_diff(mine, sd1.plain) > 5 * TOL  # the image prompt acts
    black = PIL.Image.new("RGB", (32, 32))
    assert max_diff(mine, run(sd1.mine, ip_adapter_image=black, guidance_scale=guidance, **sd1.size)) > 5 * TOL


def test_plus_embeds_keys_and_bin(sd1):
    sd1.load("plus.safetensors", "plus.bin")
    ref, mine = ip_keys(sd1.ref.unet), ip_keys(sd1.mine.unet)
    assert "encoder_hid_proj.image_projection_layers.0.layers.0.attn.to_k.weight" in ref
    assert list(mine) == list(ref) and all(torch.equal(ref[k], mine[k]) for k in ref)
    cpu = torch.device("cpu")
    ref_embeds = sd1.ref.prepare_ip_adapter_image_embeds(ip_image(), None, cpu, 1, True)
    mine_embeds = sd1.mine.prepare_ip_adapter_image_embeds(ip_image(), None, cpu, 1, True)
    assert mine_embeds[0].shape == (2, 1, 17, HIDDEN)  # penultimate hidden states; the negative: a zeros image
    assert max_diff(ref_embeds[0], mine_embeds[0]) < 1e-5 and mine_embeds[0][0].abs().max() > 0.1
    ref, mine = sd1.both(0.6, ip_adapter_image_embeds=mine_embeds)
    assert max_diff(ref, mine) < TOL
    assert max_diff(mine, run(sd1.mine, ip_adapter_image=ip_image(), **sd1.size)) < 1e-5


def test_full_face_matches_diffusers(sd1):
    sd1.load("full.safetensors")
    assert list(ip_keys(sd1.mine.unet)) == list(ip_keys(sd1.ref.unet))
    ref, mine = sd1.both(0.7, ip_adapter_image=ip_image(3))
    assert max_diff(ref, mine) < TOL and max_diff(mine, sd1.plain) > 5 * TOL


def test_two_adapters_two_images_two_scales(sd1):
    sd1.load(["basic.safetensors", "plus.safetensors"], ["basic.bin", "plus.safetensors"])
    ref, mine = ip_keys(sd1.ref.unet), ip_keys(sd1.mine.unet)
    assert list(mine) == list(ref) and all(torch.equal(ref[k], mine[k]) for k in ref)
    images = [ip_image(1), ip_image(2)]
    ref, mine = sd1.both([0.5, 0.8], ip_adapter_image=images)
    assert max_diff(ref, mine) < TOL
    both = mine
    ref, mine = sd1.both([0.5, 0.8], ip_adapter_image=images, num_images_per_prompt=2, guidance_scale=1.0)
    assert max_diff(ref, mine) < TOL
    # the second adapter at 0 is the first alone
    sd1.mine.set_ip_adapter_scale([0.5, 0.0])
    only_first = run(sd1.mine, ip_adapter_image=images, **sd1.size)
    assert max_diff(both, only_first) > 5 * TOL  # the second adapter acts
    sd1.mine.load_ip_adapter(str(sd1.root), subfolder="models", weight_name="basic.safetensors")
    sd1.mine.set_ip_adapter_scale(0.5)
    assert max_diff(only_first, run(sd1.mine, ip_adapter_image=images[:1], **sd1.size)) < 1e-5


def test_per_block_scales(sd1):
    sd1.load("plus.safetensors")
    style = {"down": {"block_1": [1.0]}, "up": {"block_0": [0.0, 0.8]}}  # InstantStyle-like, tiny UNet's blocks
    ref, mine = sd1.both(style, ip_adapter_image=ip_image())
    assert max_diff(ref, mine) < TOL and max_diff(mine, sd1.plain) > 5 * TOL
    scales = {n: p.scale[0] for n, p in sd1.mine.unet.attn_processors.items() if hasattr(p, "to_k_ip")}
    assert scales == {n: p.scale[0] for n, p in sd1.ref.unet.attn_processors.items() if hasattr(p, "to_k_ip")}
    assert sorted(set(scales.values())) == [0.0, 0.8, 1.0]
    ref, mine = sd1.both({"up": {"block_0": 0.0}, "down": 0.0}, ip_adapter_image=ip_image())
    assert max_diff(ref, mine) < TOL and max_diff(mine, sd1.plain) < 1e-5  # all zero: no adapter
    sd1.load(["basic.safetensors", "plus.safetensors"])
    ref, mine = sd1.both([{"up": {"block_0": [0.0, 1.0]}}, 0.4], ip_adapter_image=[ip_image(1), ip_image(2)])
    assert max_diff(ref, mine) < TOL


def test_bad_input(sd1, tmp_path):
    mine, root = sd1.mine, str(sd1.root)
    sd1.load(["basic.safetensors", "plus.safetensors"])
    with pytest.raises(ValueError, match="weight_name, subfolder"):
        mine.load_ip_adapter(root, subfolder=["models"] * 3, weight_name=["basic.safetensors", "plus.safetensors"])
    with pytest.raises(ValueError, match="weight_name, pretrained_model_name_or_path_or_dict"):
        mine.load_ip_adapter([root, root, root], subfolder="models", weight_name=["basic.safetensors"] * 2)
    with pytest.raises(ValueError, match="scale: got 3 scales for 2"):
        mine.set_ip_adapter_scale([0.5, 0.5, 0.5])
    with pytest.raises(ValueError, match=r"scale: down has no transformer layers in \['block_0'\]"):
        mine.set_ip_adapter_scale({"down": {"block_0": 1.0}})
    with pytest.raises(ValueError, match="scale: expected 2 weights for up.block_0"):
        mine.set_ip_adapter_scale({"up": {"block_0": [1.0, 1.0, 1.0]}})
    with pytest.raises(ValueError, match="scale: UNet block weights take keys"):
        mine.set_ip_adapter_scale({"middle": 1.0})
    with pytest.raises(ValueError, match="scale: expected a number"):
        mine.set_ip_adapter_scale(["high", 0.5])
    with pytest.raises(ValueError, match="ip_adapter_image: got 1 images for 2"):
        run(mine, ip_adapter_image=ip_image(), **sd1.size)
    with pytest.raises(ValueError, match="ip_adapter_image_embeds: expected tensors of shape .*patches"):
        run(mine, ip_adapter_image_embeds=[torch.zeros(2, 1, 24), torch.zeros(2, 1, HIDDEN)], **sd1.size)
    layers = {k: v for k, v in sd1.states["plus"].items() if k.startswith("ip_adapter.")}
    faceid = {**layers, "image_proj.norm.weight": torch.ones(32), "image_proj.proj.0.weight": torch.zeros(64, 8)}
    with pytest.raises(ValueError, match="FaceID file"):
        mine.load_ip_adapter(faceid, subfolder=None, weight_name=None, image_encoder_folder=None)
    bad = dict(sd1.states["plus"])
    bad["image_proj.layers.0.0.to_q.weight"] = torch.zeros(48, 32)
    with pytest.raises(ValueError, match="pretrained_model_name_or_path_or_dict: the state dict: the Plus"):
        mine.load_ip_adapter(bad, subfolder=None, weight_name=None, image_encoder_folder=None)
    bad = {k: v for k, v in sd1.states["plus"].items() if k != "image_proj.layers.3.1.3.weight"}
    with pytest.raises(ValueError, match="image_proj weights do not fit"):
        mine.load_ip_adapter(bad, subfolder=None, weight_name=None, image_encoder_folder=None)
    # the refused loads left both adapters in place
    assert max_diff(*sd1.both([0.5, 0.5], ip_adapter_image=[ip_image(1), ip_image(2)])) < TOL


@pytest.fixture(scope="module")
def sdxl(tmp_path_factory):
    return Setup(tmp_path_factory.mktemp("ip-plus-xl"), "sdxl")


def test_sdxl_plus_matches_diffusers(sdxl):
    sdxl.load("plus.safetensors", "plus.bin")
    ref, mine = ip_keys(sdxl.ref.unet), ip_keys(sdxl.mine.unet)
    assert list(mine) == list(ref) and all(torch.equal(ref[k], mine[k]) for k in ref)
    ref, mine = sdxl.both(0.6, ip_adapter_image=ip_image(), guidance_scale=5.0)
    assert max_diff(ref, mine) < TOL and max_diff(mine, sdxl.plain) > 5 * TOL
    style = {"up": {"block_0": [0.0, 1.0]}}
    ref, mine = sdxl.both(style, ip_adapter_image=ip_image())
    assert max_diff(ref, mine) < TOL
