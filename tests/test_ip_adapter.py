"""IP-Adapter (basic format) against diffusers: a tiny random adapter in the real file layout (safetensors and .bin,
with an image encoder folder beside it) loaded into both libraries' pipelines; SD 1.x txt2img / img2img and SDXL
txt2img images agree, the UNet's state dict has diffusers' keys, unloading restores the image, bad input is refused."""
from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch

import impasto
import tiny
from pipeline_utils import max_diff

TOL = 1e-3  # on [0, 1] pixels
IMAGE_DIM = 24  # the tiny image encoder's projection_dim


pytestmark = pytest.mark.usefixtures("one_thread")


def image_encoder():
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    cfg = CLIPVisionConfig(hidden_size=32, intermediate_size=37, projection_dim=IMAGE_DIM, num_hidden_layers=2,
                           num_attention_heads=4, image_size=32, patch_size=8)
    return CLIPVisionModelWithProjection(cfg).eval()


def adapter_state(unet, seed: int = 1) -> dict:
    """Random basic IP-Adapter weights for this diffusers UNet, keyed as the released files (flat)."""
    g = torch.Generator().manual_seed(seed)
    cross = unet.config.cross_attention_dim
    state = {"image_proj.proj.weight": torch.randn(4 * cross, IMAGE_DIM, generator=g) * 0.3,
             "image_proj.proj.bias": torch.randn(4 * cross, generator=g) * 0.1,
             "image_proj.norm.weight": 1 + 0.1 * torch.randn(cross, generator=g),
             "image_proj.norm.bias": 0.1 * torch.randn(cross, generator=g)}
    names = [n for n in unet.attn_processors if n.endswith("attn2.processor")]
    for i, name in enumerate(names):
        shape = unet.get_submodule(name[: -len(".processor")]).to_k.weight.shape
        for kv in "kv":
            state[f"ip_adapter.{2 * i + 1}.to_{kv}_ip.weight"] = torch.randn(*shape, generator=g) * 0.3
    return state


def nested(state: dict) -> dict:
    out = {"image_proj": {}, "ip_adapter": {}}
    for key, value in state.items():
        head, _, rest = key.partition(".")
        out[head][rest] = value
    return out


def write_adapter(root, unet) -> dict:
    """root/models/{ip.safetensors, ip.bin, image_encoder/} as in h94/IP-Adapter; returns the flat state."""
    from safetensors.torch import save_file

    models = root / "models"
    image_encoder().save_pretrained(str(models / "image_encoder"))
    state = adapter_state(unet)
    save_file(state, str(models / "ip.safetensors"))
    torch.save(nested(state), models / "ip.bin")
    return state


def ip_image(seed: int = 0, size=(32, 32)) -> PIL.Image.Image:
    rng = np.random.RandomState(seed)
    return PIL.Image.fromarray((rng.rand(size[1], size[0], 3) * 255).astype(np.uint8))


def run(pipe, prompt="a cat", **kw):
    kw.setdefault("num_inference_steps", 2)
    kw.setdefault("output_type", "np")
    return pipe(prompt, generator=torch.Generator().manual_seed(0), **kw).images


class Setup:
    def __init__(self, root, variant: str):
        self.ref = tiny.make_sd_pipeline(variant)
        folder = tiny.save_folder(self.ref, root / variant)
        self.mine = impasto.DiffusionPipeline.from_pretrained(folder)
        self.mine.set_progress_bar_config(disable=True)
        self.size = dict(height=32, width=32)
        self.plain = run(self.mine, **self.size)  # before any adapter
        self.adapter = root / f"{variant}-ip"
        self.state = write_adapter(self.adapter, self.ref.unet)
        for pipe in (self.ref, self.mine):
            pipe.load_ip_adapter(str(self.adapter), subfolder="models", weight_name="ip.safetensors")

    def both(self, scale: float = 0.5, **kw):
        for pipe in (self.ref, self.mine):
            pipe.set_ip_adapter_scale(scale)
        kw = {**self.size, **kw}
        return run(self.ref, **kw), run(self.mine, **kw)


@pytest.fixture(scope="module")
def sd1(tmp_path_factory):
    return Setup(tmp_path_factory.mktemp("ip"), "sd1")


@pytest.mark.parametrize("guidance", [7.5, 1.0])
@pytest.mark.parametrize("scale", [0.5, 0.0])
def test_txt2img_matches_diffusers(sd1, guidance, scale):
    ref, mine = sd1.both(scale, ip_adapter_image=ip_image(), guidance_scale=guidance)
    assert max_diff(ref, mine) < TOL
    if scale == 0 and guidance == 7.5:
        assert max_diff(mine, sd1.plain) < 1e-5  # scale 0 is the image without an adapter
    if scale == 0.5:
        black = PIL.Image.new("RGB", (32, 32))
        assert max_diff(mine, run(sd1.mine, guidance_scale=guidance, ip_adapter_image=black,
                                  **sd1.size)) > 5 * TOL  # the image prompt acts


def test_num_images_per_prompt(sd1):
    ref, mine = sd1.both(0.5, ip_adapter_image=ip_image(2, size=(40, 48)), num_images_per_prompt=2)
    assert mine.shape[0] == 2 and max_diff(ref, mine) < TOL


def test_image_embeds_given(sd1):
    ref_embeds = sd1.ref.prepare_ip_adapter_image_embeds(ip_image(), None, torch.device("cpu"), 1, True)
    mine_embeds = sd1.mine.prepare_ip_adapter_image_embeds(ip_image(), None, torch.device("cpu"), 1, True)
    assert len(mine_embeds) == 1 and mine_embeds[0].shape == (2, 1, IMAGE_DIM)
    assert max_diff(ref_embeds[0], mine_embeds[0]) < 1e-5
    ref, mine = sd1.both(0.5, ip_adapter_image_embeds=ref_embeds, num_images_per_prompt=2)
    assert max_diff(ref, mine) < TOL
    by_image = run(sd1.mine, ip_adapter_image=ip_image(), num_images_per_prompt=2, **sd1.size)
    assert max_diff(mine, by_image) < 1e-5


def test_img2img(sd1):
    import diffusers

    ref = diffusers.StableDiffusionImg2ImgPipeline(**sd1.ref.components)
    mine = impasto.StableDiffusionImg2ImgPipeline(**sd1.mine.components)
    for pipe in (ref, mine):
        pipe.set_progress_bar_config(disable=True)
        pipe.set_ip_adapter_scale(0.7)
    kw = dict(image=ip_image(5), strength=0.9, num_inference_steps=3, ip_adapter_image=ip_image())
    assert max_diff(run(ref, **kw), run(mine, **kw)) < TOL


def test_state_dict_keys_and_bin_file(sd1, monkeypatch):
    import huggingface_hub

    def offline(*a, **k):
        raise AssertionError("a local folder must not reach the hub")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    ip_keys = lambda sd: {k: v for k, v in sd.items() if "_ip." in k or k.startswith("encoder_hid_proj")}  # noqa
    ref = ip_keys(sd1.ref.unet.state_dict())
    assert "encoder_hid_proj.image_projection_layers.0.image_embeds.weight" in ref
    sd1.mine.load_ip_adapter(str(sd1.adapter), subfolder="models", weight_name="ip.bin")
    mine = ip_keys(sd1.mine.unet.state_dict())
    assert list(mine) == list(ref)
    assert all(torch.equal(ref[k], mine[k]) for k in ref)
    assert sd1.mine.unet.config.encoder_hid_dim_type == "ip_image_proj"


def test_unload_restores_the_image(sd1):
    sd1.mine.set_ip_adapter_scale(0.5)
    assert max_diff(run(sd1.mine, ip_adapter_image=ip_image(), **sd1.size), sd1.plain) > 1e-2
    sd1.mine.unload_ip_adapter()
    try:
        assert sd1.mine.image_encoder is None and sd1.mine.unet.encoder_hid_proj is None
        assert not any("_ip." in k or "encoder_hid" in k for k in sd1.mine.unet.state_dict())
        assert np.array_equal(run(sd1.mine, **sd1.size), sd1.plain)
        with pytest.raises(ValueError, match="ip_adapter_image"):  # no adapter loaded
            run(sd1.mine, ip_adapter_image=ip_image(), **sd1.size)
    finally:
        sd1.mine.load_ip_adapter(str(sd1.adapter), subfolder="models", weight_name="ip.safetensors")


def test_bad_input(sd1, tmp_path):
    from safetensors.torch import save_file

    mine = sd1.mine
    with pytest.raises(ValueError, match="ip_adapter_image_embeds"):
        run(mine, ip_adapter_image_embeds=[torch.zeros(2, 1, IMAGE_DIM + 1)], **sd1.size)
    with pytest.raises(ValueError, match="ip_adapter_image_embeds"):
        run(mine, ip_adapter_image_embeds=torch.zeros(2, 1, IMAGE_DIM), **sd1.size)
    with pytest.raises(ValueError, match="ip_adapter_image"):  # an adapter is loaded: an image prompt is needed
        run(mine, **sd1.size)
    with pytest.raises(ValueError, match="ip_adapter_image, ip_adapter_image_embeds"):
        run(mine, ip_adapter_image=ip_image(), ip_adapter_image_embeds=[torch.zeros(2, 1, IMAGE_DIM)], **sd1.size)
    with pytest.raises(ValueError, match="scale: up has no transformer layers"):  # up block_1 is an UpBlock2D
        mine.set_ip_adapter_scale({"up": {"block_1": [0.0, 1.0]}})
    with pytest.raises(ValueError, match="weight_name, subfolder"):
        mine.load_ip_adapter(str(sd1.adapter), subfolder=["models", "models"], weight_name=["ip.safetensors"] * 3)
    only_layers = {k: v for k, v in sd1.state.items() if k.startswith("ip_adapter.")}
    save_file(only_layers, str(tmp_path / "no_proj.safetensors"))
    with pytest.raises(ValueError, match="pretrained_model_name_or_path_or_dict.*image_proj"):
        mine.load_ip_adapter(str(tmp_path), subfolder=None, weight_name="no_proj.safetensors")
    plus = {**only_layers, "image_proj.latents": torch.zeros(1, 16, 32), "image_proj.proj_in.weight": torch.zeros(4, 4)}
    save_file(plus, str(tmp_path / "plus.safetensors"))
    with pytest.raises(ValueError, match="plus.safetensors: image_proj.proj_out.weight is missing"):
        mine.load_ip_adapter(str(tmp_path), subfolder=None, weight_name="plus.safetensors")
    wrong = dict(sd1.state)
    wrong["ip_adapter.1.to_k_ip.weight"] = torch.zeros(3, 3)
    with pytest.raises(ValueError, match="ip_adapter.1.to_k_ip.weight"):
        mine.load_ip_adapter(wrong, subfolder=None, weight_name=None, image_encoder_folder=None)
    # the refused loads left the loaded adapter in place
    assert max_diff(*sd1.both(0.5, ip_adapter_image=ip_image())) < TOL


def test_inpaint(sd1):
    import diffusers
    from sdxl_utils import mask_tensor, to_pil

    ref = diffusers.StableDiffusionInpaintPipeline(**sd1.ref.components)
    mine = impasto.StableDiffusionInpaintPipeline(**sd1.mine.components)
    for pipe in (ref, mine):
        pipe.set_progress_bar_config(disable=True)
        pipe.set_ip_adapter_scale(0.7)
    kw = dict(image=ip_image(5), mask_image=to_pil(mask_tensor()), strength=1.0, ip_adapter_image=ip_image(),
              **sd1.size)
    assert max_diff(run(ref, **kw), run(mine, **kw)) < TOL


@pytest.fixture(scope="module")
def sdxl(tmp_path_factory):
    return Setup(tmp_path_factory.mktemp("ip-xl"), "sdxl")


@pytest.mark.parametrize("scale, guidance", [(0.5, 5.0), (0.5, 1.0), (0.0, 5.0)])
def test_sdxl_txt2img_matches_diffusers(sdxl, scale, guidance):
    ref, mine = sdxl.both(scale, ip_adapter_image=ip_image(), guidance_scale=guidance)
    assert max_diff(ref, mine) < TOL
    if scale == 0:
        assert max_diff(mine, sdxl.plain) < 1e-5


@pytest.mark.parametrize("name", ["StableDiffusionXLImg2ImgPipeline", "StableDiffusionXLInpaintPipeline"])
def test_sdxl_img2img_and_inpaint(sdxl, name):
    import diffusers
    from sdxl_utils import mask_tensor, to_pil

    ref = getattr(diffusers, name)(**sdxl.ref.components)
    mine = getattr(impasto, name)(**sdxl.mine.components)
    for pipe in (ref, mine):
        pipe.set_progress_bar_config(disable=True)
        pipe.set_ip_adapter_scale(0.7)
    kw = dict(image=ip_image(5), strength=0.9, ip_adapter_image=ip_image())
    if "Inpaint" in name:
        kw.update(mask_image=to_pil(mask_tensor()), **sdxl.size)
    assert max_diff(run(ref, **kw), run(mine, **kw)) < TOL


def test_sdxl_unload(sdxl):
    sdxl.mine.unload_ip_adapter()
    try:
        assert sdxl.mine.feature_extractor is None  # as diffusers: no safety checker to keep it for
        assert np.array_equal(run(sdxl.mine, **sdxl.size), sdxl.plain)
    finally:
        sdxl.mine.load_ip_adapter(str(sdxl.adapter), subfolder="models", weight_name="ip.safetensors")


def test_several_prompts_and_slicing(sd1):
    """One image prompt serves a batch of prompts (each image as if run alone, as in diffusers), and, beyond
    diffusers, attention slicing keeps the adapter."""
    sd1.mine.set_ip_adapter_scale(0.5)
    sd1.ref.set_ip_adapter_scale(0.5)
    latents = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(3))
    kw = dict(ip_adapter_image=ip_image(), **sd1.size)
    batch = run(sd1.mine, ["a cat", "a dog"], latents=latents, **kw)
    assert max_diff(batch, run(sd1.ref, ["a cat", "a dog"], latents=latents, **kw)) < TOL
    alone = [run(sd1.mine, p, latents=latents[i:i + 1], **kw)[0] for i, p in enumerate(["a cat", "a dog"])]
    assert max_diff(batch, np.stack(alone)) < 1e-4
    sd1.mine.enable_attention_slicing(1)
    try:
        assert max_diff(run(sd1.mine, "a dog", latents=latents[1:], **kw)[0], alone[1]) < 1e-4
    finally:
        sd1.mine.disable_attention_slicing()


def test_weight_file_path_and_guidance_cut_off(sd1):
    """The weight file itself may be given as the path; a callback that turns guidance off mid-run (diffusers'
    CFG cut-off pattern) leaves the positive image prompt."""
    sd1.mine.load_ip_adapter(str(sd1.adapter / "models" / "ip.bin"), subfolder=None, weight_name=None)
    sd1.mine.set_ip_adapter_scale(0.5)

    def cut_off(pipe, i, t, kw):
        if i != 0:
            return {}
        pipe._guidance_scale = 0.0
        return {"prompt_embeds": kw["prompt_embeds"].chunk(2)[1]}

    out = run(sd1.mine, ip_adapter_image=ip_image(), num_inference_steps=3, callback_on_step_end=cut_off,
              callback_on_step_end_tensor_inputs=["latents", "prompt_embeds"], **sd1.size)
    assert np.isfinite(out).all() and out.shape == (1, 32, 32, 3)
