"""StableDiffusionPipeline parity with diffusers on tiny seeded-random pipelines (float32, CPU)."""
from __future__ import annotations

import pytest
import torch

import tiny
from pipeline_utils import SCHEDULERS, TOL, Pair, gen, max_diff, shared_pair

torch.set_num_threads(1)
PROMPT = "a red square on a blue circle"


@pytest.fixture(scope="module")
def sd1(tmp_path_factory):
    return shared_pair("sd1")


@pytest.fixture(scope="module")
def sd2(tmp_path_factory):
    return shared_pair("sd2")


def test_loaded_components_are_impasto(sd1):
    comps = sd1.mine.components
    for name in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert type(comps[name]).__module__.startswith("impasto."), (name, type(comps[name]))
    assert comps["safety_checker"] is None


@pytest.mark.parametrize("name", SCHEDULERS)
def test_schedulers_match_diffusers(sd1, name):
    sd1.set_scheduler(name)
    a, b = sd1.run_both(prompt=PROMPT, guidance_scale=6.0)
    assert a.images.shape == (1, 32, 32, 3)
    assert max_diff(a.images, b.images) < TOL


@pytest.mark.parametrize("name", SCHEDULERS)
def test_call_runs_on_the_pipelines_scheduler(sd1, name):
    """As diffusers: a call steps `pipe.scheduler` itself (callbacks read its step_index and timesteps, and it
    keeps them after the call), and each call starts that scheduler afresh, whatever ran on it before."""
    sd1.set_scheduler(name)
    seen = {}

    def watch(pipe, i, t, kw):
        s = pipe.scheduler
        seen.setdefault(type(pipe).__module__.split(".")[0], []).append((i, getattr(s, "step_index", None), float(s.timesteps[i])))
        return {}

    a, b = sd1.run_both(prompt=PROMPT, callback_on_step_end=watch)
    assert seen["impasto"] == seen["diffusers"] and len(seen["impasto"]) == len(sd1.mine.scheduler.timesteps)
    assert list(sd1.mine.scheduler.timesteps) == list(sd1.ref.scheduler.timesteps)
    assert max_diff(a.images, b.images) < TOL
    ref_i2i, mine_i2i = sd1.img2img()
    c, d = sd1.run_both(ref_i2i, mine_i2i, prompt=PROMPT, image=a.images, strength=0.6, num_inference_steps=4)
    assert max_diff(c.images, d.images) < TOL
    e, f = sd1.run_both(prompt=PROMPT)  # (the img2img constructor's config fix-up may change the scheduler)
    again = sd1.mine(PROMPT, num_inference_steps=3, output_type="np", generator=gen(0)).images
    assert max_diff(e.images, f.images) < TOL and max_diff(again, f.images) == 0.0


@pytest.mark.parametrize("name", ["PNDMScheduler", "EulerDiscreteScheduler", "HeunDiscreteScheduler",
                                  "KDPM2DiscreteScheduler", "DPMSolverMultistepScheduler"])
def test_deprecated_callback_fires_where_diffusers_does(sd1, name):
    sd1.set_scheduler(name)
    ref_i2i, mine_i2i = sd1.img2img()
    for every in (1, 2):
        calls = {}

        def record(lib):
            return lambda step, t, latents: calls.setdefault(lib, []).append((step, float(t), latents.shape))

        for pipe, lib in ((sd1.ref, "diffusers"), (sd1.mine, "impasto"), (ref_i2i, "diffusers i2i"),
                          (mine_i2i, "impasto i2i")):
            extra = dict(image=torch.zeros(1, 3, 32, 32), strength=0.6) if "i2i" in lib else {}
            pipe(PROMPT, num_inference_steps=4, output_type="np", generator=gen(0), callback=record(lib),
                 callback_steps=every, **extra)
        assert calls["impasto"] == calls["diffusers"] and calls["impasto i2i"] == calls["diffusers i2i"], calls


@pytest.mark.parametrize("name,eta", [("DDIMScheduler", 0.0), ("DDIMScheduler", 0.7),
                                      ("EulerAncestralDiscreteScheduler", 0.0), ("DPMSolverMultistepScheduler", 0.0)])
def test_sd2_v_prediction_linear_proj(sd2, name, eta):
    """SD2-like: v-prediction, linear proj_in, per-level heads, upcast attention, 3-block VAE (f=4), pad "!"."""
    sd2.set_scheduler(name)
    a, b = sd2.run_both(prompt=[PROMPT, "green"], negative_prompt=["blurry", "dark"], eta=eta, guidance_scale=5.0)
    assert max_diff(a.images, b.images) < TOL


def test_ancestral_reproducible_from_generator(sd1):
    sd1.set_scheduler("EulerAncestralDiscreteScheduler")
    one = sd1.mine(PROMPT, num_inference_steps=3, output_type="np", generator=gen(5)).images
    two = sd1.mine(PROMPT, num_inference_steps=3, output_type="np", generator=gen(5)).images
    other = sd1.mine(PROMPT, num_inference_steps=3, output_type="np", generator=gen(6)).images
    assert max_diff(one, two) == 0.0 and max_diff(one, other) > 1e-3


@pytest.mark.parametrize("case", [
    dict(guidance_scale=1.0),  # no CFG
    dict(negative_prompt="ugly, blurry"),
    dict(prompt=["one", "two two"], negative_prompt=["a", "b"], num_images_per_prompt=2, n_generators=4),
    dict(num_images_per_prompt=3),
    dict(guidance_rescale=0.7),
    dict(height=24, width=40),
    dict(timesteps=[999, 600, 250, 50]),
    dict(sigmas=[14.6, 4.0, 1.2, 0.3]),
])
def test_call_options_match_diffusers(sd1, case):
    sd1.set_scheduler("EulerDiscreteScheduler")
    case = {"prompt": PROMPT, **case}
    a, b = sd1.run_both(**case)
    assert max_diff(a.images, b.images) < TOL


def test_given_latents_and_output_types(sd1):
    sd1.set_scheduler("DDIMScheduler")
    latents = torch.randn(1, 4, 16, 16, generator=gen(3))
    a, b = sd1.run_both(prompt=PROMPT, latents=latents, output_type="pt")
    assert b.images.shape == (1, 3, 32, 32) and max_diff(a.images, b.images) < TOL
    a, b = sd1.run_both(prompt=PROMPT, latents=latents, output_type="latent")
    assert b.images.shape == (1, 4, 16, 16) and max_diff(a.images, b.images) < 1e-4
    out = sd1.mine(PROMPT, num_inference_steps=2, generator=gen(0))
    assert out.images[0].size == (32, 32) and out.nsfw_content_detected is None
    images, nsfw = sd1.mine(PROMPT, num_inference_steps=2, output_type="np", return_dict=False)
    assert images.shape == (1, 32, 32, 3) and nsfw is None


def test_clip_skip_matches_hand_computed_reference(sd1):
    """diffusers' own clip_skip path breaks with transformers 5, so the reference embeds are computed by hand."""
    sd1.set_scheduler("DDIMScheduler")
    te, tok = sd1.ref.text_encoder, sd1.ref.tokenizer
    ids = tok([PROMPT], padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    neg_ids = tok(["bad"], padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        hidden = te(ids, output_hidden_states=True).hidden_states[-3]
        pos = getattr(te, "text_model", te).final_layer_norm(hidden)
        neg = te(neg_ids)[0]  # negatives ignore clip_skip (diffusers' behaviour)
    a = sd1.ref(prompt_embeds=pos, negative_prompt_embeds=neg, num_inference_steps=3, output_type="np",
                generator=gen(0)).images
    b = sd1.mine(PROMPT, negative_prompt="bad", clip_skip=2, num_inference_steps=3, output_type="np",
                 generator=gen(0)).images
    assert max_diff(a, b) < TOL
    plain = sd1.mine(PROMPT, negative_prompt="bad", num_inference_steps=3, output_type="np", generator=gen(0)).images
    assert max_diff(plain, b) > 1e-3


def test_prompt_embeds_equal_prompt(sd1):
    sd1.set_scheduler("DDIMScheduler")
    pos, neg = sd1.mine.encode_prompt([PROMPT], "cpu", 1, True, ["bad"])
    ref_pos, ref_neg = sd1.ref.encode_prompt([PROMPT], "cpu", 1, True, ["bad"])
    assert max_diff(pos, ref_pos) < 1e-4 and max_diff(neg, ref_neg) < 1e-4
    a = sd1.mine(prompt_embeds=pos, negative_prompt_embeds=neg, num_inference_steps=2, output_type="np",
                 generator=gen(0)).images
    b = sd1.mine(PROMPT, negative_prompt="bad", num_inference_steps=2, output_type="np", generator=gen(0)).images
    assert max_diff(a, b) < 1e-5


def test_callback_on_step_end(sd1):
    from diffusers.callbacks import SDCFGCutoffCallback

    sd1.set_scheduler("EulerDiscreteScheduler")
    seen = {}

    def damp(pipe, i, t, kw):
        seen.setdefault(type(pipe).__module__.split(".")[0], []).append(i)
        return {"latents": kw["latents"] * 0.9} if i == 1 else {}

    a, b = sd1.run_both(prompt=PROMPT, num_inference_steps=4, callback_on_step_end=damp)
    assert seen == {"diffusers": [0, 1, 2, 3], "impasto": [0, 1, 2, 3]}
    assert max_diff(a.images, b.images) < TOL
    a, b = sd1.run_both(prompt=PROMPT, num_inference_steps=4,
                        callback_on_step_end=SDCFGCutoffCallback(cutoff_step_ratio=0.5))
    assert max_diff(a.images, b.images) < TOL

    def stop(pipe, i, t, kw):
        pipe._interrupt = i == 1
        return {}

    a, b = sd1.run_both(prompt=PROMPT, num_inference_steps=4, callback_on_step_end=stop)
    assert max_diff(a.images, b.images) < TOL


def test_lcm_unet_guidance_embedding(tmp_path):
    pair = Pair(tmp_path, "sd1-lcm")
    a, b = pair.run_both(prompt=PROMPT, num_inference_steps=2, guidance_scale=4.0)
    assert max_diff(a.images, b.images) < TOL


def test_long_prompt_truncate_warns_and_chunk_mode(sd1, caplog):
    long = " ".join(["tree"] * 90)
    with caplog.at_level("WARNING", logger="impasto"):
        pos, _ = sd1.mine.encode_prompt(long, "cpu", 1, False)
    assert pos.shape == (1, 77, 32)
    assert any("truncated" in r.message for r in caplog.records)
    chunks, neg = sd1.mine.encode_prompt(long, "cpu", 2, True, long_prompt="chunk")
    assert chunks.shape == (2, 154, 32) and neg.shape == (2, 154, 32)
    # each chunk is an ordinary 77-token encoding of its 75 tokens
    te, tok = sd1.ref.text_encoder, sd1.ref.tokenizer
    body = tok(long, add_special_tokens=False).input_ids
    rows = []
    for piece in (body[:75], body[75:]):
        rows.append([tok.bos_token_id, *piece, tok.eos_token_id] + [tok.pad_token_id] * (75 - len(piece)))
    with torch.no_grad():
        ref = te(torch.tensor(rows))[0].reshape(1, 154, 32)
    assert max_diff(chunks[:1], ref) < 1e-4
    short_chunk, _ = sd1.mine.encode_prompt(PROMPT, "cpu", 1, False, long_prompt="chunk")
    short, _ = sd1.mine.encode_prompt(PROMPT, "cpu", 1, False)
    assert max_diff(short_chunk, short) < 1e-6
    image = sd1.mine(long, long_prompt="chunk", num_inference_steps=2, output_type="np").images
    assert image.shape == (1, 32, 32, 3)


def test_safety_checker_from_folder(tmp_path):
    pair = Pair(tmp_path, "sd1-safety")
    assert pair.mine.feature_extractor is not None
    a, b = pair.run_both(prompt=[PROMPT, "x"], num_inference_steps=2)
    assert a.nsfw_content_detected == b.nsfw_content_detected
    assert max_diff(a.images, b.images) < TOL
    with torch.no_grad():  # thresholds that flag every image: both pipelines black them out
        for checker in (pair.ref.safety_checker, pair.mine.safety_checker):
            checker.concept_embeds_weights.fill_(-2.0)
    a, b = pair.run_both(prompt=[PROMPT, "x"], num_inference_steps=2, n_generators=2)
    assert a.nsfw_content_detected == b.nsfw_content_detected == [True, True]
    assert max_diff(a.images, b.images) < TOL and b.images.max() == 0.0


def test_safety_modes_blackout_and_flag(sd1):
    class FlagAll(torch.nn.Module):
        def forward(self, clip_input, images):
            images[:] = 0
            return images, [True] * len(images)

    import impasto

    fe = impasto.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size=32)
    pipe = impasto.StableDiffusionPipeline(**{**sd1.mine.components, "safety_checker": FlagAll(),
                                              "feature_extractor": fe})
    pipe.set_progress_bar_config(disable=True)
    out = pipe(PROMPT, num_inference_steps=2, output_type="np")
    assert out.nsfw_content_detected == [True] and out.images.max() == 0.0
    pipe.safety_mode = "flag"
    out = pipe(PROMPT, num_inference_steps=2, output_type="np")
    assert out.nsfw_content_detected == [True] and out.images.max() > 0.1


def test_components_roundtrip_other_pipeline(sd1):
    import impasto

    i2i = impasto.StableDiffusionImg2ImgPipeline(**sd1.mine.components)
    assert i2i.unet is sd1.mine.unet and i2i.scheduler is sd1.mine.scheduler
    assert tiny.VOCAB_SIZE == len(sd1.mine.tokenizer)
