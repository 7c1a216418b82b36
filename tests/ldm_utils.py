"""Tiny seeded-random Latent Diffusion components for tests, built with diffusers/transformers (the oracle).

    write_vocab(folder, lower=True, strip_accents=None) -> folder holding a BERT tokenizer (vocab.txt + configs)
    varied_strings(n, seed)                      -> n strings mixing words, case, accents, CJK, punctuation, specials
    make_ldm_bert(seed)                          -> diffusers' LDMBertModel (d_model 32, 2 layers)
    make_text2img_components(vae="vq"|"kl", seed) -> dict(vqvae, bert, tokenizer, unet, scheduler) (diffusers objects)
    make_superres_components(seed)               -> dict(vqvae, unet, scheduler) (diffusers objects)
    save_pipeline(cls, components, folder)      -> folder in the diffusers layout (model_index.json + subfolders)

The text-to-image VAEs have four levels (factor 8), so diffusers' hard-coded `height // 8` latent size and the
VAE factor agree. Every component is built right after `torch.manual_seed(seed)`.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

import torch

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = ("a the an of on in with and painting photo squirrel eating burger cat dog house river mountain sky "
         "blue red green golden tiny huge old new portrait city night light dark forest tree flower garden "
         "astronaut riding horse moon sun star ocean wave café naïve über straße 東京 夜 猫").split()
PIECES = ("s ing ed er est ly tion ness able ful y es al ic ous ment ize").split()
PUNCT = list(".,!?;:'\"()[]{}-_/\\@#$%^&*+=<>~`|")


def vocab_tokens() -> list[str]:
    chars = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [chr(c) for c in range(ord("A"), ord("Z") + 1)]
    chars += list("0123456789") + PUNCT + list("éèêàçñöüïß東京夜猫")
    words = WORDS + [w.capitalize() for w in WORDS[:10]]
    tokens = SPECIALS + chars + ["##" + c for c in chars if c.isalnum()] + words + ["##" + p for p in PIECES]
    seen, out = set(), []
    for t in tokens:
        if t not in seen:
            seen.add(t)
            out.append(t)
    return out


def write_vocab(folder, lower: bool = True, strip_accents=None, model_max_length: int = 77) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(vocab_tokens()) + "\n", encoding="utf-8")
    specials = {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]",
                "mask_token": "[MASK]"}
    (folder / "special_tokens_map.json").write_text(json.dumps(specials))
    config = dict(specials, do_lower_case=lower, model_max_length=model_max_length, tokenizer_class="BertTokenizer")
    if strip_accents is not None:
        config["strip_accents"] = strip_accents
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


def varied_strings(n: int = 200, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    fixed = ["", " ", "a", "A painting of a squirrel eating a burger", "[CLS] [MASK] the [SEP]", "[mask] lower",
             "Café NAÏVE Über", "東京の夜", "tabs\tand\nnewlines\r\n", "zero\u200bwidth\u00a0nbsp", "ctrl\x00\x07chars",
             "emoji 🐿️ here", "x" * 120, "paintings photoless housefulness", "3.14159, 42!", "a" * 300]
    out = list(fixed)
    pool = WORDS + [p for p in PUNCT] + ["[MASK]", "[SEP]", "🍔", "Ωmega", "ümlaut", "ÀÉÎ", "12", "x9"]
    while len(out) < n:
        k = rng.randint(1, 30)
        parts = []
        for _ in range(k):
            w = rng.choice(pool)
            r = rng.random()
            if r < 0.15:
                w = w.upper()
            elif r < 0.3:
                w = w + rng.choice(PIECES)
            parts.append(w)
        sep = rng.choice([" ", "  ", "", " \t"])
        out.append(sep.join(parts))
    return out


def make_ldm_bert(seed: int = 0, vocab_size: int | None = None, layers: int = 2):
    from diffusers.pipelines.latent_diffusion.pipeline_latent_diffusion import LDMBertConfig, LDMBertModel

    torch.manual_seed(seed)
    cfg = LDMBertConfig(vocab_size=vocab_size or len(vocab_tokens()), max_position_embeddings=77,
                        encoder_layers=layers, encoder_ffn_dim=37, encoder_attention_heads=4, head_dim=8, d_model=32)
    return LDMBertModel(cfg).eval()


def _ddim():
    from diffusers import DDIMScheduler

    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                         set_alpha_to_one=False)


def make_text2img_components(vae: str = "vq", seed: int = 0, tokenizer_folder=None) -> dict:
    from diffusers import AutoencoderKL, UNet2DConditionModel, VQModel
    from transformers import BertTokenizer

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(block_out_channels=(32, 64), layers_per_block=1, sample_size=8, in_channels=4,
                                out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
                                attention_head_dim=8, norm_num_groups=8)
    torch.manual_seed(seed)
    blocks = dict(block_out_channels=(8, 8, 16, 16), in_channels=3, out_channels=3, latent_channels=4,
                  layers_per_block=1, norm_num_groups=8, sample_size=64)
    if vae == "vq":
        vqvae = VQModel(down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        num_vq_embeddings=64, **blocks)
    elif vae == "kl":
        vqvae = AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                              scaling_factor=0.18215, **blocks)
    else:
        raise ValueError(vae)
    bert = make_ldm_bert(seed)
    if tokenizer_folder is None:
        import tempfile

        tokenizer_folder = write_vocab(tempfile.mkdtemp(prefix="impasto-bert-"))
    tokenizer = BertTokenizer.from_pretrained(str(tokenizer_folder))
    return dict(vqvae=vqvae.eval(), bert=bert, tokenizer=tokenizer, unet=unet.eval(), scheduler=_ddim())


def make_superres_components(seed: int = 0) -> dict:
    from diffusers import DDIMScheduler, UNet2DModel, VQModel

    torch.manual_seed(seed)
    unet = UNet2DModel(block_out_channels=(16, 32), layers_per_block=1, sample_size=16, in_channels=6, out_channels=3,
                       down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                       norm_num_groups=8, attention_head_dim=8)
    torch.manual_seed(seed)
    vqvae = VQModel(block_out_channels=(8, 16, 16), in_channels=3, out_channels=3, latent_channels=3,
                    down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                    layers_per_block=1, norm_num_groups=8, num_vq_embeddings=64)
    return dict(vqvae=vqvae.eval(), unet=unet.eval(), scheduler=DDIMScheduler())


def save_pipeline(pipeline_cls, components: dict, folder) -> Path:
    folder = Path(folder)
    pipeline_cls(**components).save_pretrained(str(folder))
    return folder

