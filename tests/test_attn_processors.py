"""Attention processors (diffusers' `attn_processors` / `set_attn_processor`): the same keys as diffusers, a
user-written processor gives the same result in both libraries (cross_attention_kwargs reaching it), the
built-in processors select a backend without changing results, and bad input is refused."""
from __future__ import annotations

import logging

import pytest
import torch

import impasto
from impasto.models.attention_processor import (AttnProcessor, AttnProcessor2_0, SlicedAttnProcessor,
                                                XFormersAttnProcessor)
from unet_utils import CONFIGS, inputs, make_reference, max_diff
from vae_utils import KL_CONFIGS, make_diffusers


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def unets(tmp_path_factory):
    cache = {}

    def get(name):
        if name not in cache:
            folder = tmp_path_factory.mktemp(name)
            ref = make_reference("UNet2DConditionModel", CONFIGS[name], folder)
            cache[name] = (ref, impasto.UNet2DConditionModel.from_pretrained(folder))
        return cache[name]

    return get


def diffusers_sdpa():
    import diffusers

    return diffusers.models.attention_processor.AttnProcessor2_0()


class Reweight:
    """Prompt-to-prompt style: multiply the attention one text token gets by `weight`, and record each call."""

    def __init__(self):
        self.calls = []

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, token=None,
                 weight=1.0):
        batch, length, _ = (hidden_states if encoder_hidden_states is None else encoder_hidden_states).shape
        attention_mask = attn.prepare_attention_mask(attention_mask, length, batch)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        q = attn.head_to_batch_dim(attn.to_q(hidden_states))
        k, v = attn.head_to_batch_dim(attn.to_k(context)), attn.head_to_batch_dim(attn.to_v(context))
        probs = attn.get_attention_scores(q, k, attention_mask)
        cross = encoder_hidden_states is not None
        if cross and token is not None:
            probs = probs.clone()
            probs[..., token] *= weight
        self.calls.append((cross, tuple(probs.shape)))
        out = attn.batch_to_head_dim(torch.bmm(probs, v))
        return attn.to_out[1](attn.to_out[0](out))


@pytest.mark.parametrize("name", ["sd1", "sdxl"])
def test_keys_match_diffusers(unets, name):
    ref, mine = unets(name)
    assert list(mine.attn_processors) == list(ref.attn_processors)
    assert all(type(p) is AttnProcessor2_0 for p in mine.attn_processors.values())


def test_vae_keys_and_classic_processor_match_diffusers():
    import diffusers

    ref = make_diffusers("AutoencoderKL", KL_CONFIGS["wide_latent"])
    mine = impasto.AutoencoderKL(**KL_CONFIGS["wide_latent"]).eval()
    mine.load_state_dict(ref.state_dict())
    assert list(mine.attn_processors) == list(ref.attn_processors)
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = ref(x, sample_posterior=False).sample
        mine.set_attn_processor(AttnProcessor())  # group norm, 4-d input, residual, upcast softmax
        assert max_diff(mine(x, sample_posterior=False).sample, expected) <= 1e-4
        mine.set_attn_processor(diffusers.models.attention_processor.AttnProcessor2_0())
        assert max_diff(mine(x, sample_posterior=False).sample, expected) <= 1e-4
        mine.set_default_attn_processor()
        assert all(layer.processor is None for layer in mine._attention_layers())


@pytest.mark.parametrize("name", ["sd1", "sd2"])
def test_custom_processor_equals_diffusers(unets, name):
    """The same user-written processor, with its argument given through cross_attention_kwargs, on both
    libraries' UNets (sd1 with a text mask; sd2 upcasts attention)."""
    ref, mine = unets(name)
    kw = inputs(name)
    if name == "sd1":
        kw["encoder_attention_mask"] = torch.tensor([[1, 1, 1, 1, 0, 1, 1], [1, 1, 1, 1, 1, 1, 0]])
    with torch.no_grad():
        plain = mine(**kw).sample
        ours, theirs = Reweight(), Reweight()
        mine.set_attn_processor(ours)
        ref.set_attn_processor(theirs)
        try:
            xattn = {"token": 2, "weight": 4.0}
            got = mine(**kw, cross_attention_kwargs=xattn).sample
            expected = ref(**kw, cross_attention_kwargs=xattn).sample
        finally:
            mine.set_default_attn_processor()
            ref.set_attn_processor(diffusers_sdpa())
    assert ours.calls == theirs.calls and len(ours.calls) == len(mine._attention_layers())
    assert max_diff(got, expected) <= 1e-4
    assert max_diff(got, plain) > 1e-3  # the processor and its kwargs did act
    assert all(layer.call_kwargs is None for layer in mine._attention_layers())


def test_processors_that_only_compute_equal_the_default(unets):
    import diffusers

    _, mine = unets("sd2")
    kw = inputs("sd2")
    with torch.no_grad():
        plain = mine(**kw).sample
        for proc in (AttnProcessor(), diffusers.models.attention_processor.AttnProcessor(),
                     diffusers.models.attention_processor.AttnProcessor2_0(), SlicedAttnProcessor(1),
                     XFormersAttnProcessor()):
            mine.set_attn_processor(proc)
            assert max_diff(mine(**kw).sample, plain) <= 1e-5, proc
        mine.set_default_attn_processor()


def test_builtin_processors_select_backends(unets, caplog):
    _, mine = unets("sd1")
    layers = mine._attention_layers()
    mine.set_attn_processor(SlicedAttnProcessor(2))
    assert all(l.processor is None and l.attn_backend.kind == "sliced" for l in layers)
    assert {repr(p) for p in mine.attn_processors.values()} == {"SlicedAttnProcessor(slice_size=2)"}
    mine.set_attn_processor(XFormersAttnProcessor())  # no xformers on CPU: SDPA, said in the log
    assert all(l.attn_backend.kind == "sdpa" for l in layers)
    mine.set_attention_slice("max")
    assert all(type(p) is SlicedAttnProcessor for p in mine.attn_processors.values())
    # a dict of one processor per key, e.g. what attn_processors returned, round-trips
    procs = mine.attn_processors
    custom = Reweight()
    first = next(iter(procs))
    procs[first] = custom
    mine.set_attn_processor(procs)
    assert mine.attn_processors[first] is custom and layers[0].processor is custom
    with caplog.at_level(logging.WARNING, logger="impasto"):
        mine.enable_xformers_memory_efficient_attention()
    assert "custom attention processors are replaced" in caplog.text
    assert all(l.processor is None for l in layers)
    mine.set_default_attn_processor()
    assert all(l.attn_backend.kind == "sdpa" and not l.fused for l in layers)


def test_bad_processors_are_refused(unets, caplog):
    _, mine = unets("sd1")
    keys = list(mine.attn_processors)
    with pytest.raises(ValueError, match="processor: a dict of 1 processors"):
        mine.set_attn_processor({keys[0]: AttnProcessor()})
    with pytest.raises(ValueError, match="processor: no processor for"):
        mine.set_attn_processor({f"x{i}": AttnProcessor() for i in range(len(keys))})
    with pytest.raises(ValueError, match="processor: expected a callable"):
        mine.set_attn_processor("sdpa")
    with pytest.raises(ValueError, match="slice_size"):
        SlicedAttnProcessor(0)
    # a kwarg the processor does not take is dropped with a warning (as diffusers)
    mine.set_attn_processor(Reweight())
    with caplog.at_level(logging.WARNING, logger="impasto"), torch.no_grad():
        mine(**inputs("sd1"), cross_attention_kwargs={"token": 1, "colour": "red"})
    mine.set_default_attn_processor()
    assert "['colour'] are not expected by Reweight" in caplog.text


def test_pipeline_passes_cross_attention_kwargs(tmp_path):
    """A pipeline call's cross_attention_kwargs reach the processor, "scale" (LoRA) stays out, and the image
    equals diffusers' with the same processor."""
    from tiny import make_sd_folder, make_sd_pipeline

    ref = make_sd_pipeline("sd1")
    pipe = impasto.StableDiffusionPipeline.from_pretrained(make_sd_folder(tmp_path))
    pipe.set_progress_bar_config(disable=True)
    seen = []

    class Spy(Reweight):
        def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **kwargs):
            seen.append(sorted(kwargs))
            return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, **kwargs)

    pipe.unet.set_attn_processor(Spy())
    ref.unet.set_attn_processor(Reweight())
    args = dict(prompt="a red circle", num_inference_steps=2, height=32, width=32, output_type="np",
                cross_attention_kwargs={"token": 3, "weight": 2.0, "scale": 0.5})
    got = pipe(**args, generator=torch.Generator().manual_seed(0)).images
    expected = ref(**args, generator=torch.Generator().manual_seed(0)).images
    assert seen and all(keys == ["token", "weight"] for keys in seen)
    assert abs(got - expected).max() <= 1e-3
