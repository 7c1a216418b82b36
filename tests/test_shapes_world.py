"""The shapes world, its analyser, its tokenizer files and the training code's model factory."""
import numpy as np
import pytest
import torch

from impasto.shapes import bpe, train, world
from impasto.shapes.analyse import analyse, position_name, score


def test_world_is_deterministic_and_varied():
    a_scenes, a_images = world.ShapesWorld(7).batch(16)
    b_scenes, b_images = world.ShapesWorld(7).batch(16)
    assert a_scenes == b_scenes and np.array_equal(a_images, b_images)
    c_scenes, _ = world.ShapesWorld(8).batch(16)
    assert [s.caption for s in c_scenes] != [s.caption for s in a_scenes]
    assert a_images.shape == (16, 64, 64, 3) and a_images.dtype == np.uint8
    scenes = world.ShapesWorld(0).scenes(400)
    for attribute, values in (("shape", world.SHAPES), ("colour", world.COLOURS), ("size", world.SIZES),
                              ("position", world.POSITIONS), ("background", world.COLOURS)):
        assert {getattr(s, attribute) for s in scenes} == set(values)
    assert len({s.caption for s in scenes}) > 350
    assert all(s.colour != s.background for s in scenes)
    assert all(s.colour in s.caption.split() and set(world.SHAPE_WORDS[s.shape]) & set(s.caption.split()) for s in scenes)


def test_every_caption_word_is_in_the_vocabulary():
    words = set(world.vocabulary())
    for scene in world.ShapesWorld(1).scenes(500):
        assert set(scene.caption.split()) <= words, scene.caption


def test_analyser_reads_world_images_exactly():
    scenes = world.ShapesWorld(3, p_size=1.0, p_position=1.0, p_background=1.0).scenes(150)
    for scene in scenes:
        hits = score(scene, analyse(scene.render()))
        assert set(hits) == {"colour", "position", "shape", "size", "background"}
        assert all(hits.values()), (scene, analyse(scene.render()))


def test_analyser_edge_cases():
    plain = np.zeros((64, 64, 3), np.uint8) + np.array(world.COLOURS["blue"], np.uint8)
    result = analyse(plain)
    assert result.background == "blue" and result.colour is None and result.shape is None
    big = world.Scene("square", "red", "large", "top left", "white", "", frozenset(), 16, 16, 12).render()
    assert analyse(big.resize((128, 128))).position == "top left"  # other sizes are resized
    assert position_name(5, 60) == "bottom left" and position_name(32, 32) == "centre"
    with pytest.raises(ValueError, match="image"):
        analyse(np.zeros((64, 64), np.uint8))


def test_tokenizer_files_match_clip_tokenizers(tmp_path):
    transformers = pytest.importorskip("transformers")
    vocab = bpe.write_tokenizer(str(tmp_path), world.vocabulary())
    assert len(vocab) == 512 + len(bpe.learn_merges(world.vocabulary())) + 2
    captions = [s.caption for s in world.ShapesWorld(2).scenes(40)] + ["", "a red circle on a blue background"]
    ours = train.encode_captions(vocab, captions)
    for cls in (transformers.CLIPTokenizer, transformers.CLIPTokenizerFast):
        tok = cls.from_pretrained(str(tmp_path))
        ids = tok(captions, padding="max_length", max_length=train.MAX_LENGTH, truncation=True, return_tensors="pt").input_ids
        assert torch.equal(ids, ours)
    import impasto

    tok = impasto.CLIPTokenizer.from_pretrained(str(tmp_path))
    ids = tok(captions, padding="max_length", max_length=train.MAX_LENGTH, truncation=True, return_tensors="pt").input_ids
    assert torch.equal(ids, ours)
    # every world word is one token; unknown words fall back to bytes in a CLIP tokenizer, not in ours
    assert tok("purple triangle").input_ids == [vocab[bpe.BOS], vocab["purple</w>"], vocab["triangle</w>"], vocab[bpe.EOS]]
    with pytest.raises(ValueError, match="captions"):
        train.encode_captions(vocab, ["a mauve circle"])


def test_impasto_factory_builds_diffusers_shaped_models(tmp_path):
    pytest.importorskip("diffusers")
    from diffusers import AutoencoderKL, UNet2DConditionModel

    for kind, config, reference in (("vae", train.VAE_CONFIG, AutoencoderKL),
                                    ("unet", train.UNET_CONFIG, UNet2DConditionModel)):
        ours = train.impasto_factory(kind, config)
        theirs = reference.from_config(config)
        assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}
    vocab = bpe.write_tokenizer(str(tmp_path / "tok"), world.vocabulary())
    text = train.impasto_factory("text_encoder", train.text_config(vocab))
    assert text(train.encode_captions(vocab, ["a red circle"]))[0].shape == (1, train.MAX_LENGTH, 64)
