"""LoRA (both text encoders + UNet) and clip_l/clip_g textual inversion on SDXL give diffusers' images."""
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import tiny  # noqa: E402

import impasto  # noqa: E402

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("peft")

ARGS = dict(num_inference_steps=2, output_type="np", height=32, width=32)


def run(pipe, prompt="a photo of a cat"):
    pipe.set_progress_bar_config(disable=True)
    return pipe(prompt, **ARGS, generator=torch.Generator().manual_seed(0)).images


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tiny.make_sd_folder(tmp_path_factory.mktemp("xl"), "sdxl")


def test_sdxl_lora_matches_diffusers(folder, tmp_path):
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    src = diffusers.StableDiffusionXLPipeline.from_pretrained(str(folder))
    torch.manual_seed(3)
    cfgs = {"unet": LoraConfig(r=4, lora_alpha=8, init_lora_weights=False, target_modules=["to_q", "to_v", "conv1"]),
            "text_encoder": LoraConfig(r=2, lora_alpha=2, init_lora_weights=False, target_modules=["q_proj"]),
            "text_encoder_2": LoraConfig(r=2, lora_alpha=4, init_lora_weights=False, target_modules=["v_proj", "fc1"])}
    for name, cfg in cfgs.items():
        getattr(src, name).add_adapter(cfg)
    diffusers.StableDiffusionXLPipeline.save_lora_weights(
        str(tmp_path), unet_lora_layers=get_peft_model_state_dict(src.unet),
        text_encoder_lora_layers=get_peft_model_state_dict(src.text_encoder),
        text_encoder_2_lora_layers=get_peft_model_state_dict(src.text_encoder_2),
        unet_lora_adapter_metadata=cfgs["unet"].to_dict(),
        text_encoder_lora_adapter_metadata=cfgs["text_encoder"].to_dict(),
        text_encoder_2_lora_adapter_metadata=cfgs["text_encoder_2"].to_dict())
    theirs = diffusers.StableDiffusionXLPipeline.from_pretrained(str(folder))
    base = run(theirs)
    theirs.load_lora_weights(str(tmp_path))
    want = run(theirs)
    ours = impasto.StableDiffusionXLPipeline.from_pretrained(folder)
    ours.load_lora_weights(tmp_path)
    assert np.abs(want - base).max() > 1e-3
    assert set(ours.get_list_adapters()) == {"unet", "text_encoder", "text_encoder_2"}
    np.testing.assert_allclose(run(ours), want, atol=1e-3)


def test_sdxl_textual_inversion_loads_both_encoders(folder, tmp_path):
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(7)
    emb = {"clip_l": torch.randn(2, 32, generator=g), "clip_g": torch.randn(2, 32, generator=g)}
    file = tmp_path / "emb.safetensors"
    save_file(emb, str(file))
    prompt = "a <s0> on a table"
    theirs = diffusers.StableDiffusionXLPipeline.from_pretrained(str(folder))
    theirs.load_textual_inversion(emb["clip_l"], token=["<s0>", "<s0>_1"], text_encoder=theirs.text_encoder,
                                  tokenizer=theirs.tokenizer)
    theirs.load_textual_inversion(emb["clip_g"], token=["<s0>", "<s0>_1"], text_encoder=theirs.text_encoder_2,
                                  tokenizer=theirs.tokenizer_2)
    want = run(theirs, prompt)  # diffusers expands <s0> to "<s0> <s0>_1" itself
    ours = impasto.StableDiffusionXLPipeline.from_pretrained(folder)
    ours.load_textual_inversion(file, token="<s0>")
    np.testing.assert_allclose(run(ours, prompt), want, atol=1e-3)
    ours.unload_textual_inversion()
    assert len(ours.tokenizer) == len(ours.tokenizer_2) == 49408
