"""diffusers-format LoRA and textual inversion give the same images as diffusers (tiny seeded-random SD)."""
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import tiny  # noqa: E402

import impasto  # noqa: E402

diffusers = pytest.importorskip("diffusers")
peft = pytest.importorskip("peft")

ARGS = dict(num_inference_steps=2, output_type="np", height=32, width=32)


def run(pipe, prompt="a photo of a cat", **kw):
    pipe.set_progress_bar_config(disable=True)
    return pipe(prompt, **ARGS, **kw, generator=torch.Generator().manual_seed(0)).images


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    return tiny.make_sd_folder(tmp_path_factory.mktemp("sd"), "sd1")


def diffusers_pipe(folder):
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(str(folder), safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory, sd_folder):
    """A LoRA trained nowhere: random PEFT adapters on the UNet and text encoder, saved by diffusers."""
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    out = tmp_path_factory.mktemp("lora")
    pipe = diffusers_pipe(sd_folder)
    torch.manual_seed(3)
    unet_cfg = LoraConfig(r=4, lora_alpha=8, init_lora_weights=False,
                          target_modules=["to_q", "to_k", "to_v", "to_out.0", "proj_in", "conv1"])
    te_cfg = LoraConfig(r=4, lora_alpha=4, init_lora_weights=False, target_modules=["q_proj", "v_proj", "fc1"])
    pipe.unet.add_adapter(unet_cfg)
    pipe.text_encoder.add_adapter(te_cfg)
    with torch.no_grad():  # make the update large enough to change the picture
        for m in list(pipe.unet.modules()) + list(pipe.text_encoder.modules()):
            if hasattr(m, "lora_B"):
                for p in m.lora_B.values():
                    p.weight.mul_(8.0)
    diffusers.StableDiffusionPipeline.save_lora_weights(
        str(out), unet_lora_layers=get_peft_model_state_dict(pipe.unet),
        text_encoder_lora_layers=get_peft_model_state_dict(pipe.text_encoder),
        unet_lora_adapter_metadata=unet_cfg.to_dict(), text_encoder_lora_adapter_metadata=te_cfg.to_dict())
    return out


def test_lora_images_match_diffusers(sd_folder, lora_dir):
    theirs = diffusers_pipe(sd_folder)
    base = run(theirs)
    theirs.load_lora_weights(str(lora_dir))
    want = run(theirs)
    want_half = run(theirs, cross_attention_kwargs={"scale": 0.5})
    theirs.fuse_lora()  # fusing rounds differently from the unfused sum: compare like with like
    want_fused = run(theirs)
    ours = impasto.StableDiffusionPipeline.from_pretrained(sd_folder)
    ours.load_lora_weights(lora_dir)
    assert np.abs(want - base).max() > 1e-2  # the LoRA changes the picture
    np.testing.assert_allclose(run(ours), want, atol=1e-3)
    np.testing.assert_allclose(run(ours, cross_attention_kwargs={"scale": 0.5}), want_half, atol=1e-3)
    ours.fuse_lora()
    np.testing.assert_allclose(run(ours), want_fused, atol=1e-3)
    ours.unfuse_lora()
    np.testing.assert_array_equal(run(ours), run(ours))
    np.testing.assert_allclose(run(ours), want, atol=1e-3)  # unfused again: the exact original weights
    ours.unload_lora_weights()
    np.testing.assert_allclose(run(ours), base, atol=1e-3)


def test_lora_save_then_load_gives_identical_images(sd_folder, lora_dir, tmp_path):
    ours = impasto.StableDiffusionPipeline.from_pretrained(sd_folder)
    ours.load_lora_weights(lora_dir, adapter_name="x")
    want = run(ours)
    layers = ours.lora_layers("x")
    ours.save_lora_weights(tmp_path, unet_lora_layers=layers["unet"], text_encoder_lora_layers=layers["text_encoder"])
    fresh = impasto.StableDiffusionPipeline.from_pretrained(sd_folder)
    fresh.load_lora_weights(tmp_path)
    np.testing.assert_array_equal(run(fresh), want)
    theirs = diffusers_pipe(sd_folder)  # and diffusers reads what we wrote
    theirs.load_lora_weights(str(tmp_path))
    np.testing.assert_allclose(run(theirs), want, atol=1e-3)


def test_two_adapters_with_weights(sd_folder, lora_dir):
    theirs = diffusers_pipe(sd_folder)
    theirs.load_lora_weights(str(lora_dir), adapter_name="a")
    theirs.load_lora_weights(str(lora_dir), adapter_name="b")
    theirs.set_adapters(["a", "b"], [0.3, 0.4])
    want = run(theirs)
    ours = impasto.StableDiffusionPipeline.from_pretrained(sd_folder)
    ours.load_lora_weights(lora_dir, adapter_name="a")
    ours.load_lora_weights(lora_dir, adapter_name="b")
    ours.set_adapters(["a", "b"], [0.3, 0.4])
    assert ours.get_active_adapters() == ["a", "b"]
    np.testing.assert_allclose(run(ours), want, atol=1e-3)
    with pytest.raises(ValueError, match="adapter_names"):
        ours.set_adapters(["nope"])


def test_component_and_block_weights(sd_folder, lora_dir):
    """set_adapters with a dict per adapter: per component, and per UNet level / block / transformer layer."""
    theirs = diffusers_pipe(sd_folder)
    ours = impasto.StableDiffusionPipeline.from_pretrained(sd_folder)
    for pipe in (theirs, ours):
        pipe.load_lora_weights(str(lora_dir), adapter_name="a")
        pipe.load_lora_weights(str(lora_dir), adapter_name="b")
    full = run(ours)
    cases = [("a", {"unet": 0.3, "text_encoder": 1.5}), ("a", {"text_encoder": 0.5}),
             (["a", "b"], [{"unet": {"down": 0.5, "mid": 2.0, "up": 0.2}}, 0.4]),
             ("a", {"unet": {"up": {"block_0": [0.1, 1.2]}, "down": {"block_1": [0.3]}}})]
    for names, weights in cases:
        theirs.set_adapters(names, weights)
        ours.set_adapters(names, weights)
        got = run(ours)
        np.testing.assert_allclose(got, run(theirs), atol=1e-3, err_msg=str(weights))
        assert np.abs(got - full).max() > 1e-3
    for bad, match in [({"unet": {"up": {"block_1": 1.0}}}, "up has no transformer layers"),  # (diffusers: ignored)
                       ({"unet": {"down": {"block_1": [1.0, 2.0]}}}, "expected 1 weights for down.block_1"),
                       ({"down": 0.5}, "not components"), ({"text_encoder": {"down": 0.5}}, "unet only")]:
        with pytest.raises(ValueError, match=match):
            ours.set_adapters("a", bad)


def _embedding(dim, n=1, seed=5):
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed)) * 0.5


@pytest.mark.parametrize("fmt", ["diffusers", "a1111_pt", "a1111_safetensors", "multi_vector"])
def test_textual_inversion_matches_diffusers(sd_folder, tmp_path, fmt):
    from safetensors.torch import save_file

    dim = 32
    if fmt == "diffusers":
        file = tmp_path / "learned_embeds.bin"
        torch.save({"<cat-toy>": _embedding(dim)[0]}, file)
    elif fmt == "a1111_pt":
        file = tmp_path / "cat.pt"
        torch.save({"string_to_param": {"*": _embedding(dim, 2)}, "name": "<cat-toy>"}, file)
    elif fmt == "a1111_safetensors":
        file = tmp_path / "cat.safetensors"
        save_file({"emb_params": _embedding(dim, 2)}, str(file))
    else:
        file = tmp_path / "learned_embeds.safetensors"
        save_file({"<cat-toy>": _embedding(dim, 3)}, str(file))
    prompt = "a <cat-toy> on a table"
    theirs = diffusers_pipe(sd_folder)
    theirs.load_textual_inversion(str(file), token="<cat-toy>")
    want = run(theirs, prompt)
    ours = impasto.StableDiffusionPipeline.from_pretrained(sd_folder)
    ours.load_textual_inversion(file, token="<cat-toy>")
    np.testing.assert_allclose(run(ours, prompt), want, atol=1e-3)
    before = run(impasto.StableDiffusionPipeline.from_pretrained(sd_folder), prompt)
    ours.unload_textual_inversion()
    np.testing.assert_allclose(run(ours, prompt), before, atol=1e-5)
    assert len(ours.tokenizer) == 49408


def test_textual_inversion_bad_inputs(sd_folder, tmp_path):
    ours = impasto.StableDiffusionPipeline.from_pretrained(sd_folder)
    file = tmp_path / "wrong.bin"
    torch.save({"<x>": torch.zeros(768)}, file)
    with pytest.raises(ValueError, match="768"):
        ours.load_textual_inversion(file)
    with pytest.raises(ValueError, match="already in the tokenizer"):
        ours.load_textual_inversion({"a": torch.zeros(32)})
    assert len(ours.tokenizer) == 49408  # nothing was added by the failed calls
