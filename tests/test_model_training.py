"""The training-facing model API diffusers' fine-tuning scripts use: gradient checkpointing (diffusers' and
transformers' names) and num_parameters, with gradients checked against diffusers' models on the same weights."""
from __future__ import annotations

import copy

import pytest
import torch

from pipeline_utils import max_diff, shared_pair

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def pair():
    return shared_pair("sd1")


def _inputs(name, model):
    g = torch.Generator().manual_seed(0)
    if name == "unet":
        return (torch.randn(2, 4, 16, 16, generator=g), torch.tensor([10, 700])), dict(
            encoder_hidden_states=torch.randn(2, 77, model.config.cross_attention_dim, generator=g))
    if name == "vae":
        return (torch.randn(2, 3, 32, 32, generator=g),), {}
    return (torch.randint(0, 100, (2, 77), generator=g),), {}


def _grads(name, model):
    args, kwargs = _inputs(name, model)
    model.train()
    model.zero_grad(set_to_none=True)
    out = model(*args, **kwargs)[0]
    out.float().pow(2).mean().backward()
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name", ["unet", "vae", "text_encoder"])
def test_gradient_checkpointing_recomputes_and_keeps_gradients(pair, name):
    from impasto.models.layers import Checkpointed

    mine, theirs = copy.deepcopy(getattr(pair.mine, name)), copy.deepcopy(getattr(pair.ref, name))
    out0, plain = _grads(name, mine)
    calls = []
    blocks = [m for m in mine.modules() if isinstance(m, Checkpointed)]

    def counting(forward):
        return lambda *a, **k: calls.append(1) or forward(*a, **k)

    for m in blocks:  # (forward hooks do not fire when torch.utils.checkpoint recomputes)
        m.forward = counting(m.forward)
    if name == "text_encoder":  # transformers' names
        mine.gradient_checkpointing_enable()
        theirs.gradient_checkpointing_enable()
    else:
        mine.enable_gradient_checkpointing()
        theirs.enable_gradient_checkpointing()
    assert mine.is_gradient_checkpointing and blocks
    out1, checked = _grads(name, mine)
    assert len(calls) == 2 * len(blocks)  # each block ran again during backward
    assert torch.equal(out0, out1) and plain.keys() == checked.keys()
    assert max(max_diff(plain[k], checked[k]) for k in plain) < 1e-6
    assert len(_grads(name, theirs)[1]) == len(checked)  # diffusers' / transformers' own checkpointing ran
    calls.clear()
    mine.eval()
    with torch.no_grad():
        mine(*_inputs(name, mine)[0], **_inputs(name, mine)[1])
    assert len(calls) == len(blocks)  # no recomputation outside training
    mine.disable_gradient_checkpointing() if name != "text_encoder" else mine.gradient_checkpointing_disable()
    assert not mine.is_gradient_checkpointing


def test_gradients_match_diffusers_with_checkpointing(pair):
    mine, theirs = copy.deepcopy(pair.mine.unet), copy.deepcopy(pair.ref.unet)
    mine.enable_gradient_checkpointing()
    theirs.enable_gradient_checkpointing()
    a, ga = _grads("unet", mine)
    b, gb = _grads("unet", theirs)
    assert max_diff(a, b) < 1e-5 and ga.keys() == gb.keys()
    assert max(max_diff(ga[k], gb[k]) for k in ga) < 1e-5


def test_num_parameters_as_diffusers(pair):
    mine, theirs = copy.deepcopy(pair.mine.unet), copy.deepcopy(pair.ref.unet)
    for m in (mine, theirs):
        m.requires_grad_(False)
        m.conv_out.requires_grad_(True)
    assert mine.num_parameters() == theirs.num_parameters() > mine.num_parameters(only_trainable=True)
    assert mine.num_parameters(only_trainable=True) == theirs.num_parameters(only_trainable=True)
    te = pair.mine.text_encoder
    embeddings = sum(m.weight.numel() for m in te.modules() if isinstance(m, torch.nn.Embedding))
    assert te.num_parameters(exclude_embeddings=True) == te.num_parameters() - embeddings > 0
    with pytest.raises(ValueError, match="gradient_checkpointing_func"):
        mine.enable_gradient_checkpointing(lambda *a: None)
