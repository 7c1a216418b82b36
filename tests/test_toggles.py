"""Memory/speed toggles on tiny SD 1.x / SD 2.x / SDXL pipelines: each changes memory, not results.

Images are compared with the untoggled ones (float32, CPU, 2 steps); "exact" means bitwise equal. VAE tiling is
the one toggle that changes results (per-tile GroupNorm statistics and zero padding at tile edges, as in diffusers):
it is checked against diffusers' tiled decode/encode (same algorithm, exact), with a stated tolerance on the
pipeline image, and with a seam detector on the blending itself (which must fire when blending is off).
"""
from __future__ import annotations

import functools
import logging
import tempfile

import numpy as np
import pytest
import torch

import impasto
import tiny
from impasto.models.attention import Attention
from impasto.models.vae_blocks import tiled_map

torch.set_num_threads(1)
PROMPT = "a red square on a blue circle"
TOL = 1e-3  # the bound for "same image"


@functools.lru_cache(maxsize=None)
def folder(variant: str):
    return tiny.make_sd_folder(tempfile.mkdtemp(prefix="impasto-toggles-"), variant)


def load(variant: str, **kw):
    cls = impasto.StableDiffusionXLPipeline if variant == "sdxl" else impasto.StableDiffusionPipeline
    pipe = cls.from_pretrained(str(folder(variant)), **kw)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@functools.lru_cache(maxsize=None)
def shared(variant: str):
    return load(variant)


def run(pipe, **kw) -> np.ndarray:
    kw.setdefault("num_inference_steps", 2)
    return pipe(PROMPT, output_type="np", generator=torch.Generator().manual_seed(0), **kw).images


def diff(a, b) -> float:
    return float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).max())


def kinds(module) -> set:
    return {(m.attn_backend.kind, m.attn_backend.slice_size) for m in module.modules() if isinstance(m, Attention)}


@functools.lru_cache(maxsize=None)
def baseline(variant: str, **kw):
    return run(shared(variant), **kw)


# ---- attention slicing ------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["sd1", "sd2", "sdxl"])
def test_attention_slicing_same_images(variant):
    pipe, base = shared(variant), baseline(variant)
    try:
        for size in ("auto", "max", 2):
            pipe.enable_attention_slicing(size)
            assert {k for k, _ in kinds(pipe.unet)} == {"sliced"}, size
            if size == "max":
                assert {s for _, s in kinds(pipe.unet)} == {1}
            assert diff(run(pipe), base) < TOL, size
    finally:
        pipe.disable_attention_slicing()
    assert kinds(pipe.unet) == {("sdpa", None)}
    assert diff(run(pipe), base) == 0.0  # disable restores the default path exactly
    with pytest.raises(ValueError, match="slice_size"):
        pipe.enable_attention_slicing(0)


# ---- VAE slicing ------------------------------------------------------------------------------------
def test_vae_slicing_batch_of_three():
    pipe = shared("sd1")
    base = run(pipe, num_images_per_prompt=3)
    batches = []
    hook = pipe.vae.decoder.register_forward_pre_hook(lambda m, a: batches.append(a[0].shape[0]))
    try:
        pipe.enable_vae_slicing()
        sliced = run(pipe, num_images_per_prompt=3)
        assert batches == [1, 1, 1]  # one image at a time
        pipe.disable_vae_slicing()
        batches.clear()
        again = run(pipe, num_images_per_prompt=3)
        assert batches == [3]
    finally:
        hook.remove()
        pipe.disable_vae_slicing()
    assert diff(sliced, base) < TOL and diff(again, base) == 0.0


# ---- VAE tiling -------------------------------------------------------------------------------------
TILE_IMAGE_TOL = 0.25  # tiny random VAE, [0, 1] images; measured 0.17 (random weights: tile edges act as borders)


def test_vae_tiling_pipeline_64px():
    """VAE sample_size 32 -> latent tiles of 16: a 64x64 image (32x32 latents) decodes as 3x3 blended tiles."""
    pipe = shared("sd1")
    assert pipe.vae.tile_sample_min_size == 32 and pipe.vae.tile_latent_min_size == 16
    base = run(pipe, height=64, width=64)
    shapes = []
    hook = pipe.vae.decoder.register_forward_pre_hook(lambda m, a: shapes.append(tuple(a[0].shape[-2:])))
    try:
        pipe.enable_vae_tiling()
        tiled = run(pipe, height=64, width=64)
        pipe.disable_vae_tiling()
        untiled_again = run(pipe, height=64, width=64)
    finally:
        hook.remove()
        pipe.disable_vae_tiling()
    assert shapes[:-1] == [(16, 16), (16, 16), (16, 8)] * 2 + [(8, 16), (8, 16), (8, 8)] and shapes[-1] == (32, 32)
    assert tiled.shape == base.shape and np.isfinite(tiled).all()
    assert 0 < diff(tiled, base) < TILE_IMAGE_TOL
    assert diff(untiled_again, base) == 0.0


def test_vae_tiling_equals_diffusers_tiling():
    """The tiles, overlaps and blends are diffusers' (decode of 2x4x40x32 latents, encode of an 80x64 image), at the
    default tile size and at a custom tile size / overlap."""
    import diffusers

    mine = impasto.AutoencoderKL.from_pretrained(str(folder("sd1") / "vae"))
    ref = diffusers.AutoencoderKL.from_pretrained(str(folder("sd1") / "vae"))
    torch.manual_seed(0)
    z, x = torch.randn(2, 4, 40, 32), torch.rand(1, 3, 80, 64) * 2 - 1
    for sample, overlap in ((None, None), (24, 0.5)):
        mine.enable_tiling(tile_sample_min_size=sample, tile_overlap_factor=overlap)
        if sample is not None:  # diffusers takes the attributes as they are
            ref.tile_sample_min_size, ref.tile_latent_min_size, ref.tile_overlap_factor = sample, sample // 2, overlap
        ref.enable_tiling()
        assert (mine.tile_sample_min_size, mine.tile_latent_min_size) == (ref.tile_sample_min_size,
                                                                           ref.tile_latent_min_size)
        with torch.no_grad():
            assert (mine.decode(z).sample - ref.decode(z).sample).abs().max() < 1e-5
            assert (mine.encode(x).latent_dist.mean - ref.encode(x).latent_dist.mean).abs().max() < 1e-5
    mine.disable_tiling()
    with torch.no_grad():
        assert (mine.decode(z).sample - ref.decode(z).sample).abs().max() > 1e-3  # tiling did change something
    for bad in (dict(tile_overlap_factor=1.0), dict(tile_sample_min_size=1), dict(tile_latent_min_size=0)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            mine.enable_tiling(**bad)


def _tone_shifting_decoder(t: torch.Tensor) -> torch.Tensor:
    """A stand-in decoder with what makes tiles disagree: 2x upsampling plus a per-tile tone shift (as a
    per-tile GroupNorm gives)."""
    up = torch.nn.functional.interpolate(t, scale_factor=2, mode="nearest")
    return up - 0.5 * t.mean(dim=(2, 3), keepdim=True)


def _line_gradients(img: torch.Tensor):
    return img.diff(dim=2).abs().mean(dim=(0, 1, 3)), img.diff(dim=3).abs().mean(dim=(0, 1, 2))


def _seam_ratio(img: torch.Tensor, reference: torch.Tensor, bands) -> float:
    """Largest mean |gradient| across a row or column line inside the (start, stop) bands, over the largest one
    of the untiled reference image in the same bands (its typical gradient there)."""
    def worst(x):
        rows, cols = _line_gradients(x)
        return max(float(torch.maximum(rows[a - 1:b], cols[a - 1:b]).max()) for a, b in bands)
    return worst(img) / worst(reference)


def test_tiling_blend_leaves_no_visible_seam():
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 32), torch.linspace(0, 1, 32), indexing="ij")
    smooth = torch.stack([torch.sin(2 * xx + yy), xx * yy, 0.5 * yy - xx])[None].double()
    untiled = _tone_shifting_decoder(smooth)
    blended = tiled_map(smooth, _tone_shifting_decoder, 16, 32, 0.25)  # blends over output lines 24-32, 48-56
    hard = tiled_map(smooth, _tone_shifting_decoder, 16, 32, 0.0)  # no overlap: a cut at line 32
    assert blended.shape == hard.shape == untiled.shape
    assert _seam_ratio(hard, untiled, [(32, 33)]) > 4  # the detector sees an unblended seam...
    assert _seam_ratio(blended, untiled, [(24, 33), (48, 57)]) < 1.5  # ...and none across the blended bands
    # away from the seams, tiling moves pixels by no more than the per-tile tone shift itself
    shift = (0.5 * (smooth.mean() - smooth[..., :16, :16].mean(dim=(2, 3)))).abs().max()
    assert (blended - untiled)[..., :24, :24].abs().max() <= shift + 1e-12


# ---- xformers, fused projections, channels_last ----------------------------------------------------
def test_xformers_toggle_falls_back_to_sdpa_with_one_log_line(caplog):
    pipe, base = shared("sd1"), baseline("sd1")
    with caplog.at_level(logging.INFO, logger="impasto"):
        pipe.enable_xformers_memory_efficient_attention()
    lines = [r.getMessage() for r in caplog.records if "xformers" in r.getMessage()]
    assert len(lines) == 1 and "SDPA" in lines[0], lines
    try:
        assert kinds(pipe.unet) == {("sdpa", None)}
        assert diff(run(pipe), base) == 0.0
    finally:
        pipe.disable_xformers_memory_efficient_attention()
    assert diff(run(pipe), base) == 0.0


@pytest.mark.parametrize("variant", ["sd1", "sdxl"])
def test_fuse_qkv_projections(variant):
    pipe, base = shared(variant), baseline(variant)
    layers = [m for m in [*pipe.unet.modules(), *pipe.vae.modules()] if isinstance(m, Attention)]
    try:
        pipe.fuse_qkv_projections()
        assert layers and all(m.fused for m in layers)
        assert diff(run(pipe), base) < TOL
    finally:
        pipe.unfuse_qkv_projections()
    assert not any(m.fused for m in layers)
    assert diff(run(pipe), base) == 0.0


def test_channels_last_unet():
    pipe, base = shared("sd1"), baseline("sd1")
    try:
        pipe.unet.to(memory_format=torch.channels_last)
        assert pipe.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
        assert diff(run(pipe), base) < TOL
    finally:
        pipe.unet.to(memory_format=torch.contiguous_format)
    assert diff(run(pipe), base) == 0.0


def test_everything_on_then_off_restores_default_exactly():
    pipe, base = shared("sd1"), baseline("sd1")
    pipe.enable_attention_slicing("max")
    pipe.enable_vae_slicing()
    pipe.enable_vae_tiling()
    pipe.fuse_qkv_projections()
    pipe.enable_xformers_memory_efficient_attention()
    pipe.unet.to(memory_format=torch.channels_last)
    assert diff(run(pipe, num_images_per_prompt=2), baseline("sd1", num_images_per_prompt=2)) < TOL  # 32 px: no tile
    pipe.unet.to(memory_format=torch.contiguous_format)
    pipe.disable_attention_slicing()
    pipe.disable_vae_slicing()
    pipe.disable_vae_tiling()
    pipe.unfuse_qkv_projections()
    pipe.disable_xformers_memory_efficient_attention()
    assert not pipe.vae.use_slicing and not pipe.vae.use_tiling
    assert diff(run(pipe), base) == 0.0


# ---- dtypes -----------------------------------------------------------------------------------------
HALF_TOL = {torch.bfloat16: 0.05, torch.float16: 0.01}  # 8 / 11 mantissa bits; measured 0.015 / 0.0017 (SD1)


@pytest.mark.parametrize("variant,dtype", [("sd1", torch.bfloat16), ("sd1", torch.float16), ("sdxl", torch.float16)])
def test_half_precision_pipeline(variant, dtype):
    pipe = load(variant).to(dtype)
    assert pipe.unet.dtype == pipe.vae.dtype == pipe.text_encoder.dtype == dtype
    img = run(pipe)
    assert np.isfinite(img).all()
    assert diff(img, baseline(variant)) < HALF_TOL[dtype]


FP16_VAE_TOL = 1e-3  # float16-rounded VAE weights, decoded in float32; measured 3e-4


def test_float16_vae_force_upcast_sdxl():
    pipe, base = shared("sdxl"), baseline("sdxl")
    assert pipe.vae.config.force_upcast
    seen = []
    hook = pipe.vae.decoder.register_forward_pre_hook(lambda m, a: seen.append((a[0].dtype, m.conv_in.weight.dtype)))
    try:
        pipe.vae.to(torch.float16)
        img = run(pipe)
        assert seen == [(torch.float32, torch.float32)]  # decoded in float32...
        assert pipe.vae.dtype == torch.float16  # ...and the VAE is float16 again afterwards
        assert np.isfinite(img).all() and diff(img, base) < FP16_VAE_TOL
    finally:
        hook.remove()
        pipe.vae.to(torch.float32)
    # without force_upcast, a float16 VAE decodes in float16
    vae16 = impasto.AutoencoderKL.from_config(dict(pipe.vae.config, force_upcast=False))
    vae16.load_state_dict(pipe.vae.state_dict())
    pipe16 = impasto.StableDiffusionXLPipeline(**dict(pipe.components, vae=vae16.to(torch.float16)))
    pipe16.set_progress_bar_config(disable=True)
    seen.clear()
    hook = vae16.decoder.register_forward_pre_hook(lambda m, a: seen.append((a[0].dtype, m.conv_in.weight.dtype)))
    try:
        img16 = run(pipe16)
    finally:
        hook.remove()
    assert seen == [(torch.float16, torch.float16)]
    assert np.isfinite(img16).all() and diff(img16, base) < 0.05


# ---- CPU offload on a CPU-only machine --------------------------------------------------------------
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a CPU-only machine")
@pytest.mark.parametrize("method", ["enable_model_cpu_offload", "enable_sequential_cpu_offload"])
def test_cpu_offload_without_accelerator_says_what_is_needed(method):
    pipe = shared("sd1")
    with pytest.raises(RuntimeError, match=r"needs a cuda device.*CPU-only"):
        getattr(pipe, method)()
    with pytest.raises(ValueError, match="device"):
        getattr(pipe, method)(device="cpu")
    assert not getattr(pipe, "_offload_hooks", []) and pipe._execution_device.type == "cpu"
    assert diff(run(pipe), baseline("sd1")) == 0.0  # the pipeline is untouched


def attach_toy_lora(unet, seed=0):
    """Random rank-4 LoRA branches on every to_q / to_v (forward hooks, as loaded LoRAs are)."""
    from impasto.loading.lora.formats import LoraWeights
    from impasto.loading.lora.layers import attach

    torch.manual_seed(seed)
    attach(unet, "toy", {n: LoraWeights(torch.randn(4, m.in_features) * 0.3, torch.randn(m.out_features, 4) * 0.3, 4.0)
                         for n, m in unet.named_modules()
                         if n.endswith(("to_q", "to_v")) and isinstance(m, torch.nn.Linear)})


def test_fused_qkv_keeps_lora_branches():
    """Fusing must not bypass the LoRA hooks of to_q / to_v (layers with hooks stay unfused)."""
    pipe = load("sd1")
    attach_toy_lora(pipe.unet)
    with_lora = run(pipe)
    assert diff(with_lora, baseline("sd1")) > 1e-2
    pipe.fuse_qkv_projections()
    assert diff(run(pipe), with_lora) < TOL


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("method", ["enable_model_cpu_offload", "enable_sequential_cpu_offload"])
def test_cpu_offload_on_cuda_same_images(method):
    on_gpu = run(load("sd1").to("cuda"))
    pipe = load("sd1")
    pipe.fuse_qkv_projections()
    getattr(pipe, method)()
    assert diff(run(pipe), on_gpu) < TOL
    assert all(p.device.type == "cpu" for p in pipe.unet.parameters())  # weights are back in main memory


# ---- torch.compile ----------------------------------------------------------------------------------
@pytest.mark.parametrize("backend,lora", [("eager", True), ("aot_eager", False)])
def test_compiled_unet_fullgraph_in_pipeline(backend, lora):
    """fullgraph=True turns any graph break into an error, so a finished 3-step call proves there were none.
    "eager" runs with a LoRA attached (its forward hooks compile too), "aot_eager" with fused q/k/v."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    pipe = load("sd1")
    if lora:
        attach_toy_lora(pipe.unet)
    else:
        pipe.fuse_qkv_projections()
    assert (diff(run(pipe), baseline("sd1")) > 1e-2) == lora  # the LoRA is active
    unet = pipe.unet
    pipe.unet = torch.compile(unet, fullgraph=True, backend=backend)
    counters.clear()
    try:
        img = run(pipe, num_inference_steps=3)
    finally:
        pipe.unet = unet
        torch._dynamo.reset()
    assert counters["stats"]["unique_graphs"] == 1  # one graph for every step: no recompiles in the loop
    assert diff(img, run(pipe, num_inference_steps=3)) < 1e-5
