"""SDXL base and img2img/refiner parity with diffusers on tiny seeded-random pipelines, hand-off, bad input."""
from __future__ import annotations

import pytest
import torch

from pipeline_utils import TOL, gen, max_diff
from sdxl_utils import image_tensor, refiner_pair, run_both, sdxl_pair

torch.set_num_threads(1)
PROMPT = "a red square on a blue circle"


@pytest.fixture
def xl():
    pair = sdxl_pair()
    pair.use_scheduler("EulerDiscreteScheduler")
    return pair


@pytest.fixture
def refiner():
    pair = refiner_pair()
    pair.use_scheduler("EulerDiscreteScheduler")
    return pair


@pytest.mark.parametrize("kwargs", [
    dict(prompt=PROMPT),
    dict(prompt=PROMPT, guidance_scale=1.0),
    dict(prompt=[PROMPT, "a cat"], prompt_2=["green", "an owl"], negative_prompt=["blur", "dark"],
         negative_prompt_2="noise", num_images_per_prompt=2),
    dict(prompt=PROMPT, negative_prompt_2="noise"),  # zeros anyway: no negative_prompt
    dict(prompt=PROMPT, original_size=(64, 48), crops_coords_top_left=(3, 4), target_size=(40, 32),
         negative_original_size=(16, 24), negative_crops_coords_top_left=(1, 2), negative_target_size=(8, 8)),
    dict(prompt=PROMPT, negative_prompt="blurry", guidance_rescale=0.7),
], ids=["cfg", "no-cfg", "prompt2-batch", "neg2-zeros", "micro", "rescale"])
def test_base_parity(xl, kwargs):
    a, b = run_both(xl.ref, xl.mine, num_inference_steps=2, **kwargs)
    assert b.images.shape == a.images.shape
    assert max_diff(a.images, b.images) < TOL


def test_force_zeros_off_and_generators(xl):
    ref, mine = xl.twin("StableDiffusionXLPipeline", force_zeros_for_empty_prompt=False)
    a, b = run_both(ref, mine, prompt=[PROMPT, "x"], n_generators=2, num_inference_steps=2)
    assert max_diff(a.images, b.images) < TOL
    zeros = xl.mine(prompt=PROMPT, num_inference_steps=2, output_type="np", generator=gen(0)).images
    assert max_diff(zeros, b.images[:1]) > 1e-3  # "" encodes to non-zero embeddings: a different image


def _by_hand(pipe, prompt, clip_skip):
    """SDXL prompt embeddings computed directly from the transformers encoders (diffusers' clip_skip path
    does not run with transformers 5)."""
    feats, pooled = [], None
    for tok, enc in ((pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)):
        ids = tok(prompt, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        out = enc(ids, output_hidden_states=True)
        feats.append(out.hidden_states[-(clip_skip + 2)])
        if out[0].ndim == 2:
            pooled = out[0]
    return torch.cat(feats, dim=-1), pooled


def test_clip_skip_and_prompt_embeds(xl):
    with torch.no_grad():
        embeds, pooled = _by_hand(xl.ref, [PROMPT], clip_skip=1)
    ref = xl.ref(prompt_embeds=embeds, pooled_prompt_embeds=pooled, num_inference_steps=2, output_type="np",
                 generator=gen(0)).images
    mine = xl.mine(prompt=PROMPT, clip_skip=1, num_inference_steps=2, output_type="np", generator=gen(0)).images
    assert max_diff(ref, mine) < TOL
    plain = xl.mine(prompt=PROMPT, num_inference_steps=2, output_type="np", generator=gen(0)).images
    assert max_diff(plain, mine) > 1e-3
    given = xl.mine(prompt_embeds=embeds, pooled_prompt_embeds=pooled, num_inference_steps=2, output_type="np",
                    generator=gen(0)).images
    assert max_diff(given, mine) < 1e-5
    pos, neg, pool, neg_pool = xl.mine.encode_prompt(PROMPT, negative_prompt="bad")
    ref_out = xl.ref.encode_prompt(PROMPT, device="cpu", negative_prompt="bad")
    for x, y in zip((pos, neg, pool, neg_pool), ref_out):
        assert max_diff(x, y) < 1e-5


def test_callback_edits_time_ids(xl):
    def cb(pipe, i, t, kw):
        return {"latents": kw["latents"] * 0.9, "add_time_ids": kw["add_time_ids"] + 1.0}

    inputs = ["latents", "add_time_ids"]
    a, b = run_both(xl.ref, xl.mine, prompt=PROMPT, num_inference_steps=2, callback_on_step_end=cb,
                    callback_on_step_end_tensor_inputs=inputs)
    assert max_diff(a.images, b.images) < TOL


@pytest.mark.parametrize("kwargs", [
    dict(strength=0.6, num_inference_steps=4),
    dict(prompt=[PROMPT, "x"], negative_prompt=["y", "z"], strength=0.9, aesthetic_score=7.5,
         negative_aesthetic_score=1.0, num_images_per_prompt=2, original_size=(48, 48), crops_coords_top_left=(2, 2)),
], ids=["single", "batch-scores"])
def test_refiner_img2img(refiner, kwargs):
    kwargs.setdefault("prompt", PROMPT)
    a, b = run_both(refiner.ref, refiner.mine, image=image_tensor(), **kwargs)
    assert b.images.shape == a.images.shape
    assert max_diff(a.images, b.images) < TOL


def test_base_img2img_no_aesthetics(xl):
    ref, mine = xl.twin("StableDiffusionXLImg2ImgPipeline")
    a, b = run_both(ref, mine, prompt=PROMPT, image=image_tensor(), strength=0.5, num_inference_steps=4,
                    target_size=(24, 24))
    assert max_diff(a.images, b.images) < TOL
    # a crop alone: diffusers' negative time ids take the positive crop, and so do impasto's
    a, b = run_both(ref, mine, prompt=PROMPT, image=image_tensor(), strength=0.5, num_inference_steps=4,
                    crops_coords_top_left=(4, 4))
    assert max_diff(a.images, b.images) < TOL
    c = mine(prompt=PROMPT, image=image_tensor(), strength=0.5, num_inference_steps=4, crops_coords_top_left=(4, 4),
             negative_crops_coords_top_left=(0, 0), output_type="np", generator=gen(0)).images
    assert max_diff(c, b.images) > 1e-3  # given, the negative crop is used (diffusers ignores it here)


@pytest.mark.parametrize("scheduler", ["EulerDiscreteScheduler", "HeunDiscreteScheduler",
                                       "DPMSolverMultistepScheduler"])
def test_base_to_refiner_handoff(xl, refiner, scheduler):
    xl.use_scheduler(scheduler)
    refiner.use_scheduler(scheduler)

    def handoff(base, ref_pipe):
        lat = base(prompt=PROMPT, num_inference_steps=5, denoising_end=0.7, output_type="latent",
                   generator=gen(0)).images
        img = ref_pipe(prompt=PROMPT, image=lat, num_inference_steps=5, denoising_start=0.7, output_type="np",
                       generator=gen(1)).images
        return lat, img

    lat_a, img_a = handoff(xl.ref, refiner.ref)
    lat_b, img_b = handoff(xl.mine, refiner.mine)
    assert max_diff(lat_a, lat_b) < 1e-3
    assert max_diff(img_a, img_b) < TOL


def test_fp16_vae_decodes_in_float32(xl):
    from impasto.pipelines.stable_diffusion_xl import decode_sdxl

    latents = torch.randn(1, 4, 16, 16, generator=gen(2))
    vae = xl.mine.vae
    saved = {k: v.clone() for k, v in vae.state_dict().items()}  # float16 would round the shared weights
    with torch.no_grad():
        full = decode_sdxl(vae, latents)
        vae.to(torch.float16)
        try:
            half = decode_sdxl(vae, latents.half())
            assert vae.dtype == torch.float16  # put back after the float32 decode
        finally:
            vae.to(torch.float32)
            vae.load_state_dict(saved)
    assert half.dtype == torch.float32 and torch.isfinite(half).all()
    assert max_diff(full, half) < 2e-2  # only the weights' float16 rounding differs


def test_bad_input(xl, refiner):
    with pytest.raises(ValueError, match="image"):
        refiner.mine(prompt=PROMPT)
    with pytest.raises(ValueError, match="denoising_start"):
        refiner.mine(prompt=PROMPT, image=image_tensor(), denoising_start=1.0)
    with pytest.raises(ValueError, match="denoising_start"):
        refiner.mine(prompt=PROMPT, image=image_tensor(), denoising_start=0.8, denoising_end=0.5)
    with pytest.raises(ValueError, match="denoising_end"):
        xl.mine(prompt=PROMPT, denoising_end=1.5)
    with pytest.raises(ValueError, match="original_size"):
        xl.mine(prompt=PROMPT, original_size=(64, 64, 3))
    with pytest.raises(ValueError, match="original_size"):
        refiner.mine(prompt=PROMPT, image=image_tensor(), original_size=(64,))
    with pytest.raises(ValueError, match="pooled_prompt_embeds"):
        xl.mine(prompt_embeds=torch.zeros(1, 77, 64))
    with pytest.raises(ValueError, match="prompt_2"):
        xl.mine(prompt_embeds=torch.zeros(1, 77, 64), pooled_prompt_embeds=torch.zeros(1, 32), prompt_2="x")
    ref, mine = xl.twin("StableDiffusionXLImg2ImgPipeline", requires_aesthetics_score=True)
    with pytest.raises(ValueError, match="requires_aesthetics_score=False"):
        mine(prompt=PROMPT, image=image_tensor(), num_inference_steps=2, strength=0.9)
    _, mine = refiner.twin("StableDiffusionXLImg2ImgPipeline", requires_aesthetics_score=False)
    with pytest.raises(ValueError, match="requires_aesthetics_score=True"):
        mine(prompt=PROMPT, image=image_tensor(), num_inference_steps=2, strength=0.9)


def test_loading_and_components(xl, refiner):
    import impasto

    assert type(refiner.mine) is impasto.StableDiffusionXLImg2ImgPipeline
    assert refiner.mine.text_encoder is None and refiner.mine.config.requires_aesthetics_score
    assert refiner.mine.config.force_zeros_for_empty_prompt is False
    assert set(xl.mine.components) == set(xl.ref.components)
    assert hasattr(xl.mine, "load_lora_weights") and hasattr(xl.mine, "load_textual_inversion")
    assert callable(impasto.StableDiffusionXLPipeline.from_single_file)


def test_single_file_round_trip(xl, refiner, tmp_path):
    import impasto
    from impasto.loading.single_file import save_single_file

    i2i = {"image": image_tensor(), "strength": 0.7}
    for pair, cls, kw in ((xl, impasto.StableDiffusionXLPipeline, {}),
                          (refiner, impasto.StableDiffusionXLImg2ImgPipeline, i2i)):
        again = cls.from_single_file(save_single_file(pair.mine, tmp_path / "one.safetensors"))
        again.set_progress_bar_config(disable=True)
        a = pair.mine(prompt=PROMPT, num_inference_steps=2, output_type="np", generator=gen(0), **kw).images
        b = again(prompt=PROMPT, num_inference_steps=2, output_type="np", generator=gen(0), **kw).images
        assert max_diff(a, b) < 1e-4
    assert again.text_encoder is None and again.config.requires_aesthetics_score
