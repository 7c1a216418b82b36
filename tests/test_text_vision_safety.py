"""CLIPVisionModelWithProjection against transformers; StableDiffusionSafetyChecker against diffusers."""
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import impasto
from impasto.models.safety_checker import concept_flags
from text_utils import seeded, tiny_clip_config

transformers = pytest.importorskip("transformers")
safety = pytest.importorskip("diffusers.pipelines.stable_diffusion.safety_checker")


def test_vision_model_with_projection_parity_and_roundtrip(tmp_path):
    ref = seeded(transformers.CLIPVisionModelWithProjection(tiny_clip_config(3).vision_config), 1)
    ref.save_pretrained(tmp_path / "ref")
    mine = impasto.CLIPVisionModelWithProjection.from_pretrained(tmp_path / "ref")
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a = ref(pixels, output_hidden_states=True)
        b = mine(pixels, output_hidden_states=True)
    assert (a.image_embeds - b.image_embeds).abs().max() < 1e-5 and (a[0] - b[0]).abs().max() < 1e-5
    assert (a.last_hidden_state - b.last_hidden_state).abs().max() < 1e-5
    assert len(a.hidden_states) == len(b.hidden_states) == 4
    assert max((x - y).abs().max() for x, y in zip(a.hidden_states, b.hidden_states)) < 1e-5
    mine.save_pretrained(tmp_path / "mine")
    assert json.loads((tmp_path / "mine" / "config.json").read_text())["model_type"] == "clip_vision_model"
    with torch.no_grad():
        back = type(ref).from_pretrained(tmp_path / "mine")(pixels).image_embeds
    assert (back - a.image_embeds).abs().max() < 1e-6
    with pytest.raises(ValueError, match="pixel_values"):
        mine(torch.randn(1, 3, 16, 16))


def _checkers(tmp_path):
    ref = seeded(safety.StableDiffusionSafetyChecker(tiny_clip_config()), 2, scale=0.3)
    with torch.no_grad():  # identity layer norms keep the tiny model's image embeddings apart
        for name, p in ref.named_parameters():
            if "norm" in name:
                p.fill_(1.0 if name.endswith("weight") else 0.0)
    pixels = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        e = torch.nn.functional.normalize(ref.visual_projection(ref.vision_model(pixels)[1]))
    cos = (e @ e.t()).numpy()
    # image 0 matches concept 3; image 1 is 0.005 under concept 5 and is flagged only through special care 0
    assert cos[1:, 0].max() < 0.95 and cos[[0, 2], 1].max() < 0.95, cos
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        ref.concept_embeds.copy_(torch.randn(17, 16, generator=g))
        ref.special_care_embeds.copy_(torch.randn(3, 16, generator=g))
        ref.concept_embeds_weights.fill_(2.0)
        ref.special_care_embeds_weights.fill_(2.0)
        ref.concept_embeds[3], ref.concept_embeds_weights[3] = e[0], 0.97
        ref.concept_embeds[5], ref.concept_embeds_weights[5] = e[1], 1.005
        ref.special_care_embeds[0], ref.special_care_embeds_weights[0] = e[1], 0.97
    ref.save_pretrained(tmp_path / "ref")
    return ref, impasto.StableDiffusionSafetyChecker.from_pretrained(tmp_path / "ref"), pixels


def test_safety_checker_matches_diffusers(tmp_path):
    ref, mine, pixels = _checkers(tmp_path)
    keys = set(mine.state_dict())
    assert "vision_model.vision_model.embeddings.class_embedding" in keys and "concept_embeds_weights" in keys
    images = np.random.default_rng(0).random((3, 32, 32, 3)).astype(np.float32)
    out_ref, flags_ref = ref(pixels, images.copy())
    out_mine, flags_mine = mine(pixels, images.copy())
    assert flags_ref == flags_mine == [True, True, False]
    assert np.array_equal(out_ref, out_mine) and not out_mine[0].any() and np.array_equal(out_mine[2], images[2])
    tensors = torch.rand(3, 3, 32, 32)
    out, flags = mine(pixels, tensors.clone())
    assert flags == [True, True, False] and torch.equal(out[2], tensors[2]) and not out[1].any()
    # unflagged: thresholds out of reach
    with torch.no_grad():
        mine.concept_embeds_weights.fill_(2.0)
        ref.concept_embeds_weights.fill_(2.0)
    assert ref(pixels, images.copy())[1] == mine(pixels, images.copy())[1] == [False] * 3


def test_safety_checker_saves_diffusers_layout(tmp_path):
    ref, mine, pixels = _checkers(tmp_path)
    mine.save_pretrained(tmp_path / "mine")
    config = json.loads((tmp_path / "mine" / "config.json").read_text())
    assert config["model_type"] == "clip" and config["vision_config"]["hidden_size"] == 32
    assert config["projection_dim"] == 16
    assert "vision_model.vision_model.post_layernorm.weight" in load_file(tmp_path / "mine" / "model.safetensors")
    back = safety.StableDiffusionSafetyChecker.from_pretrained(tmp_path / "mine")
    images = np.zeros((3, 8, 8, 3))
    assert back(pixels, images.copy())[1] == mine(pixels, images.copy())[1] == [True, True, False]


def test_special_care_adjustment_rounding():
    special_thr = np.array([0.5, 0.5, 0.5], np.float32)
    concept_thr = np.full(17, 0.5, np.float32)
    concept = np.full((3, 17), 0.2, np.float32)
    concept[:, 4] = [0.4955, 0.4955, 0.4949]  # rounds to 0.0 (not flagged) without the 0.01 adjustment
    special = np.array([[0.2, 0.2, 0.2], [0.5006, 0.2, 0.2], [0.5004, 0.2, 0.2]], np.float32)  # 0.001 / 0.0
    assert concept_flags(special, concept, special_thr, concept_thr) == [False, True, False]


def test_towers_load_from_a_full_clip_model_folder(tmp_path, caplog):
    ref = seeded(transformers.CLIPModel(tiny_clip_config()), 4)
    ref.save_pretrained(tmp_path / "clip")
    text = impasto.CLIPTextModelWithProjection.from_pretrained(tmp_path / "clip")
    vision = impasto.CLIPVisionModelWithProjection.from_pretrained(tmp_path / "clip")
    assert text.config.projection_dim == vision.config.projection_dim == 16 and text.config.vocab_size == 1000
    ids = torch.randint(3, 1000, (2, 9), generator=torch.Generator().manual_seed(0))
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want_text = ref.text_projection(ref.text_model(ids).pooler_output)
        want_image = ref.visual_projection(ref.vision_model(pixels).pooler_output)
        assert (text(ids).text_embeds - want_text).abs().max() < 1e-5
        assert (vision(pixels).image_embeds - want_image).abs().max() < 1e-5
    assert not [r for r in caplog.records if r.levelname == "WARNING"]
