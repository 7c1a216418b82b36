"""Flax SD pipelines against impasto's torch pipelines: same folder, same initial latents / noise, same images.

Every text-to-image and latent image-to-image call here uses 4 denoising steps, so they share one compiled
program (the scheduler only changes the state's tables)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

jax = pytest.importorskip("jax")
pytest.importorskip("flax")

import impasto  # noqa: E402
from impasto.jax import schedulers as S  # noqa: E402
from impasto.jax.pipeline import FlaxStableDiffusionPipeline  # noqa: E402
from impasto.jax.pipeline_img2img import FlaxStableDiffusionImg2ImgPipeline, _fold, encode_image  # noqa: E402
from jax_utils import one_torch_thread  # noqa: E402,F401 (autouse fixture)
from jax_utils import (PROMPTS, SCHEDULERS, flax_pipeline, max_diff, scheduler_config, sd_folder,  # noqa: E402
                       seeded, torch_pipeline)

TOL = 1e-3
TESTS = Path(__file__).resolve().parent


def flax_with(cls, scheduler):
    pipe, params = flax_pipeline()
    other = cls(vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer, unet=pipe.unet,
                scheduler=scheduler)
    return other, dict(params, scheduler=scheduler.create_state())


def test_from_pretrained_and_prepare_inputs(pmap_job):  # pmap_job: start the subprocess now
    pipe, params = flax_pipeline()
    assert set(params) == {"text_encoder", "unet", "vae", "scheduler"}
    assert isinstance(pipe.scheduler, S.FlaxPNDMScheduler) and pipe.scheduler.config["skip_prk_steps"]
    ids = pipe.prepare_inputs(PROMPTS)
    assert ids.shape == (2, 77) and ids.dtype == np.int32
    ref = torch_pipeline().tokenizer(PROMPTS, padding="max_length", max_length=77, truncation=True).input_ids
    assert ids.tolist() == ref


def test_long_prompts_truncated_with_a_warning(caplog):
    pipe, _ = flax_pipeline()
    with caplog.at_level("WARNING", logger="impasto"):
        ids = pipe.prepare_inputs(["cat " * 100, "dog"])
    assert ids.shape == (2, 77) and "truncated" in caplog.text and "[0]" in caplog.text


@pytest.mark.parametrize("name", SCHEDULERS)
def test_txt2img_matches_torch(name):
    steps = 3 if name == "PNDMScheduler" else 4  # PNDM's warm-up repeats a timestep: 4 model calls either way
    cfg = scheduler_config()
    tpipe = torch_pipeline()
    tpipe.scheduler = getattr(impasto, name).from_config(cfg)
    latents = seeded((2, 4, 16, 16), 0)
    ref = tpipe(PROMPTS, num_inference_steps=steps, latents=latents, output_type="np").images
    pipe, params = flax_with(FlaxStableDiffusionPipeline, S.scheduler_class(name).from_config(cfg))
    out = pipe(pipe.prepare_inputs(PROMPTS), params, jax.random.PRNGKey(0), num_inference_steps=steps,
               latents=latents.numpy())
    assert out.images.shape == (2, 32, 32, 3) and out.nsfw_content_detected is None
    assert max_diff(out.images, ref) < TOL
    assert ref.std() > 0.01


def test_img2img_matches_torch_and_encodes_pixels():
    cfg = scheduler_config()
    tpipe = impasto.StableDiffusionImg2ImgPipeline(**torch_pipeline().components)
    tpipe.scheduler = impasto.EulerDiscreteScheduler.from_config(cfg)
    tpipe.set_progress_bar_config(disable=True)
    init, noise = seeded((2, 4, 16, 16), 1), seeded((2, 4, 16, 16), 5)  # latents; torch draws `noise` from seed 5
    ref = tpipe(PROMPTS, image=init, strength=0.5, num_inference_steps=8, generator=torch.Generator().manual_seed(5),
                output_type="np").images
    pipe, params = flax_with(FlaxStableDiffusionImg2ImgPipeline, S.FlaxEulerDiscreteScheduler.from_config(cfg))
    ids, key = pipe.prepare_inputs(PROMPTS), jax.random.PRNGKey(3)
    out = pipe(ids, init.numpy(), params, key, strength=0.5, num_inference_steps=8, noise=noise.numpy()).images
    assert max_diff(out, ref) < TOL
    assert max_diff(out, np.asarray(tpipe.image_processor.postprocess(tpipe.vae.decode(
        init / 0.18215).sample.detach(), output_type="np"))) > 0.01  # it did denoise

    # pixels: encoded by a posterior sample keyed from prng_seed, then the same program as latents
    pixels = pipe.prepare_image_inputs([np.random.default_rng(0).random((32, 32, 3)).astype(np.float32)] * 2)
    assert pixels.shape == (2, 3, 32, 32) and pixels.min() >= -1 and pixels.max() <= 1
    ids_too, pixels_too = pipe.prepare_inputs(PROMPTS, [np.random.default_rng(0).random((32, 32, 3))] * 2)  # diffusers'
    assert np.array_equal(ids_too, ids) and np.array_equal(pixels_too, pixels)
    with pytest.raises(ValueError, match="one image per prompt"):
        pipe.prepare_inputs(PROMPTS, [np.zeros((32, 32, 3))])
    got = pipe(ids, pixels, params, key, strength=0.5, num_inference_steps=8, noise=noise.numpy()).images
    latents = jax.jit(encode_image, static_argnums=0)(pipe.vae, params["vae"], pixels, _fold(key, 1))
    via = pipe(ids, np.asarray(latents), params, key, strength=0.5, num_inference_steps=8, noise=noise.numpy()).images
    assert max_diff(got, via) < 1e-5


@pytest.fixture(scope="module")
def pmap_job(tmp_path_factory):
    """jit=True on 2 simulated CPU devices, in a subprocess (XLA_FLAGS must precede jax's import) started early
    so it runs beside the other tests: replicate params, shard ids / latents / keys."""
    out = tmp_path_factory.mktemp("pmap")
    latents = seeded((2, 4, 16, 16), 7)
    np.save(out / "latents.npy", latents.numpy())
    script = f"""
import sys, numpy as np, jax
sys.path.insert(0, {str(TESTS)!r})
assert jax.local_device_count() == 2, jax.devices()
from impasto.jax.pipeline import FlaxStableDiffusionPipeline
from impasto.jax.utils import replicate, shard, unshard
pipe, params = FlaxStableDiffusionPipeline.from_pretrained({str(sd_folder())!r})
ids = shard(pipe.prepare_inputs({PROMPTS!r}))
latents = shard(np.load({str(out / 'latents.npy')!r}))
keys = jax.random.split(jax.random.PRNGKey(0), 2)
images = pipe(ids, replicate(params), keys, num_inference_steps=3, latents=latents, jit=True).images
assert images.shape == (2, 1, 32, 32, 3), images.shape
np.save({str(out / 'images.npy')!r}, unshard(images))
"""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu",
               JAX_DISABLE_MOST_OPTIMIZATIONS="1")
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    yield proc, latents, out / "images.npy"
    if proc.poll() is None:
        proc.kill()


def test_pmap_on_two_host_devices(pmap_job):
    proc, latents, images = pmap_job
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    tpipe = torch_pipeline()
    tpipe.scheduler = impasto.PNDMScheduler.from_config(scheduler_config())
    ref = tpipe(PROMPTS, num_inference_steps=3, latents=latents, output_type="np").images
    assert max_diff(np.load(images), ref) < TOL


def test_seed_forms():
    """Int seeds (numpy's too), raw PRNGKeys and typed jax.random.key give the same raw key."""
    from impasto.jax.utils import as_key

    want = np.asarray(jax.random.PRNGKey(5))
    for seed in (5, np.int64(5), jax.random.PRNGKey(5), jax.random.key(5)):
        assert np.array_equal(np.asarray(as_key(seed)), want), seed
    assert as_key(jax.random.split(jax.random.key(0), 2)).shape == (2, 2)
    with pytest.raises(ValueError, match="prng_seed"):
        as_key(True)


def test_bad_arguments_raise():
    pipe, params = flax_pipeline()
    ids, key = pipe.prepare_inputs(PROMPTS), jax.random.PRNGKey(0)
    with pytest.raises(ValueError, match="prompt_ids"):
        pipe(ids, params, key, jit=True)
    from impasto.jax.utils import shard

    with pytest.raises(ValueError, match="must be replicated"):  # sharded inputs, params never replicated
        pipe(shard(ids), params, jax.random.split(key, jax.local_device_count()), jit=True)
    with pytest.raises(ValueError, match="height"):
        pipe(ids, params, key, height=30)
    with pytest.raises(ValueError, match="latents"):
        pipe(ids, params, key, latents=np.zeros((1, 4, 16, 16), np.float32))
    with pytest.raises(ValueError, match="guidance_scale"):
        pipe(ids, params, key, guidance_scale=np.ones(3))
    with pytest.raises(ValueError, match="prng_seed"):
        pipe(ids, params, jax.random.split(key, 2))
    with pytest.raises(ValueError, match="neg_prompt_ids"):
        pipe(ids, params, key, neg_prompt_ids=ids[:1])
    with pytest.raises(ValueError, match="num_inference_steps"):
        pipe(ids, params, key, num_inference_steps=0)
    with pytest.raises(ValueError, match="prompt"):
        pipe.prepare_inputs(3)
    img = FlaxStableDiffusionImg2ImgPipeline(pipe.vae, pipe.text_encoder, pipe.tokenizer, pipe.unet, pipe.scheduler)
    latents = np.zeros((2, 4, 16, 16), np.float32)
    with pytest.raises(ValueError, match="strength"):
        img(ids, latents, params, key, strength=0.1, num_inference_steps=5)
    with pytest.raises(ValueError, match="strength"):
        img(ids, latents, params, key, strength=1.5)
    with pytest.raises(ValueError, match="image"):
        img(ids, np.zeros((2, 2, 16, 16), np.float32), params, key)
    with pytest.raises(ValueError, match="image"):
        img(ids, np.zeros((3, 4, 16, 16), np.float32), params, key)
    with pytest.raises(ValueError, match="height"):
        img(ids, latents, params, key, height=64)
    with pytest.raises(ValueError, match="safety_checker"):
        FlaxStableDiffusionPipeline(pipe.vae, pipe.text_encoder, pipe.tokenizer, pipe.unet, pipe.scheduler,
                                    safety_checker=object())


def test_other_pipelines_refused(tmp_path):
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionXLPipeline"}))
    with pytest.raises(ValueError, match="StableDiffusionXLPipeline"):
        FlaxStableDiffusionPipeline.from_pretrained(tmp_path)


def test_sd2_variant_matches_torch(tmp_path):
    """SD 2.x shapes: linear proj_in/out, per-block heads, upcast_attention, 3-level VAE, gelu CLIP with "!" padding,
    DDIM with v-prediction (the folder's own scheduler)."""
    from tiny import make_sd_folder

    folder = make_sd_folder(tmp_path, "sd2")
    tpipe = impasto.StableDiffusionPipeline.from_pretrained(folder)
    tpipe.set_progress_bar_config(disable=True)
    latents = seeded((2, 4, 8, 8), 11)
    ref = tpipe(PROMPTS, num_inference_steps=2, latents=latents, output_type="np").images
    pipe, params = FlaxStableDiffusionPipeline.from_pretrained(folder)
    assert isinstance(pipe.scheduler, S.FlaxDDIMScheduler) and pipe.scheduler.config["prediction_type"] == "v_prediction"
    out = pipe(pipe.prepare_inputs(PROMPTS), params, jax.random.PRNGKey(0), num_inference_steps=2,
               latents=latents.numpy()).images
    assert out.shape == ref.shape == (2, 32, 32, 3)
    assert max_diff(out, ref) < TOL
