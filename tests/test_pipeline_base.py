"""DiffusionPipeline loading/saving, memory toggles, image processors and noise, checked against diffusers."""
from __future__ import annotations

import json
import logging

import numpy as np
import PIL.Image
import pytest
import torch

import tiny
from pipeline_utils import TOL, gen, max_diff, shared_pair

torch.set_num_threads(1)
PROMPT = "a red square"


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return shared_pair("sd2")


def _run(pipe, **kw):
    return pipe(PROMPT, num_inference_steps=2, output_type="np", generator=gen(0), **kw).images


def test_save_pretrained_is_read_by_diffusers_and_impasto(pair, tmp_path):
    import diffusers
    import impasto

    pair.mine.save_pretrained(tmp_path / "saved")
    index = json.loads((tmp_path / "saved" / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert index["text_encoder"] == ["transformers", "CLIPTextModel"] and index["safety_checker"] == [None, None]
    theirs = diffusers.StableDiffusionPipeline.from_pretrained(tmp_path / "saved", scheduler=pair.ref.scheduler)
    theirs.set_progress_bar_config(disable=True)
    base = _run(pair.mine)
    assert max_diff(_run(theirs), base) < TOL
    again = impasto.StableDiffusionPipeline.from_pretrained(tmp_path / "saved", scheduler=pair.mine.scheduler)
    again.set_progress_bar_config(disable=True)
    assert max_diff(_run(again), base) == 0.0


def test_variant_round_trip(pair, tmp_path):
    import impasto

    pair.mine.save_pretrained(tmp_path / "v", variant="fp16")
    assert (tmp_path / "v" / "unet" / "diffusion_pytorch_model.fp16.safetensors").is_file()
    pipe = impasto.DiffusionPipeline.from_pretrained(tmp_path / "v", variant="fp16", use_safetensors=True,
                                                     local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    assert max_diff(_run(pipe), _run(pair.mine)) == 0.0


def test_partial_variant_falls_back_per_component(pair, tmp_path, caplog):
    """As on the hub: only the UNet has fp16 files; the other components load their regular weights, named."""
    import shutil

    import impasto

    folder = tmp_path / "partial"
    shutil.copytree(pair.folder, folder)
    unet = folder / "unet"
    for f in unet.glob("diffusion_pytorch_model*"):
        f.unlink()
    pair.mine.unet.save_pretrained(unet, variant="fp16")
    with caplog.at_level("WARNING", logger="impasto"):
        pipe = impasto.DiffusionPipeline.from_pretrained(folder, variant="fp16", scheduler=pair.mine.scheduler)
    assert "text_encoder has no 'fp16' variant weights" in caplog.text and "unet has no" not in caplog.text
    pipe.set_progress_bar_config(disable=True)
    assert max_diff(_run(pipe), _run(pair.mine)) == 0.0
    with pytest.raises(FileNotFoundError, match="fp16"):  # a model alone still names the missing variant
        impasto.AutoencoderKL.from_pretrained(folder, subfolder="vae", variant="fp16")


def test_sharded_variant_index_named_as_diffusers(pair, tmp_path):
    import diffusers

    import impasto

    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    pair.mine.unet.save_pretrained(ours, variant="fp16", max_shard_size="200KB")
    assert (ours / "diffusion_pytorch_model.safetensors.index.fp16.json").is_file()
    pair.ref.unet.save_pretrained(theirs, variant="fp16", max_shard_size="200KB")
    want = pair.mine.unet.state_dict()
    for folder, lib in ((ours, diffusers), (theirs, impasto), (ours, impasto)):
        got = lib.UNet2DConditionModel.from_pretrained(folder, variant="fp16").state_dict()
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want), (folder, lib)


def test_overrides_dtypes_and_to(pair):
    import impasto

    pipe = impasto.DiffusionPipeline.from_pretrained(pair.folder, scheduler=pair.mine.scheduler, vae=pair.mine.vae,
                                                     dtype={"unet": torch.bfloat16, "default": torch.float32})
    assert pipe.vae is pair.mine.vae and pipe.unet.dtype == torch.bfloat16 and pipe.text_encoder.dtype == torch.float32
    pipe = impasto.StableDiffusionImg2ImgPipeline.from_pretrained(pair.folder, scheduler=pair.mine.scheduler,
                                                                  torch_dtype=torch.float16)
    assert type(pipe).__name__ == "StableDiffusionImg2ImgPipeline" and pipe.dtype == torch.float16
    pipe.to(torch.float32)
    assert pipe.unet.dtype == torch.float32 and pipe.to("cpu").device.type == "cpu"
    with pytest.raises(ValueError, match="dtype"):
        impasto.DiffusionPipeline.from_pretrained(pair.folder, dtype="float7")


def test_unknown_classes_and_builtin_name(pair, tmp_path, monkeypatch):
    import shutil

    import impasto
    from impasto.pipelines import pipeline_utils

    folder = tmp_path / "odd"
    shutil.copytree(pair.folder, folder)
    index = json.loads((folder / "model_index.json").read_text())
    index["scheduler"] = ["diffusers", "FancyScheduler"]
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="FancyScheduler.*scheduler="):
        impasto.DiffusionPipeline.from_pretrained(folder)
    assert impasto.DiffusionPipeline.from_pretrained(folder, scheduler=pair.mine.scheduler).scheduler is not None
    index["_class_name"] = "FluxPipeline"
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="FluxPipeline"):
        impasto.DiffusionPipeline.from_pretrained(folder)
    monkeypatch.setitem(pipeline_utils.BUILTIN_MODELS, "impasto/shapes", tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match="built-in"):
        impasto.DiffusionPipeline.from_pretrained("impasto/shapes")
    monkeypatch.setitem(pipeline_utils.BUILTIN_MODELS, "impasto/shapes", pair.folder)
    pipe = impasto.DiffusionPipeline.from_pretrained("impasto/shapes", scheduler=pair.mine.scheduler)
    assert pipe.unet.config.sample_size == 8


def test_safety_checker_none_logs_one_short_line(pair, caplog):
    import impasto

    with caplog.at_level(logging.INFO, logger="impasto"):
        impasto.StableDiffusionPipeline(**pair.mine.components)
    lines = [r.getMessage() for r in caplog.records if "safety" in r.getMessage()]
    assert len(lines) == 1 and len(lines[0]) < 100 and "\n" not in lines[0]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="impasto"):
        impasto.StableDiffusionPipeline(**pair.mine.components, requires_safety_checker=False)
    assert not [r for r in caplog.records if "safety" in r.getMessage()]


def test_memory_toggles_keep_the_image(pair):
    pipe = pair.mine
    base = _run(pipe)
    for size in ("auto", "max", 2):
        pipe.enable_attention_slicing(size)
        assert max_diff(_run(pipe), base) < 1e-4
    pipe.disable_attention_slicing()
    pipe.enable_xformers_memory_efficient_attention()  # falls back to SDPA without CUDA
    pipe.disable_xformers_memory_efficient_attention()
    pipe.enable_vae_slicing()
    pipe.enable_vae_tiling()
    assert max_diff(_run(pipe), base) < 1e-4
    pipe.disable_vae_slicing()
    pipe.disable_vae_tiling()
    pipe.fuse_qkv_projections()
    assert max_diff(_run(pipe), base) < 1e-4
    pipe.unfuse_qkv_projections()
    assert max_diff(_run(pipe), base) < 1e-5
    with pytest.raises(ValueError, match="slice_size"):
        pipe.enable_attention_slicing("half")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CPU offload"):
            pipe.enable_model_cpu_offload()
        with pytest.raises(RuntimeError, match="CPU offload"):
            pipe.enable_sequential_cpu_offload()


@pytest.mark.parametrize("kind", ["model", "sequential"])
def test_cpu_offload_hooks_keep_the_image(pair, monkeypatch, kind):
    """The offload hooks, exercised with the CPU standing in for the accelerator."""
    pipe = pair.mine
    base = _run(pipe)
    monkeypatch.setattr(pipe, "_offload_target", lambda gpu_id, device: torch.device("cpu"), raising=False)
    getattr(pipe, f"enable_{kind}_cpu_offload")()
    try:
        assert pipe._execution_device == torch.device("cpu") and pipe._offload_hooks
        assert max_diff(_run(pipe), base) < 1e-6
    finally:
        pipe.remove_all_hooks()
    assert not pipe._offload_hooks


def test_float16_vae_overflow_is_decoded_again_in_float32(pair, caplog):
    from impasto.tasks.vae import decode

    vae = pair.mine.vae
    latents = torch.randn(1, 4, 8, 8, generator=gen(0))
    ref = decode(vae, latents)
    half = type(vae).from_pretrained(pair.folder, subfolder="vae", dtype=torch.float16)
    with torch.no_grad():
        half.post_quant_conv.weight.mul_(30000.0)  # activations now overflow float16 (max 65504)
        vae_big = type(vae).from_pretrained(pair.folder, subfolder="vae")
        vae_big.post_quant_conv.weight.mul_(30000.0)
        ref = decode(vae_big, latents)
        assert not torch.isfinite(half.decode(latents.half() / half.config.scaling_factor).sample).all()
        with caplog.at_level(logging.WARNING, logger="impasto"):
            out = decode(half, latents)
    assert torch.isfinite(out).all() and half.dtype == torch.float16
    assert any("float32" in r.getMessage() for r in caplog.records)
    assert max_diff(out, ref) < 1e-2


def test_randn_tensor_semantics():
    from diffusers.utils.torch_utils import randn_tensor as ref_randn

    from impasto.core.noise import randn_tensor

    shape = (3, 4, 5, 5)
    assert max_diff(randn_tensor(shape, gen(1)), ref_randn(shape, gen(1))) == 0.0
    gens = lambda: [gen(i) for i in range(3)]  # noqa: E731
    ours = randn_tensor(shape, gens())
    assert max_diff(ours, ref_randn(shape, gens())) == 0.0
    assert max_diff(ours[1:2], torch.randn((1, 4, 5, 5), generator=gen(1))) == 0.0
    with pytest.raises(ValueError, match="generator"):
        randn_tensor(shape, [gen(0), gen(1)])


def test_progress_bar_config(pair):
    pair.mine.set_progress_bar_config(disable=True, desc="x")
    with pair.mine.progress_bar(total=3) as bar:
        assert bar.disable and bar.total == 3
    pair.mine.set_progress_bar_config(disable=True)


@pytest.mark.parametrize("mode", ["default", "fill", "crop"])
def test_vae_image_processor_matches_diffusers(mode):
    from diffusers.image_processor import VaeImageProcessor as Ref

    from impasto import VaeImageProcessor

    rng = np.random.RandomState(0)
    pil = PIL.Image.fromarray((rng.rand(37, 50, 3) * 255).astype(np.uint8))
    ours, ref = VaeImageProcessor(vae_scale_factor=8), Ref(vae_scale_factor=8)
    kw = {"height": 32, "width": 24} if mode != "default" else {}
    assert max_diff(ours.preprocess(pil, resize_mode=mode, **kw), ref.preprocess(pil, resize_mode=mode, **kw)) == 0.0
    arr = rng.rand(2, 20, 28, 3).astype(np.float32)
    assert max_diff(ours.preprocess(arr), ref.preprocess(arr)) == 0.0
    t = torch.rand(1, 3, 17, 16)
    assert max_diff(ours.preprocess(t, 16, 16), ref.preprocess(t, 16, 16)) == 0.0
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    for kind in ("pt", "np"):
        assert max_diff(ours.postprocess(x, kind, [True, False]), ref.postprocess(x, kind, [True, False])) == 0.0
    a, b = ours.postprocess(x, "pil"), ref.postprocess(x, "pil")
    assert all(np.array_equal(np.array(i), np.array(j)) for i, j in zip(a, b))
    with pytest.raises(ValueError, match="image"):
        ours.preprocess("photo.png")


def test_clip_image_processor_matches_transformers():
    from transformers import CLIPImageProcessor as Ref

    from impasto import CLIPImageProcessor

    rng = np.random.RandomState(0)
    images = [PIL.Image.fromarray((rng.rand(h, w, 3) * 255).astype(np.uint8)) for h, w in ((300, 250), (224, 500))]
    images.append(images[0].convert("RGBA"))
    ours, ref = CLIPImageProcessor(), Ref()
    got = ours(images, return_tensors="pt").pixel_values
    want = ref(images, return_tensors="pt").pixel_values
    assert got.shape == (3, 3, 224, 224) and max_diff(got, want) < 1e-5
    small = dict(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    assert max_diff(CLIPImageProcessor(**small)(images[1]).pixel_values, Ref(**small)(images[1],
                                                                                      return_tensors="pt").pixel_values) < 1e-5


def test_clip_image_processor_reads_folder(tmp_path):
    from impasto import CLIPImageProcessor

    folder = tiny.make_sd_folder(tmp_path, "sd1-safety")
    fe = CLIPImageProcessor.from_pretrained(folder, subfolder="feature_extractor")
    assert fe.crop_size == {"height": 32, "width": 32} and fe.size == {"shortest_edge": 32}
    fe.save_pretrained(tmp_path / "fe")
    assert CLIPImageProcessor.from_pretrained(tmp_path / "fe").to_dict() == fe.to_dict()


def test_deepcopy_and_pickle_of_configured_objects(pair):
    """copy.deepcopy / pickle of a scheduler, a model and a pipeline (diffusers' training scripts deepcopy the
    UNet for EMA; users deepcopy schedulers): the frozen config used to refuse being rebuilt."""
    import copy
    import pickle

    scheduler = pair.mine.scheduler
    for clone in (copy.deepcopy(scheduler), pickle.loads(pickle.dumps(scheduler))):
        assert type(clone) is type(scheduler) and clone.config == scheduler.config
        clone.register_to_config(steps_offset=7)  # the copy is independent and its config still frozen
        assert scheduler.config.steps_offset != 7
        with pytest.raises(TypeError, match="read-only"):
            clone.config["steps_offset"] = 0
    unet = copy.deepcopy(pair.mine.unet)
    assert unet.config == pair.mine.unet.config
    assert unet.conv_in.weight.data_ptr() != pair.mine.unet.conv_in.weight.data_ptr()
    pipe = copy.deepcopy(pair.mine)
    assert pipe.unet is not pair.mine.unet
    assert max_diff(_run(pipe), _run(pair.mine)) == 0.0


def test_name_or_path_as_diffusers(pair):
    import impasto

    folder = str(pair.folder)
    theirs = pair.ref  # built from components, as the diffusers side of the pair is
    assert pair.mine.name_or_path == folder and pair.mine.config._name_or_path == folder
    assert pair.mine.unet.config._name_or_path == str(pair.folder / "unet")  # diffusers: the component's folder
    assert impasto.StableDiffusionImg2ImgPipeline.from_pipe(pair.mine).name_or_path == folder
    assert impasto.StableDiffusionPipeline(**pair.mine.components).name_or_path is None
    assert theirs.name_or_path is None
    unet = impasto.UNet2DConditionModel.from_pretrained(folder, subfolder="unet")
    assert unet.config._name_or_path == folder
    assert pair.mine.to("cpu", silence_dtype_warnings=True) is pair.mine
