"""CLIPTextModel / CLIPTextModelWithProjection against transformers on tiny seeded-random models."""
import json
import logging

import pytest
import torch
from safetensors.torch import load_file, save_file

import impasto
from text_utils import seeded, tiny_text_config, token_batch

transformers = pytest.importorskip("transformers")

CASES = [  # (layers, hidden_act, eos_token_id)
    (2, "quick_gelu", 49407),
    (3, "gelu", 49407),
    (5, "quick_gelu", 2),
    (2, "gelu", 2),
]


def _pair(tmp_path, layers, act, eos, projection, seed=0):
    cls = transformers.CLIPTextModelWithProjection if projection else transformers.CLIPTextModel
    ref = seeded(cls(tiny_text_config(layers, act, eos)), seed)
    ref.save_pretrained(tmp_path / "ref")
    mine_cls = impasto.CLIPTextModelWithProjection if projection else impasto.CLIPTextModel
    return ref, mine_cls


def _compare(ref, mine, ids, mask=None):
    with torch.no_grad():
        a = ref(ids, attention_mask=mask, output_hidden_states=True)
        b = mine(ids, attention_mask=mask, output_hidden_states=True)
    diffs = {"last": (a.last_hidden_state - b.last_hidden_state).abs().max().item()}
    if hasattr(a, "text_embeds"):
        diffs["embeds"] = (a.text_embeds - b.text_embeds).abs().max().item()
        assert (a[0] - b[0]).abs().max().item() < 1e-5  # out[0] is text_embeds for both
    else:
        diffs["pooled"] = (a.pooler_output - b.pooler_output).abs().max().item()
        assert (a[1] - b[1]).abs().max().item() < 1e-5
    assert len(a.hidden_states) == len(b.hidden_states) == ref.config.num_hidden_layers + 1
    diffs["hidden"] = max((x - y).abs().max().item() for x, y in zip(a.hidden_states, b.hidden_states))
    assert all(d < 1e-5 for d in diffs.values()), diffs
    return diffs


@pytest.mark.parametrize("projection", [False, True])
@pytest.mark.parametrize("layers,act,eos", CASES)
def test_parity_with_transformers(tmp_path, layers, act, eos, projection):
    ref, mine_cls = _pair(tmp_path, layers, act, eos, projection)
    mine = mine_cls.from_pretrained(tmp_path / "ref")
    ids, mask = token_batch(3, 77, seed=layers)
    _compare(ref, mine, ids)
    _compare(ref, mine, ids, mask)
    _compare(ref, mine, ids[:, :20])  # shorter than 77 positions
    assert mine.config.hidden_size == 32 and mine.config.projection_dim == 32
    assert mine.config.eos_token_id == eos


@pytest.mark.parametrize("projection", [False, True])
def test_weights_without_prefix_and_as_bin(tmp_path, projection):
    ref, mine_cls = _pair(tmp_path, 2, "quick_gelu", 49407, projection, seed=3)
    state = load_file(tmp_path / "ref" / "model.safetensors")
    bare = {k.removeprefix("text_model."): v for k, v in state.items()}
    prefixed = {k if k.startswith(("text_model.", "text_projection")) else "text_model." + k: v
                for k, v in state.items()}
    prefixed["text_model.embeddings.position_ids"] = torch.arange(77)[None]  # old checkpoints carry it
    for name, weights in (("bare", bare), ("prefixed_bin", prefixed)):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "config.json").write_text((tmp_path / "ref" / "config.json").read_text())
        if name == "bare":
            save_file(weights, folder / "model.safetensors")
        else:
            torch.save(weights, folder / "pytorch_model.bin")
        _compare(ref, mine_cls.from_pretrained(folder), *token_batch(2, 77, seed=1))


def test_sharded_and_nested_clip_config(tmp_path):
    ref = seeded(transformers.CLIPTextModelWithProjection(tiny_text_config(3)), 5)
    ref.save_pretrained(tmp_path / "ref")
    mine = impasto.CLIPTextModelWithProjection.from_pretrained(tmp_path / "ref")
    mine.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    config = json.loads((tmp_path / "ref" / "config.json").read_text())
    nested = {"architectures": ["CLIPModel"], "model_type": "clip", "projection_dim": 32,
              "text_config": {k: v for k, v in config.items() if k != "projection_dim"}, "vision_config": {}}
    (tmp_path / "sharded" / "config.json").write_text(json.dumps(nested))
    again = impasto.CLIPTextModelWithProjection.from_pretrained(tmp_path / "sharded")
    assert again.config.num_hidden_layers == 3 and again.config.projection_dim == 32
    _compare(ref, again, *token_batch(2, 77, seed=2))


@pytest.mark.parametrize("projection", [False, True])
def test_saved_folder_loads_in_transformers(tmp_path, projection):
    ref, mine_cls = _pair(tmp_path, 2, "gelu", 49407, projection, seed=7)
    mine = mine_cls.from_pretrained(tmp_path / "ref")
    mine.save_pretrained(tmp_path / "mine")
    config = json.loads((tmp_path / "mine" / "config.json").read_text())
    assert config["architectures"] == [mine_cls.__name__] and config["model_type"] == "clip_text_model"
    assert "_class_name" not in config
    keys = set(load_file(tmp_path / "mine" / "model.safetensors"))
    assert all(k.startswith("text_model.") or k == "text_projection.weight" for k in keys)
    assert ("text_projection.weight" in keys) == projection
    back = type(ref).from_pretrained(tmp_path / "mine")
    _compare(back, mine, *token_batch(2, 77, seed=4))


def test_unknown_config_keys_are_logged_once(tmp_path, caplog):
    ref, _ = _pair(tmp_path, 2, "quick_gelu", 49407, False)
    config = json.loads((tmp_path / "ref" / "config.json").read_text())
    config.update(some_new_setting=1, torch_dtype="float16")
    (tmp_path / "ref" / "config.json").write_text(json.dumps(config))
    with caplog.at_level(logging.INFO, logger="impasto"):
        impasto.CLIPTextModel.from_pretrained(tmp_path / "ref")
    lines = [r.getMessage() for r in caplog.records if "not used" in r.getMessage()]
    assert len(lines) == 1 and "some_new_setting" in lines[0] and "torch_dtype" not in lines[0]


def test_resize_token_embeddings_and_clip_skip_parts(tmp_path):
    ref, _ = _pair(tmp_path, 2, "quick_gelu", 49407, False)
    mine = impasto.CLIPTextModel.from_pretrained(tmp_path / "ref")
    old = mine.get_input_embeddings().weight.detach().clone()
    new = mine.resize_token_embeddings(49410)
    assert new is mine.text_model.embeddings.token_embedding and new.weight.shape == (49410, 32)
    assert torch.equal(new.weight[:49408], old)
    assert torch.allclose(new.weight[49409], old.mean(0), atol=1e-6)
    assert mine.config.vocab_size == 49410
    ids, _ = token_batch(1, 77)
    with torch.no_grad():
        out = mine(ids, output_hidden_states=True)
        # clip_skip: a pipeline applies final_layer_norm to an earlier hidden state; the last one gives out[0]
        assert torch.allclose(mine.text_model.final_layer_norm(out.hidden_states[-1]), out[0], atol=1e-6)
        assert isinstance(mine(ids, return_dict=False), tuple)


def test_bad_inputs_raise_value_errors(tmp_path):
    ref, _ = _pair(tmp_path, 2, "quick_gelu", 49407, False)
    mine = impasto.CLIPTextModel.from_pretrained(tmp_path / "ref")
    with pytest.raises(ValueError, match="input_ids"):
        mine(torch.zeros(1, 78, dtype=torch.long))
    with pytest.raises(ValueError, match="input_ids"):
        mine(torch.zeros(1, 5))
    with pytest.raises(ValueError, match="attention_mask"):
        mine(torch.zeros(1, 5, dtype=torch.long), attention_mask=torch.ones(1, 6))
    with pytest.raises(ValueError, match="hidden_act"):
        impasto.CLIPTextModel(hidden_size=32, intermediate_size=8, num_hidden_layers=1, num_attention_heads=4,
                              hidden_act="swish2")


def test_diffusers_encode_prompt_takes_impasto_components(tmp_path):
    """diffusers' own StableDiffusionPipeline.encode_prompt, run on impasto's tokenizer + text encoder."""
    from diffusers import StableDiffusionPipeline

    from text_utils import write_vendored_tokenizer

    ref, _ = _pair(tmp_path, 3, "quick_gelu", 49407, False, seed=9)
    folder = write_vendored_tokenizer(tmp_path / "tok")
    ref_tok = transformers.CLIPTokenizer.from_pretrained(folder)

    def encode(text_encoder, tokenizer, clip_skip=None):
        pipe = object.__new__(StableDiffusionPipeline)  # only encode_prompt's attributes are needed
        pipe.__dict__.update(text_encoder=text_encoder, tokenizer=tokenizer)
        with torch.no_grad():
            return StableDiffusionPipeline.encode_prompt(pipe, ["a photo of a cat " * 20, "dog"], torch.device("cpu"),
                                                         1, True, ["", "ugly"], clip_skip=clip_skip)

    mine = impasto.CLIPTextModel.from_pretrained(tmp_path / "ref")
    mine_tok = impasto.CLIPTokenizer.from_pretrained(folder)
    for want, got in zip(encode(ref, ref_tok), encode(mine, mine_tok)):
        assert want.shape == got.shape == (2, 77, 32) and (want - got).abs().max() < 1e-5
    ids = ref_tok(["a photo of a cat " * 20, "dog"], padding="max_length", truncation=True, return_tensors="pt")
    with torch.no_grad():  # clip_skip=1: the second-to-last layer through final_layer_norm
        want = ref.final_layer_norm(ref(ids.input_ids, output_hidden_states=True).hidden_states[-2])
    assert (encode(mine, mine_tok, clip_skip=1)[0] - want).abs().max() < 1e-5
