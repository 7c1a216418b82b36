"""Train the built-in shapes model: AutoencoderKL, then UNet2DConditionModel + CLIPTextModel jointly.

The VAE's encoder is built by hand (`vae_init.construct_vae`: latents are the image average-pooled 4x); a fixed
pool of world images is rendered and encoded once (latent mean and log-variance) and the VAE's
`scaling_factor` set to 1/std of the latents. Two stages then train independently of each other (so they can
run side by side, `stage="vae"` / `stage="unet"`): the decoder, from its random init, learns to draw the
crisp 64x64 image back from the pooled latent (a nearest-neighbour upsample, the construction's own decoder,
turns small circles into blocky crosses the analyser cannot tell from squares); the UNet and the text
encoder learn the v-prediction objective with AdamW, caption dropout (empty captions, for classifier-free
guidance) and an EMA of the weights. Everything is drawn from generators seeded by `seed`,
so a run is reproducible on the same device and thread count; checkpoints are written every
`checkpoint_every` steps and a rerun with the same `out` resumes from the last one.
"""
from __future__ import annotations

import json
import logging
import os
import random
import shutil
import time

import numpy as np
import torch
from tqdm.auto import tqdm

from . import bpe, world
from ..core.schedule import alphas_cumprod, make_betas
from .vae_init import construct_vae

logger = logging.getLogger("impasto")

MAX_LENGTH = 32  # longest world caption: 15 tokens; keeps text encoder and cross-attention cheap

VAE_CONFIG = dict(
    in_channels=3, out_channels=3, latent_channels=4, sample_size=64, layers_per_block=1,
    down_block_types=["DownEncoderBlock2D"] * 3, up_block_types=["UpDecoderBlock2D"] * 3,
    block_out_channels=[32, 32, 32], norm_num_groups=16, act_fn="silu", scaling_factor=1.0,
)
UNET_CONFIG = dict(
    sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=[32, 64, 128],
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    cross_attention_dim=64, attention_head_dim=4, norm_num_groups=8,
)
TEXT_CONFIG = dict(
    architectures=["CLIPTextModel"], model_type="clip_text_model", hidden_size=64, intermediate_size=128,
    num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=MAX_LENGTH, hidden_act="quick_gelu",
    layer_norm_eps=1e-5, projection_dim=64, torch_dtype="float32",
)
NOISE_CONFIG = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
SCHEDULER_CONFIG = dict(
    _class_name="DPMSolverMultistepScheduler", **NOISE_CONFIG, prediction_type="v_prediction",
    algorithm_type="dpmsolver++", solver_order=2, timestep_spacing="linspace", steps_offset=1,
    lower_order_final=True, use_karras_sigmas=False,
)
DEFAULT_INFERENCE_STEPS = 20
DECODER_LATENT_NOISE = 0.1  # the decoder learns from latents off by up to this much (unscaled), as a UNet draws them


def unet_config(channels=None) -> dict:
    """UNET_CONFIG (the shipped model's) or one with other block_out_channels, e.g. (16, 32, 64); GroupNorm
    groups of 4 channels."""
    if channels is None:
        return dict(UNET_CONFIG)
    channels = [int(c) for c in channels]
    if len(channels) != 3 or any(c < 4 or c % 4 for c in channels):
        raise ValueError(f"unet_channels: expected three multiples of 4, got {channels}")
    return dict(UNET_CONFIG, block_out_channels=channels, norm_num_groups=channels[0] // 4)


def impasto_factory(kind: str, config: dict):
    """Build an untrained model with impasto's classes (kind: vae | unet | text_encoder)."""
    from ..models.autoencoder_kl import AutoencoderKL
    from ..models.clip_text import CLIPTextModel
    from ..models.unet_2d_condition import UNet2DConditionModel

    cls = {"vae": AutoencoderKL, "unet": UNet2DConditionModel, "text_encoder": CLIPTextModel}[kind]
    model = cls.from_config(config)
    if any(p.is_meta for p in model.parameters()):
        raise ValueError(f"factory built {kind} on the meta device; expected real, initialised weights")
    return model


def text_config(vocab: dict) -> dict:
    eos = vocab[bpe.EOS]
    return dict(TEXT_CONFIG, vocab_size=len(vocab), bos_token_id=vocab[bpe.BOS], eos_token_id=eos, pad_token_id=eos)


def encode_captions(vocab: dict, captions, length: int = MAX_LENGTH) -> torch.Tensor:
    """Token ids as a CLIP tokenizer gives them for world captions (every world word is one token)."""
    bos, eos = vocab[bpe.BOS], vocab[bpe.EOS]
    rows = []
    for caption in captions:
        words = caption.lower().split()
        missing = [w for w in words if w + "</w>" not in vocab]
        if missing:
            raise ValueError(f"captions: words {missing} are not in the shapes vocabulary")
        ids = [bos] + [vocab[w + "</w>"] for w in words][: length - 2] + [eos]
        rows.append(ids + [eos] * (length - len(ids)))
    return torch.tensor(rows, dtype=torch.long)


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (n, h, w, 3) -> float (n, 3, h, w) in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def posterior(vae, x: torch.Tensor):
    dist = vae.encode(x).latent_dist
    return dist.mean, dist.logvar


class EMA:
    """Exponential moving average of a module's parameters (`state`: a full state dict), with the usual
    warm-up of the decay."""

    def __init__(self, module, decay: float = 0.999):
        self.state = {k: v.detach().clone() for k, v in module.state_dict().items()}
        self.decay = decay

    @torch.no_grad()
    def update(self, module, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))
        names, params = zip(*module.named_parameters())
        torch._foreach_lerp_([self.state[n] for n in names], [p.detach() for p in params], 1 - decay)


def save_checkpoint(path: str, state: dict) -> None:
    tmp = path + ".tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)


def optimiser_step(opt, loss, params, lr: float, step: int, warmup: int) -> None:
    """Backward, clip to norm 1, one step at the warmed-up learning rate."""
    for group in opt.param_groups:
        group["lr"] = lr * min(1.0, (step + 1) / warmup)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()


def report(bar, stage: str, step: int, loss, start: int, started: float) -> None:
    if (step + 1) % 50 == 0:
        bar.set_postfix(loss=f"{loss.item():.4f}")
    if (step + 1) % 500 == 0:
        logger.info("%s step %d loss %.4f (%.1f steps/s)", stage, step + 1, loss.item(),
                    (step + 1 - start) / (time.time() - started))


@torch.no_grad()
def encode_pool(vae, seed: int, size: int, device: str, batch_size: int = 256):
    """Scenes of a fixed pool, their images (uint8, n x 64 x 64 x 3) and latent posteriors (mean, logvar),
    unscaled."""
    rng = random.Random(seed + 1)
    scenes = [world.sample_scene(rng) for _ in range(size)]
    images = np.stack([np.asarray(world.render(s)) for s in tqdm(scenes, desc="render pool")])
    means, logvars = [], []
    for i in range(0, size, batch_size):
        mean, logvar = posterior(vae, to_tensor(images[i:i + batch_size]).to(device))
        means.append(mean.cpu())
        logvars.append(logvar.cpu())
    return scenes, images, torch.cat(means), torch.cat(logvars)


def random_decoder(vae):
    """The decoder's (and post_quant_conv's) weights as the model was initialised, before construct_vae."""
    return {k: v.detach().clone() for k, v in vae.state_dict().items()
            if k.startswith(("decoder.", "post_quant_conv."))}


def train_decoder(vae, pool, seed: int, steps: int, batch_size: int, lr: float, ckpt_path: str,
                  checkpoint_every: int, device: str, ema_decay: float = 0.999):
    """Train the decoder (encoder frozen) to give back each pool image from its (noise-perturbed) latent;
    L1 + squared error on pixels in [-1, 1]. Returns the EMA decoder weights, loaded into `vae`."""
    _, images, means, _ = pool
    decoder = torch.nn.ModuleDict(dict(decoder=vae.decoder, post_quant_conv=vae.post_quant_conv))
    vae.requires_grad_(False)
    decoder.requires_grad_(True)
    params = list(decoder.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0, fused=str(device).startswith("cuda"))
    ema = EMA(decoder, ema_decay)
    gen = torch.Generator().manual_seed(seed + 4)
    start = 0
    if os.path.exists(ckpt_path):
        state = torch.load(ckpt_path, weights_only=False, map_location=device)
        decoder.load_state_dict(state["decoder"])
        ema.state = state["ema"]
        opt.load_state_dict(state["opt"])
        gen.set_state(state["gen"].cpu())
        start = state["step"]
        logger.info("resuming decoder training at step %d", start)
    warmup = min(100, steps // 10 + 1)
    decoder.train()
    started, bar = time.time(), tqdm(range(start, steps), desc="decoder", initial=start, total=steps)
    for step in bar:
        idx = torch.randint(0, len(means), (batch_size,), generator=gen)
        sigma = DECODER_LATENT_NOISE * torch.rand(batch_size, 1, 1, 1, generator=gen)
        mean = means[idx]
        latents = mean + sigma * torch.randn(mean.shape, generator=gen)
        target = to_tensor(images[idx.numpy()]).to(device)
        out = vae.decode(latents.to(device)).sample
        loss = (out - target).abs().mean() + ((out - target) ** 2).mean()
        optimiser_step(opt, loss, params, lr, step, warmup)
        ema.update(decoder, step)
        report(bar, "decoder", step, loss, start, started)
        if (step + 1) % checkpoint_every == 0 or step + 1 == steps:
            save_checkpoint(ckpt_path, dict(decoder=decoder.state_dict(), ema=ema.state, opt=opt.state_dict(),
                                            gen=gen.get_state(), step=step + 1))
    decoder.load_state_dict(ema.state)
    vae.requires_grad_(False)
    return vae.eval()


NOISY_ATTRIBUTES = ("shape", "colour", "position")


def fresh_caption(scene, rng: random.Random, noise: float = 0.0, attributes=NOISY_ATTRIBUTES) -> str:
    """A newly worded caption for a pool scene, naming each optional attribute with the world's odds; with
    `noise` > 0 each of `attributes` (of shape, colour, position) is named wrongly with that probability
    (`mislabel`)."""
    shape, colour, size, position, background = scene.shape, scene.colour, scene.size, scene.position, scene.background
    if noise > 0:
        shape, colour, size, position, background = mislabel(scene, rng, noise, attributes)
    return world.make_caption(shape, colour, size if rng.random() < 0.6 else None,
                              position if rng.random() < 0.75 else None,
                              background if rng.random() < 0.85 else None, rng)


def mislabel(scene, rng: random.Random, noise: float, attributes=NOISY_ATTRIBUTES):
    """(shape, colour, size, position, background) with each of `attributes` (of shape, colour, position)
    replaced, with probability `noise`, by another value of its kind (a wrong colour is never the background's):
    captions as unreliable about their subject as web alt-text, so the conditional model spreads its bets and
    classifier-free guidance has a real job. Size and background stay true (mislabelling the background
    too left guided images on the wrong background 20 % of the time)."""
    def maybe(name, value, options):
        if name not in attributes:
            return value
        return rng.choice([o for o in options if o != value]) if rng.random() < noise else value
    colour = maybe("colour", scene.colour, [c for c in sorted(world.COLOURS) if c != scene.background])
    return (maybe("shape", scene.shape, world.SHAPES), colour, scene.size,
            maybe("position", scene.position, list(world.POSITIONS)), scene.background)


TIMESTEP_SAMPLING = ("uniform", "logit-normal")


def draw_timesteps(kind: str, n: int, batch_size: int, gen) -> torch.Tensor:
    """Training timesteps: "uniform" over the n-step ladder, or "logit-normal" (t / n = sigmoid of a standard
    normal draw, as SD3 trains): most samples in the middle of the noise range, where a shape is decided,
    fewer at the ends (pure noise, where only colour and place are, and nearly clean latents)."""
    if kind == "uniform":
        return torch.randint(0, n, (batch_size,), generator=gen)
    return (torch.sigmoid(torch.randn(batch_size, generator=gen)) * n).long().clamp_(0, n - 1)


def train_denoiser(unet, text_encoder, vocab, pool, scaling: float, seed: int, steps: int, batch_size: int,
                   lr: float, ckpt_path: str, checkpoint_every: int, device: str, caption_dropout: float = 0.15,
                   ema_decay: float = 0.995, caption_noise: float = 0.0, noisy_attributes=NOISY_ATTRIBUTES,
                   timesteps: str = "uniform"):
    """Joint UNet + text encoder training on the latent pool; returns the EMA copies of both. `timesteps`:
    how training timesteps are drawn (`draw_timesteps`)."""
    scenes, _, means, logvars = pool
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01, fused=str(device).startswith("cuda"))
    ema_unet, ema_text = EMA(unet, ema_decay), EMA(text_encoder, ema_decay)
    gen = torch.Generator().manual_seed(seed + 2)
    caption_rng = random.Random(seed + 3)
    start = 0
    if os.path.exists(ckpt_path):
        state = torch.load(ckpt_path, weights_only=False, map_location=device)
        unet.load_state_dict(state["unet"])
        text_encoder.load_state_dict(state["text_encoder"])
        ema_unet.state = state["ema_unet"]
        ema_text.state = state["ema_text"]
        opt.load_state_dict(state["opt"])
        gen.set_state(state["gen"].cpu())
        caption_rng.setstate(state["caption_rng"])
        start = state["step"]
        logger.info("resuming UNet training at step %d", start)
    acp = alphas_cumprod(make_betas(**NOISE_CONFIG))  # the training ladder the shipped scheduler samples
    warmup = min(100, steps // 10 + 1)
    unet.train()
    text_encoder.train()
    started, bar = time.time(), tqdm(range(start, steps), desc="unet", initial=start, total=steps)
    for step in bar:
        idx = torch.randint(0, len(scenes), (batch_size,), generator=gen)
        mean, logvar = means[idx], logvars[idx]
        latents = (mean + torch.exp(0.5 * logvar) * torch.randn(mean.shape, generator=gen)) * scaling
        noise = torch.randn(latents.shape, generator=gen)
        t = draw_timesteps(timesteps, len(acp), batch_size, gen)
        drop = torch.rand(batch_size, generator=gen) < caption_dropout
        captions = ["" if d else fresh_caption(scenes[i], caption_rng, caption_noise, noisy_attributes)
                    for i, d in zip(idx.tolist(), drop.tolist())]
        ids = encode_captions(vocab, captions).to(device)
        a = acp[t].view(-1, 1, 1, 1)
        noisy = (a.sqrt() * latents + (1 - a).sqrt() * noise).to(device)
        hidden = text_encoder(ids)[0]
        pred = unet(noisy, t.to(device), encoder_hidden_states=hidden).sample
        target = a.sqrt() * noise - (1 - a).sqrt() * latents  # v: no 1/sqrt(alpha) blow-up of errors at high noise
        loss = ((pred - target.to(device)) ** 2).mean()
        optimiser_step(opt, loss, params, lr, step, warmup)
        ema_unet.update(unet, step)
        ema_text.update(text_encoder, step)
        report(bar, "unet", step, loss, start, started)
        if (step + 1) % checkpoint_every == 0 or step + 1 == steps:
            save_checkpoint(ckpt_path, dict(
                unet=unet.state_dict(), text_encoder=text_encoder.state_dict(), ema_unet=ema_unet.state,
                ema_text=ema_text.state, opt=opt.state_dict(), gen=gen.get_state(),
                caption_rng=caption_rng.getstate(), step=step + 1, scaling=scaling,
                unet_config=dict(unet.config)))
    unet.load_state_dict(ema_unet.state)
    text_encoder.load_state_dict(ema_text.state)
    return unet.eval(), text_encoder.eval()


def save_pipeline(out: str, vae, unet, text_encoder, tokenizer_dir: str) -> None:
    """Write the diffusers folder layout of a StableDiffusionPipeline (no safety checker)."""
    os.makedirs(out, exist_ok=True)
    index = {
        "_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.42.1",
        "vae": ["diffusers", "AutoencoderKL"], "unet": ["diffusers", "UNet2DConditionModel"],
        "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", SCHEDULER_CONFIG["_class_name"]],
        "safety_checker": [None, None], "feature_extractor": [None, None], "image_encoder": [None, None],
        "requires_safety_checker": False,
    }
    with open(os.path.join(out, "model_index.json"), "w") as f:
        json.dump(index, f, indent=2)
    vae.save_pretrained(os.path.join(out, "vae"))
    unet.save_pretrained(os.path.join(out, "unet"))
    text_encoder.save_pretrained(os.path.join(out, "text_encoder"))
    shutil.copytree(tokenizer_dir, os.path.join(out, "tokenizer"), dirs_exist_ok=True)
    os.makedirs(os.path.join(out, "scheduler"), exist_ok=True)
    with open(os.path.join(out, "scheduler", "scheduler_config.json"), "w") as f:
        json.dump(SCHEDULER_CONFIG, f, indent=2)


def train(out: str, steps: int = 2000, seed: int = 0, device: str = "cpu", batch_size: int = 24, lr: float = 1e-3,
          pool_size: int = 3072, checkpoint_every: int = 100, factory=impasto_factory, stage: str = "all",
          decoder_steps: int = 2000, decoder_batch_size: int = 32, decoder_lr: float = 5e-4, unet_channels=None,
          ema_decay: float = 0.995, init_from: str | None = None, caption_noise: float = 0.0,
          noisy_attributes=NOISY_ATTRIBUTES, caption_dropout: float = 0.15, timesteps: str = "uniform") -> str:
    """Train the model into `out` (checkpoints in out/checkpoints: vae.pt for the decoder, unet.pt for the UNet
    and text encoder); `stage` "vae" or "unet" trains one of them only. Returns the pipeline folder out/model
    (written when unet.pt exists) or, for stage "vae", the decoder checkpoint. `init_from`: a pipeline folder
    whose UNet and text encoder weights start the UNet stage (a continued run; the optimizer starts afresh; its
    decoder is exported unless out/checkpoints has one). `caption_noise`: probability that a training caption
    names the shape, the colour, the position wrongly (each on its own; `mislabel`); `noisy_attributes`: which of
    the three it may name wrongly; `caption_dropout`: probability that a caption is left empty (the unconditional
    branch that classifier-free guidance uses); `timesteps`: how training timesteps are drawn (`draw_timesteps`)."""
    for name, value in (("steps", steps), ("batch_size", batch_size), ("pool_size", pool_size),
                        ("checkpoint_every", checkpoint_every), ("decoder_steps", decoder_steps),
                        ("decoder_batch_size", decoder_batch_size)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    for name, value in (("lr", lr), ("decoder_lr", decoder_lr)):
        if not isinstance(value, (int, float)) or not 0 < value < 1:
            raise ValueError(f"{name} must be a learning rate in (0, 1), got {value!r}")
    if not 0.0 <= ema_decay < 1.0:
        raise ValueError(f"ema_decay must be in [0, 1), got {ema_decay!r}")
    if not 0.0 <= caption_noise < 1.0:
        raise ValueError(f"caption_noise must be in [0, 1), got {caption_noise!r}")
    if not 0.0 < caption_dropout < 1.0:
        raise ValueError(f"caption_dropout must be in (0, 1), got {caption_dropout!r}")
    if not noisy_attributes or any(a not in NOISY_ATTRIBUTES for a in noisy_attributes):
        raise ValueError(f"noisy_attributes: expected some of {NOISY_ATTRIBUTES}, got {noisy_attributes!r}")
    if timesteps not in TIMESTEP_SAMPLING:
        raise ValueError(f"timesteps must be one of {TIMESTEP_SAMPLING}, got {timesteps!r}")
    if stage not in ("all", "vae", "unet"):
        raise ValueError(f"stage must be 'all', 'vae' or 'unet', got {stage!r}")
    config = unet_config(unet_channels)
    torch.manual_seed(seed)
    started = time.time()
    ckpt_dir = os.path.join(out, "checkpoints")
    os.makedirs(ckpt_dir, exist_ok=True)
    vocab = bpe.write_tokenizer(os.path.join(ckpt_dir, "tokenizer"), world.vocabulary(), MAX_LENGTH)

    vae = factory("vae", VAE_CONFIG)
    initial_decoder = random_decoder(vae)
    construct_vae(vae)
    vae.load_state_dict(initial_decoder, strict=False)
    vae.to(device)
    vae.requires_grad_(False)
    pool = encode_pool(vae, seed, pool_size, device)
    std = float(pool[2].std())
    scaling = round(1.0 / std, 5)
    logger.info("latent std %.4f -> scaling_factor %.5f", std, scaling)

    if stage in ("all", "vae"):
        train_decoder(vae, pool, seed, decoder_steps, decoder_batch_size, decoder_lr, os.path.join(ckpt_dir, "vae.pt"),
                      checkpoint_every, device)
        logger.info("decoder trained (%.1f min)", (time.time() - started) / 60)
        if stage == "vae":
            return os.path.join(ckpt_dir, "vae.pt")
    torch.manual_seed(seed + 10)
    unet = factory("unet", config).to(device)
    text_encoder = factory("text_encoder", text_config(vocab)).to(device)
    if init_from and not os.path.exists(os.path.join(ckpt_dir, "unet.pt")):
        for name, model in (("unet", unet), ("text_encoder", text_encoder)):
            model.load_state_dict(type(model).from_pretrained(init_from, subfolder=name).state_dict())
        logger.info("UNet and text encoder start from %s", init_from)
        if stage == "unet" and not os.path.exists(os.path.join(ckpt_dir, "vae.pt")):
            decoder = type(vae).from_pretrained(init_from, subfolder="vae").state_dict()
            save_checkpoint(os.path.join(ckpt_dir, "vae.pt"), dict(ema=decoder))
    train_denoiser(unet, text_encoder, vocab, pool, scaling, seed, steps, batch_size, lr,
                   os.path.join(ckpt_dir, "unet.pt"), checkpoint_every, device, ema_decay=ema_decay,
                   caption_noise=caption_noise, noisy_attributes=tuple(noisy_attributes),
                   caption_dropout=caption_dropout, timesteps=timesteps)
    model_dir = export_checkpoint(out, factory=factory)
    logger.info("trained in %.1f min -> %s", (time.time() - started) / 60, model_dir)
    return model_dir


def export_checkpoint(out: str, model_dir: str | None = None, factory=impasto_factory) -> str:
    """Write the pipeline folder from the latest checkpoints in out/checkpoints (EMA weights); without a
    decoder checkpoint (vae.pt) the constructed nearest-neighbour decoder is used, with a warning."""
    ckpt_dir = os.path.join(out, "checkpoints")
    path = os.path.join(ckpt_dir, "unet.pt")
    if not os.path.exists(path):
        raise ValueError(f"out: expected {path} from a training run in {out!r}")
    unet_state = torch.load(path, weights_only=False, map_location="cpu")
    vocab = bpe.write_tokenizer(os.path.join(ckpt_dir, "tokenizer"), world.vocabulary(), MAX_LENGTH)
    with torch.random.fork_rng(devices=[]):  # the encoder's unused weights keep a random init (vae_init): the
        torch.manual_seed(0)  # same one in every export, so exporting the same checkpoints gives the same files
        vae = factory("vae", dict(VAE_CONFIG, scaling_factor=unet_state["scaling"]))
    construct_vae(vae)
    vae_path = os.path.join(ckpt_dir, "vae.pt")
    if os.path.exists(vae_path):
        vae.load_state_dict(torch.load(vae_path, weights_only=False, map_location="cpu")["ema"], strict=False)
    else:
        logger.warning("no decoder checkpoint %s: exporting the constructed (nearest-neighbour) decoder", vae_path)
    unet = factory("unet", unet_state.get("unet_config", UNET_CONFIG))
    unet.load_state_dict(unet_state["ema_unet"])
    text_encoder = factory("text_encoder", text_config(vocab))
    text_encoder.load_state_dict(unet_state["ema_text"])
    model_dir = model_dir or os.path.join(out, "model")
    save_pipeline(model_dir, vae.eval(), unet.eval(), text_encoder.eval(), os.path.join(ckpt_dir, "tokenizer"))
    logger.info("exported step %d -> %s", unet_state["step"], model_dir)
    return model_dir
