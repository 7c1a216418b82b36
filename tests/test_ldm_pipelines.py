"""LDMTextToImagePipeline and LDMSuperResolutionPipeline against diffusers on tiny seeded-random folders."""
import logging

import numpy as np
import PIL.Image
import pytest
import torch

from ldm_utils import make_superres_components, make_text2img_components

import impasto

PROMPTS = ["a painting of a squirrel eating a burger", "a cat on the river"]

pytestmark = pytest.mark.usefixtures("one_thread")


def gen(seed):
    return torch.Generator().manual_seed(seed)


def quiet(pipe):
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module", params=["vq", "kl"])
def t2i(request, tmp_path_factory):
    import diffusers

    folder = tmp_path_factory.mktemp(f"ldm-{request.param}")
    ref = quiet(diffusers.LDMTextToImagePipeline(**make_text2img_components(request.param)))
    ref.save_pretrained(str(folder))
    mine = quiet(impasto.DiffusionPipeline.from_pretrained(folder))
    return request.param, folder, ref, mine


@pytest.fixture(scope="module")
def sr(tmp_path_factory):
    import diffusers

    folder = tmp_path_factory.mktemp("ldm-sr")
    ref = quiet(diffusers.LDMSuperResolutionPipeline(**make_superres_components()))
    ref.save_pretrained(str(folder))
    return folder, ref, quiet(impasto.LDMSuperResolutionPipeline.from_pretrained(folder))


# ---- text to image -----------------------------------------------------------------------------------
def test_t2i_loads_impasto_components(t2i):
    kind, _, _, mine = t2i
    assert type(mine).__name__ == "LDMTextToImagePipeline"
    expected = {"vqvae": "VQModel" if kind == "vq" else "AutoencoderKL", "bert": "LDMBertModel",
                "tokenizer": "BertTokenizer", "unet": "UNet2DConditionModel", "scheduler": "DDIMScheduler"}
    for name, cls in expected.items():
        obj = getattr(mine, name)
        assert type(obj).__name__ == cls and type(obj).__module__.startswith("impasto."), name


@pytest.mark.parametrize("guidance", [1.0, 6.0])
def test_t2i_parity_with_diffusers(t2i, guidance):
    _, _, ref, mine = t2i
    kw = dict(num_inference_steps=3, guidance_scale=guidance, output_type="np")
    a = ref(PROMPTS, generator=gen(0), **kw).images
    b = mine(PROMPTS, generator=gen(0), **kw).images
    assert a.shape == b.shape == (2, 64, 64, 3)
    assert np.abs(a - b).max() < 1e-3
    assert a.std() > 0.01 and np.abs(b[0] - b[1]).max() > 1e-3  # not a constant image; prompts matter
    c = mine(PROMPTS, generator=gen(1), **kw).images
    assert np.abs(b - c).max() > 1e-3


def test_t2i_eta_reproducible_from_generator(t2i):
    _, _, _, mine = t2i
    kw = dict(num_inference_steps=3, eta=1.0, guidance_scale=3.0, output_type="np")
    torch.manual_seed(123)
    a = mine(PROMPTS[:1], generator=gen(0), **kw).images
    torch.manual_seed(456)  # the global random state must not matter
    b = mine(PROMPTS[:1], generator=gen(0), **kw).images
    c = mine(PROMPTS[:1], generator=gen(1), **kw).images
    d = mine(PROMPTS[:1], generator=gen(0), **dict(kw, eta=0.0)).images
    assert np.array_equal(a, b)
    assert np.abs(a - c).max() > 1e-3 and np.abs(a - d).max() > 1e-4


def test_t2i_outputs_and_latents(t2i):
    _, _, ref, mine = t2i
    latents = torch.randn(1, 4, 4, 6, generator=gen(3))
    kw = dict(height=32, width=48, num_inference_steps=2, latents=latents)
    a = ref(PROMPTS[0], output_type="np", **kw).images
    b = mine(PROMPTS[0], output_type="pt", **kw).images
    assert b.shape == (1, 3, 32, 48)
    assert np.abs(a - b.permute(0, 2, 3, 1).numpy()).max() < 1e-3
    pil = mine(PROMPTS[0], output_type="pil", return_dict=False, **kw)[0]
    assert isinstance(pil[0], PIL.Image.Image) and pil[0].size == (48, 32)


def test_t2i_bad_input(t2i):
    mine = t2i[3]
    with pytest.raises(ValueError, match="prompt"):
        mine(3)
    with pytest.raises(ValueError, match="height"):
        mine("a", height=60, num_inference_steps=1)
    with pytest.raises(ValueError, match="latents"):
        mine("a", latents=torch.zeros(1, 4, 3, 3), num_inference_steps=1)
    with pytest.raises(ValueError, match="output_type"):
        mine("a", output_type="jpeg", num_inference_steps=1)
    with pytest.raises(ValueError, match="generator"):
        mine(["a", "b"], generator=[gen(0)], num_inference_steps=1)


def test_t2i_save_round_trip_readable_by_diffusers(t2i, tmp_path):
    import diffusers

    _, _, ref, mine = t2i
    mine.save_pretrained(tmp_path)
    back = quiet(diffusers.LDMTextToImagePipeline.from_pretrained(str(tmp_path)))
    kw = dict(num_inference_steps=2, guidance_scale=2.0, output_type="np")
    assert np.abs(back(PROMPTS, generator=gen(0), **kw).images - ref(PROMPTS, generator=gen(0), **kw).images).max() < 1e-6


# ---- super-resolution --------------------------------------------------------------------------------
def test_sr_parity_tensor_and_pil(sr):
    _, ref, mine = sr
    assert type(mine.unet).__module__.startswith("impasto.") and type(mine.vqvae).__name__ == "VQModel"
    image = torch.rand(1, 3, 32, 32, generator=gen(5)) * 2 - 1
    a = ref(image, num_inference_steps=3, generator=gen(0), output_type="np").images
    b = mine(image, num_inference_steps=3, generator=gen(0), output_type="np").images
    assert a.shape == b.shape == (1, 128, 128, 3)
    assert np.abs(a - b).max() < 1e-3 and a.std() > 0.01
    pil = PIL.Image.fromarray((np.random.default_rng(0).random((40, 36, 3)) * 255).astype(np.uint8))
    a = ref(pil, num_inference_steps=2, generator=gen(0), output_type="np").images
    b = mine(pil, num_inference_steps=2, generator=gen(0), output_type="np").images
    assert a.shape == b.shape == (1, 128, 128, 3)  # resized down to 32x32 first, as diffusers
    assert np.abs(a - b).max() < 1e-3


def test_sr_eta_reproducible_and_batch_size(sr):
    mine = sr[2]
    pil = PIL.Image.fromarray((np.random.default_rng(1).random((32, 32, 3)) * 255).astype(np.uint8))
    kw = dict(num_inference_steps=3, eta=1.0, output_type="np")
    torch.manual_seed(1)
    a = mine(pil, generator=gen(0), **kw).images
    torch.manual_seed(2)
    b = mine(pil, generator=gen(0), **kw).images
    c = mine(pil, generator=gen(7), **kw).images
    assert np.array_equal(a, b) and np.abs(a - c).max() > 1e-3
    two = mine(pil, batch_size=2, generator=gen(0), **kw).images
    assert two.shape == (2, 128, 128, 3) and np.abs(two[0] - two[1]).max() > 1e-3


def test_sr_converts_alpha_and_grey(sr, caplog):
    mine = sr[2]
    rgb = PIL.Image.fromarray((np.random.default_rng(2).random((32, 32, 3)) * 255).astype(np.uint8))
    kw = dict(num_inference_steps=2, output_type="np")
    expected = mine(rgb, generator=gen(0), **kw).images
    with caplog.at_level(logging.INFO, logger="impasto"):
        rgba = mine(rgb.convert("RGBA"), generator=gen(0), **kw).images
    assert "RGBA" in caplog.text and np.array_equal(rgba, expected)
    grey = mine(rgb.convert("L"), generator=gen(0), **kw).images
    assert grey.shape == (1, 128, 128, 3)
    one = mine(torch.zeros(1, 1, 32, 32), generator=gen(0), **kw).images
    assert one.shape == (1, 128, 128, 3)


def test_sr_bad_input(sr):
    mine = sr[2]
    for bad in (np.zeros((32, 32, 3)), "image.png", None):
        with pytest.raises(ValueError, match="image"):
            mine(bad, num_inference_steps=1)
    with pytest.raises(ValueError, match="zero size"):
        mine(torch.zeros(1, 3, 0, 32), num_inference_steps=1)
    with pytest.raises(ValueError, match="zero size"):
        mine(PIL.Image.new("RGB", (0, 0)), num_inference_steps=1)
    with pytest.raises(ValueError, match="too small"):
        mine(PIL.Image.new("RGB", (20, 40)), num_inference_steps=1)
    with pytest.raises(ValueError, match="tile_size"):
        mine(torch.zeros(1, 3, 32, 32), num_inference_steps=1, tile_size=7)


def test_tiled_predict_blends_exactly():
    from impasto.pipelines.latent_diffusion_superresolution import tiled_predict

    x = torch.randn(2, 3, 37, 53, generator=gen(0))
    same = tiled_predict(lambda t: t * 2 + 1, x, tile=16, overlap=5)
    assert torch.allclose(same, x * 2 + 1, atol=1e-6)
    up = tiled_predict(lambda t: torch.nn.functional.interpolate(t, scale_factor=4, mode="nearest"), x, 16, 4)
    assert torch.allclose(up, torch.nn.functional.interpolate(x, scale_factor=4, mode="nearest"), atol=1e-6)


def test_sr_tiled(sr):
    _, _, mine = sr
    image = torch.rand(1, 3, 32, 48, generator=gen(4)) * 2 - 1
    kw = dict(num_inference_steps=2, generator=None, output_type="np")
    whole = mine(image, **dict(kw, generator=gen(0))).images
    covering = mine(image, tile_size=48, **dict(kw, generator=gen(0))).images
    assert np.array_equal(whole, covering)  # one tile covering the image is the untiled path
    tiled = mine(image, tile_size=16, tile_overlap=4, **dict(kw, generator=gen(0))).images
    assert tiled.shape == (1, 128, 192, 3) and np.isfinite(tiled).all()
