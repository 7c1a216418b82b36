"""StableDiffusionImg2ImgPipeline parity with diffusers, and input validation of both SD pipelines."""
from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch

from pipeline_utils import TOL, gen, max_diff, shared_pair

torch.set_num_threads(1)
PROMPT = "a red square on a blue circle"


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return shared_pair("sd1")


@pytest.fixture(scope="module")
def i2i(pair):
    return pair.img2img()


def _image(seed=1, size=32):
    return torch.rand(1, 3, size, size, generator=gen(seed))


@pytest.mark.parametrize("scheduler,strength", [("PNDMScheduler", 0.75), ("DDIMScheduler", 0.3),
                                                ("EulerAncestralDiscreteScheduler", 1.0),
                                                ("DPMSolverMultistepScheduler", 0.6)])
def test_strengths_and_schedulers(pair, i2i, scheduler, strength):
    pair.set_scheduler(scheduler)
    ref, mine = i2i
    ref.scheduler, mine.scheduler = pair.ref.scheduler, pair.mine.scheduler
    a, b = pair.run_both(ref, mine, prompt=PROMPT, image=_image(), strength=strength, num_inference_steps=4)
    assert max_diff(a.images, b.images) < TOL


def test_batch_pil_numpy_and_generators(pair, i2i):
    pair.set_scheduler("DDIMScheduler")
    ref, mine = i2i
    ref.scheduler, mine.scheduler = pair.ref.scheduler, pair.mine.scheduler
    arr = np.random.RandomState(0).rand(40, 48, 3).astype(np.float32)  # not a multiple of 8: cut to 40x48
    pil = PIL.Image.fromarray((arr * 255).astype(np.uint8))
    a, b = pair.run_both(ref, mine, prompt=[PROMPT, "x"], negative_prompt=["y", "z"], image=pil,
                         num_images_per_prompt=2, n_generators=4, strength=0.5)
    assert b.images.shape == (4, 40, 48, 3) and max_diff(a.images, b.images) < TOL
    a, b = pair.run_both(ref, mine, prompt=PROMPT, image=arr[None], strength=0.5, eta=0.3)
    assert max_diff(a.images, b.images) < TOL
    a, b = pair.run_both(ref, mine, prompt=[PROMPT, "x"], image=[_image(2)[0], _image(3)[0]],
                         strength=0.5, guidance_scale=1.0, output_type="pt")
    assert b.images.shape == (2, 3, 32, 32) and max_diff(a.images, b.images) < TOL


def test_latent_input_and_callback(pair, i2i):
    pair.set_scheduler("EulerDiscreteScheduler")
    ref, mine = i2i
    ref.scheduler, mine.scheduler = pair.ref.scheduler, pair.mine.scheduler
    latents = torch.randn(1, 4, 16, 16, generator=gen(4))
    steps = []

    def cb(pipe, i, t, kw):
        steps.append(i)
        return {"latents": kw["latents"] * 1.01}

    a, b = pair.run_both(ref, mine, prompt=PROMPT, image=latents, strength=0.5, num_inference_steps=6,
                         callback_on_step_end=cb)
    assert steps == [0, 1, 2] * 2
    assert max_diff(a.images, b.images) < TOL


@pytest.mark.parametrize("kwargs,word", [
    (dict(strength=1.5), "strength"),
    (dict(strength=-0.1), "strength"),
    (dict(image=None), "image"),
    (dict(image="cat.png"), "image"),
    (dict(image=torch.rand(1, 2, 32, 32)), "image"),
    (dict(image=np.zeros((32, 32, 5), np.float32)), "image"),
    (dict(negative_prompt=["a", "b"]), "negative_prompt"),
    (dict(prompt_embeds=torch.zeros(1, 77, 32)), "prompt_embeds"),
    (dict(prompt=None), "prompt"),
    (dict(strength=0.1, num_inference_steps=5), "strength"),
    (dict(image=torch.rand(3, 3, 32, 32)), "image"),  # 3 images for 1 prompt
])
def test_img2img_bad_input(i2i, kwargs, word):
    _, mine = i2i
    args = {"prompt": PROMPT, "image": _image(), "num_inference_steps": 2, **kwargs}
    with pytest.raises(ValueError, match=word):
        mine(**args)


@pytest.mark.parametrize("kwargs,word", [
    (dict(height=30), "height"),
    (dict(width=20, height=17), "height"),
    (dict(negative_prompt=["a", "b", "c"], prompt=["x", "y"]), "negative_prompt"),
    (dict(prompt=None), "prompt"),
    (dict(prompt_embeds=torch.zeros(1, 77, 32)), "prompt"),
    (dict(generator=[gen(0), gen(1)]), "generator"),
    (dict(output_type="jpeg"), "output_type"),
    (dict(callback_on_step_end_tensor_inputs=["noise_pred"]), "callback_on_step_end_tensor_inputs"),
    (dict(latents=torch.zeros(1, 4, 8, 8)), "latents"),
    (dict(timesteps=[999, 500], sigmas=[1.0, 0.5]), "timesteps"),
])
def test_txt2img_bad_input(pair, kwargs, word):
    args = {"prompt": PROMPT, "num_inference_steps": 2, **kwargs}
    with pytest.raises(ValueError, match=word):
        pair.mine(**args)
