"""The built-in shapes model: its folder, and images that the analyser reads back as the prompt says."""
import json
import os

import numpy as np
import pytest
import torch

from impasto.shapes.analyse import analyse

MODEL = os.path.join(os.path.dirname(__file__), "..", "impasto", "data", "shapes")
PROMPTS = [  # (prompt, colour, background)
    ("a red circle on a blue background", "red", "blue"),
    ("a large yellow square on a black background", "yellow", "black"),
    ("a green triangle in the centre on a white background", "green", "white"),
    ("a small white circle at the top left on a purple background", "white", "purple"),
    ("a big blue square on the right against an orange background", "blue", "orange"),
    ("an orange triangle at the bottom on a green background", "orange", "green"),
]


def _pipeline():
    try:
        from impasto import StableDiffusionPipeline
    except ImportError:  # the pipeline module is not in this checkout
        pytest.skip("impasto.StableDiffusionPipeline is not available")
    pipe = StableDiffusionPipeline.from_pretrained("impasto/shapes")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_folder_layout_and_size():
    with open(os.path.join(MODEL, "model_index.json")) as f:
        index = json.load(f)
    assert index["_class_name"] == "StableDiffusionPipeline"
    for name in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert os.path.isdir(os.path.join(MODEL, name)), name
    assert not os.path.exists(os.path.join(MODEL, "safety_checker"))
    total = sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(MODEL) for f in files)
    assert total <= 20 * 2**20
    weights = [f for _, _, files in os.walk(MODEL) for f in files if f.endswith((".bin", ".safetensors"))]
    assert sorted(weights) == ["diffusion_pytorch_model.safetensors"] * 2 + ["model.safetensors"]


def test_generates_what_the_prompt_says():
    pipe = _pipeline()
    prompts = [p for p, _, _ in PROMPTS]
    images = pipe(prompts, num_inference_steps=20, generator=torch.Generator().manual_seed(0)).images
    assert images[0].size == (64, 64)
    found = [analyse(image) for image in images]
    colours = sum(a.colour == c for a, (_, c, _) in zip(found, PROMPTS))
    backgrounds = sum(a.background == b for a, (_, _, b) in zip(found, PROMPTS))
    assert colours >= len(PROMPTS) - 1 and backgrounds >= len(PROMPTS) - 1, found


def test_same_images_as_diffusers():
    diffusers = pytest.importorskip("diffusers")
    pipe = _pipeline()
    theirs = diffusers.StableDiffusionPipeline.from_pretrained(MODEL, safety_checker=None)
    theirs.set_progress_bar_config(disable=True)
    kwargs = dict(num_inference_steps=8, output_type="np")
    ours = pipe(PROMPTS[0][0], generator=torch.Generator().manual_seed(1), **kwargs).images
    ref = theirs(PROMPTS[0][0], generator=torch.Generator().manual_seed(1), **kwargs).images
    assert np.abs(np.asarray(ours) - np.asarray(ref)).max() < 2e-3
