"""Tiny seeded-random Stable Diffusion pipelines for tests, built with diffusers/transformers (the oracle).

    make_sd_components(variant="sd1", seed=0) -> dict of diffusers/transformers objects (pipeline kwargs)
    make_sd_pipeline(variant="sd1", seed=0)   -> the diffusers pipeline (StableDiffusionPipeline or SDXL)
    make_sd_folder(tmp_path, variant="sd1", seed=0) -> Path of a folder in the diffusers layout
    tokenizer_dir(pad="<|endoftext|>")        -> Path of a CLIP tokenizer folder (real 49408-token vocabulary)

Variants (several UNet / VAE / text-encoder shapes):
    "sd1"        conv proj_in/out, 2-level UNet (32,64), VAE f=2, CLIP 32 wide x 5 layers quick_gelu, PNDM, eps
    "sd1-safety" "sd1" + a tiny StableDiffusionSafetyChecker and CLIPImageProcessor (as SD 1.x repos)
    "sd2"        linear proj, heads (2,4), upcast_attention, VAE f=4 (3 blocks), CLIP 3 layers gelu, pad "!",
                 DDIM v_prediction, sample_size 8 latents
    "sd1-lcm"    "sd1" with time_cond_proj_dim=32 and an LCMScheduler
    "sd-inpaint" "sd1" with in_channels=9
    "sdxl"       two text encoders (CLIP-L-like + WithProjection), text_time UNet, Euler, force_upcast VAE
All models are built under torch.manual_seed(seed) (re-seeded before each component), in float32.
"""
from __future__ import annotations

import functools
import gzip
import json
import shutil
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
BPE = REPO / "impasto" / "data" / "bpe_simple_vocab_16e6.txt.gz"
VARIANTS = ("sd1", "sd1-safety", "sd2", "sd1-lcm", "sd-inpaint", "sdxl")
VOCAB_SIZE = 49408


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte stand-ins in CLIP's order (printable bytes first), so ids equal the real CLIP vocabulary."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    out = {b: chr(b) for b in keep}
    extra = 0
    for b in range(256):
        if b not in keep:
            out[b] = chr(256 + extra)
            extra += 1
    return out


@functools.lru_cache(maxsize=None)
def tokenizer_dir(pad: str = "<|endoftext|>") -> Path:
    """A CLIP tokenizer folder as in SD repos: vocab.json, merges.txt, tokenizer_config.json, special_tokens_map.json."""
    out = Path(tempfile.mkdtemp(prefix="impasto-tok-"))
    lines = gzip.open(BPE).read().decode("utf-8").split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]
    base = list(_bytes_to_unicode().values())
    vocab = base + [b + "</w>" for b in base] + ["".join(m.split()) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == VOCAB_SIZE
    (out / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False))
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "pad_token": pad}
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    cfg = dict(special, model_max_length=77, do_lower_case=True, errors="replace", add_prefix_space=False,
               tokenizer_class="CLIPTokenizer")
    (out / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2))
    return out


def make_tokenizer(pad: str = "<|endoftext|>"):
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(tokenizer_dir(pad)))


def _text_encoder(seed, *, hidden=32, layers=5, heads=4, inter=37, act="quick_gelu", projection=None, pad_id=1):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    cfg = CLIPTextConfig(bos_token_id=0, eos_token_id=2, pad_token_id=pad_id, hidden_size=hidden, intermediate_size=inter,
                         layer_norm_eps=1e-5, num_attention_heads=heads, num_hidden_layers=layers, vocab_size=VOCAB_SIZE,
                         hidden_act=act, max_position_embeddings=77, projection_dim=projection or hidden)
    model = CLIPTextModelWithProjection(cfg) if projection else CLIPTextModel(cfg)
    return model.eval()


def _vae(seed, channels=(32, 64), force_upcast=True, scaling_factor=0.18215):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    n = len(channels)
    return AutoencoderKL(block_out_channels=list(channels), in_channels=3, out_channels=3,
                         down_block_types=["DownEncoderBlock2D"] * n, up_block_types=["UpDecoderBlock2D"] * n,
                         latent_channels=4, sample_size=32, norm_num_groups=32, force_upcast=force_upcast,
                         scaling_factor=scaling_factor).eval()


def _unet(seed, **kw):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    args = dict(block_out_channels=(32, 64), layers_per_block=1, sample_size=16, in_channels=4, out_channels=4,
                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                cross_attention_dim=32, attention_head_dim=8)
    args.update(kw)
    return UNet2DConditionModel(**args).eval()


def _safety(seed):
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor

    torch.manual_seed(seed)
    cfg = CLIPConfig(text_config=dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                                      vocab_size=VOCAB_SIZE),
                     vision_config=dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                                        image_size=32, patch_size=8),
                     projection_dim=16)
    checker = StableDiffusionSafetyChecker(cfg).eval()
    fe = CLIPImageProcessor(crop_size={"height": 32, "width": 32}, size={"shortest_edge": 32}, do_center_crop=True,
                            do_normalize=True, do_resize=True, resample=3, do_rescale=True, do_convert_rgb=True,
                            image_mean=[0.48145466, 0.4578275, 0.40821073], image_std=[0.26862954, 0.26130258, 0.27577711])
    return checker, fe


def _sd_scheduler(kind="pndm", **kw):
    import diffusers

    common = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)
    if kind == "pndm":
        return diffusers.PNDMScheduler(skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False, **common, **kw)
    if kind == "ddim":
        return diffusers.DDIMScheduler(clip_sample=False, set_alpha_to_one=False, steps_offset=1, **common, **kw)
    if kind == "lcm":
        return diffusers.LCMScheduler(steps_offset=1, **common, **kw)
    if kind == "euler":
        return diffusers.EulerDiscreteScheduler(steps_offset=1, timestep_spacing="leading", **common, **kw)
    raise ValueError(kind)


def make_sd_components(variant: str = "sd1", seed: int = 0) -> dict:
    """Pipeline keyword arguments (diffusers / transformers objects) for one tiny variant."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if variant == "sdxl":
        return _sdxl_components(seed)
    comps = dict(safety_checker=None, feature_extractor=None, image_encoder=None)
    if variant == "sd2":
        comps.update(
            unet=_unet(seed, sample_size=8, use_linear_projection=True, attention_head_dim=(2, 4), upcast_attention=True,
                       layers_per_block=2),
            vae=_vae(seed, channels=(32, 32, 64)),
            text_encoder=_text_encoder(seed, layers=3, act="gelu", heads=2),
            tokenizer=make_tokenizer("!"),
            scheduler=_sd_scheduler("ddim", prediction_type="v_prediction"),
        )
        return comps
    unet_kw = {}
    if variant == "sd1-lcm":
        unet_kw["time_cond_proj_dim"] = 32
    if variant == "sd-inpaint":
        unet_kw["in_channels"] = 9
    comps.update(unet=_unet(seed, **unet_kw), vae=_vae(seed), text_encoder=_text_encoder(seed), tokenizer=make_tokenizer(),
                 scheduler=_sd_scheduler("lcm" if variant == "sd1-lcm" else "pndm"))
    if variant == "sd1-safety":
        comps["safety_checker"], comps["feature_extractor"] = _safety(seed)
    return comps


def _sdxl_components(seed: int) -> dict:
    unet = _unet(seed, sample_size=16, use_linear_projection=True, attention_head_dim=(2, 4), layers_per_block=1,
                 addition_embed_type="text_time", addition_time_embed_dim=8, transformer_layers_per_block=(1, 2),
                 projection_class_embeddings_input_dim=80, cross_attention_dim=64)
    return dict(
        unet=unet,
        vae=_vae(seed, scaling_factor=0.13025),
        text_encoder=_text_encoder(seed, hidden=32, layers=3, act="gelu"),
        text_encoder_2=_text_encoder(seed, hidden=32, layers=3, act="gelu", projection=32),
        tokenizer=make_tokenizer(),
        tokenizer_2=make_tokenizer("!"),
        scheduler=_sd_scheduler("euler", interpolation_type="linear", prediction_type="epsilon"),
        image_encoder=None,
        feature_extractor=None,
    )


def make_sd_pipeline(variant: str = "sd1", seed: int = 0, img2img: bool = False):
    import diffusers

    comps = make_sd_components(variant, seed)
    if variant == "sdxl":
        cls = diffusers.StableDiffusionXLImg2ImgPipeline if img2img else diffusers.StableDiffusionXLPipeline
    elif variant == "sd-inpaint":
        cls = diffusers.StableDiffusionInpaintPipeline
    else:
        cls = diffusers.StableDiffusionImg2ImgPipeline if img2img else diffusers.StableDiffusionPipeline
    kwargs = {} if variant == "sdxl" else {"requires_safety_checker": variant == "sd1-safety"}
    pipe = cls(**comps, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_folder(pipe, path) -> Path:
    """save_pretrained, then make tokenizer folders look like the SD repos' (vocab.json + merges.txt present)."""
    path = Path(path)
    pipe.save_pretrained(str(path), safe_serialization=True)
    for name in ("tokenizer", "tokenizer_2"):
        tok = getattr(pipe, name, None)
        if tok is None:
            continue
        src = tokenizer_dir(tok.pad_token)
        for f in ("vocab.json", "merges.txt", "special_tokens_map.json"):
            if not (path / name / f).exists():
                shutil.copy(src / f, path / name / f)
    # transformers without torchvision records "CLIPImageProcessorPil"; the SD repos say "CLIPImageProcessor"
    for f in (path / "model_index.json", path / "feature_extractor" / "preprocessor_config.json"):
        if f.exists():
            f.write_text(f.read_text().replace("CLIPImageProcessorPil", "CLIPImageProcessor"))
    return path


def make_sd_folder(tmp_path, variant: str = "sd1", seed: int = 0, name: str | None = None) -> Path:
    """Build the tiny diffusers pipeline and save it under tmp_path/<name or variant>; returns that folder."""
    return save_folder(make_sd_pipeline(variant, seed), Path(tmp_path) / (name or variant))


# ---- SDXL refiner and SDXL inpainting variants (added for the SDXL / inpainting tests) ----------------------
def make_sdxl_refiner_components(seed: int = 0) -> dict:
    """A tiny SDXL refiner: no first text encoder/tokenizer, one 32-wide projected tower, a text_time UNet whose
    added embedding takes 5 time ids (aesthetic score) + the 32-dim pooled embedding."""
    unet = _unet(seed, sample_size=16, use_linear_projection=True, attention_head_dim=(2, 4), layers_per_block=1,
                 addition_embed_type="text_time", addition_time_embed_dim=8, transformer_layers_per_block=(1, 2),
                 projection_class_embeddings_input_dim=72, cross_attention_dim=32)
    return dict(
        unet=unet,
        vae=_vae(seed, scaling_factor=0.13025),
        text_encoder=None,
        tokenizer=None,
        text_encoder_2=_text_encoder(seed + 1, hidden=32, layers=3, act="gelu", projection=32),
        tokenizer_2=make_tokenizer("!"),
        scheduler=_sd_scheduler("euler", interpolation_type="linear", prediction_type="epsilon"),
        image_encoder=None,
        feature_extractor=None,
    )


def make_sdxl_refiner_pipeline(seed: int = 0):
    """diffusers' StableDiffusionXLImg2ImgPipeline as the refiner (requires_aesthetics_score=True,
    force_zeros_for_empty_prompt=False, as stabilityai/stable-diffusion-xl-refiner-1.0)."""
    import diffusers

    pipe = diffusers.StableDiffusionXLImg2ImgPipeline(**make_sdxl_refiner_components(seed),
                                                      requires_aesthetics_score=True,
                                                      force_zeros_for_empty_prompt=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def make_sdxl_inpaint_pipeline(seed: int = 0, in_channels: int = 9):
    """diffusers' StableDiffusionXLInpaintPipeline on the "sdxl" components, with a 9-channel (inpainting) or
    4-channel (regular) UNet."""
    import diffusers

    comps = _sdxl_components(seed)
    if in_channels != 4:
        comps["unet"] = _unet(seed, sample_size=16, use_linear_projection=True, attention_head_dim=(2, 4),
                              layers_per_block=1, addition_embed_type="text_time", addition_time_embed_dim=8,
                              transformer_layers_per_block=(1, 2), projection_class_embeddings_input_dim=80,
                              cross_attention_dim=64, in_channels=in_channels)
    pipe = diffusers.StableDiffusionXLInpaintPipeline(**comps)
    pipe.set_progress_bar_config(disable=True)
    return pipe
