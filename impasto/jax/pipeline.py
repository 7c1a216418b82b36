"""FlaxStableDiffusionPipeline: text-to-image in JAX with diffusers' Flax API.

    pipeline, params = FlaxStableDiffusionPipeline.from_pretrained(path, dtype=jnp.bfloat16)
    prompt_ids = pipeline.prepare_inputs(["a photo of an astronaut"] * 8)
    images = pipeline(prompt_ids, params, jax.random.PRNGKey(0), num_inference_steps=30).images  # (8, H, W, 3)

    # one program per device: replicate params, shard inputs and keys (see impasto.jax.utils)
    images = pipeline(shard(prompt_ids), replicate(params), jax.random.split(key, jax.device_count()),
                      jit=True).images                                          # (devices, 8 / devices, H, W, 3)

The folder is a diffusers Stable Diffusion folder (torch weights are converted in memory; Flax msgpack weights
are used where present). The denoising loop is one `jax.lax.fori_loop`; with `jit=False` the whole generation
is one `jax.jit` program on the default device, with `jit=True` one `pmap` program per device. Differences from
the torch pipeline: classifier-free guidance always runs (as diffusers' Flax pipeline: the guidance scale may be
a traced array), and the safety checker is not run (`nsfw_content_detected` is None).
"""
from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from ..outputs import BaseOutput
from .clip import FlaxCLIPTextModel
from .modeling import parse_dtype
from .schedulers import FlaxSchedulerMixin, advance, scale_input, scheduler_class
from .unet import FlaxUNet2DConditionModel
from .utils import as_key, numpy_to_pil, unreplicate
from .vae import FlaxAutoencoderKL

logger = logging.getLogger("impasto")

PIPELINE_NAMES = ("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline", "FlaxStableDiffusionPipeline",
                  "FlaxStableDiffusionImg2ImgPipeline")


@dataclass
class FlaxStableDiffusionPipelineOutput(BaseOutput):
    """`images`: float32 (batch, H, W, 3) in [0, 1] ((devices, batch, H, W, 3) with jit=True)."""

    images: np.ndarray
    nsfw_content_detected: list | None = None


@dataclass(frozen=True)
class Models:
    """The static part of the compiled programs (linen modules hash by their config)."""

    text_encoder: FlaxCLIPTextModel
    unet: FlaxUNet2DConditionModel
    vae: FlaxAutoencoderKL


# ---- the traced computation -------------------------------------------------------------------------------
def encode_prompts(models: Models, params, prompt_ids, neg_prompt_ids):
    """[negative; positive] text states for classifier-free guidance."""
    apply = functools.partial(models.text_encoder.apply, {"params": params["text_encoder"]})
    return jnp.concatenate([apply(neg_prompt_ids)[0], apply(prompt_ids)[0]])


def denoise(models: Models, unet_params, state, latents, context, guidance_scale):
    """Run every step of the scheduler state in one fori_loop; latents stay float32."""
    def body(_, carry):
        latents, state = carry
        x = scale_input(state, jnp.concatenate([latents, latents]))
        t = jnp.broadcast_to(state.timesteps[state.step_index], (x.shape[0],))
        pred = models.unet.apply({"params": unet_params}, x, t, context).sample.astype(jnp.float32)
        uncond, cond = jnp.split(pred, 2)
        pred = uncond + guidance_scale.reshape(-1, 1, 1, 1) * (cond - uncond)
        return advance(state, pred, latents)

    return jax.lax.fori_loop(0, state.timesteps.shape[0], body, (latents.astype(jnp.float32), state))[0]


def decode(models: Models, vae_params, latents):
    """float32 NHWC images in [0, 1]."""
    vae = models.vae
    image = vae.apply({"params": vae_params}, latents / vae.scaling_factor, method=vae.decode).sample
    return jnp.clip(image.astype(jnp.float32) / 2 + 0.5, 0, 1).transpose(0, 2, 3, 1)


def generate(models: Models, params, state, prompt_ids, neg_prompt_ids, rng, init_latents, noise, mix,
             guidance_scale):
    """Images from latents mix[0] * init_latents + mix[1] * noise (noise drawn from `rng` when None): pure noise
    scaled by init_noise_sigma for text-to-image, the scheduler's add_noise for image-to-image. Both tasks
    share this one program."""
    context = encode_prompts(models, params, prompt_ids, neg_prompt_ids)
    if noise is None:
        noise = jax.random.normal(rng, init_latents.shape, jnp.float32)
    latents = mix[0] * init_latents.astype(jnp.float32) + mix[1] * noise.astype(jnp.float32)
    return decode(models, params["vae"], denoise(models, params["unet"], state, latents, context, guidance_scale))


_jit_generate = jax.jit(generate, static_argnums=(0,))
_pmap_generate = jax.pmap(generate, in_axes=(None, 0, None, 0, 0, 0, 0, 0, None, 0), static_broadcasted_argnums=(0,))


# ---- the pipeline -----------------------------------------------------------------------------------------
class FlaxPipelineBase:
    """Components, loading, tokenization and argument checks shared by the Flax SD pipelines."""

    def __init__(self, vae: FlaxAutoencoderKL, text_encoder: FlaxCLIPTextModel, tokenizer,
                 unet: FlaxUNet2DConditionModel, scheduler: FlaxSchedulerMixin, safety_checker=None,
                 feature_extractor=None, dtype=jnp.float32):
        if safety_checker is not None:
            raise ValueError("safety_checker: the Flax pipelines do not run a safety checker; pass None")
        if not isinstance(scheduler, FlaxSchedulerMixin):
            raise ValueError(f"scheduler: expected one of impasto's Flax schedulers, got {type(scheduler).__name__}")
        self.vae, self.text_encoder, self.tokenizer, self.unet, self.scheduler = vae, text_encoder, tokenizer, unet, \
            scheduler
        self.safety_checker, self.feature_extractor = None, feature_extractor
        self.dtype = parse_dtype(dtype)
        self.vae_scale_factor = 2 ** (len(vae.block_out_channels) - 1)
        self.models = Models(text_encoder, unet, vae)

    numpy_to_pil = staticmethod(numpy_to_pil)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, dtype=jnp.float32, scheduler=None,
                        from_pt: bool | None = None, **hub):
        """(pipeline, params) from a diffusers SD folder or hub id. `scheduler`: a Flax scheduler to use instead
        of the folder's; params["scheduler"] is its state."""
        from ..loading.hub import resolve_file
        from ..models.config import read_json
        from ..text.clip_tokenizer import CLIPTokenizer

        path = pretrained_model_name_or_path
        index = read_json(resolve_file(path, "model_index.json", **hub))
        if index.get("_class_name") not in PIPELINE_NAMES:
            raise ValueError(f"{path}: model_index.json describes a {index.get('_class_name')!r}; the Flax pipelines "
                             f"read Stable Diffusion 1.x/2.x folders ({', '.join(PIPELINE_NAMES[:2])})")
        checker = index.get("safety_checker")
        if isinstance(checker, (list, tuple)) and checker and checker[0] is not None:
            logger.warning("%s: the folder has a safety checker; the Flax pipelines do not run it", path)
        dtype = parse_dtype(dtype)
        params = {}
        text_encoder, params["text_encoder"] = FlaxCLIPTextModel.from_pretrained(path, "text_encoder", dtype,
                                                                                 from_pt, **hub)
        unet, params["unet"] = FlaxUNet2DConditionModel.from_pretrained(path, "unet", dtype, from_pt, **hub)
        vae, params["vae"] = FlaxAutoencoderKL.from_pretrained(path, "vae", dtype, from_pt, **hub)
        tokenizer = CLIPTokenizer.from_pretrained(path, subfolder="tokenizer", **hub)
        if scheduler is None:
            config = read_json(resolve_file(path, "scheduler_config.json", "scheduler", **hub))
            scheduler = scheduler_class(config.get("_class_name", "")).from_config(_fixed_scheduler_config(config))
        params["scheduler"] = scheduler.create_state()
        pipe = cls(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                   dtype=dtype)
        return pipe, params

    def prepare_inputs(self, prompt: str | list[str]) -> np.ndarray:
        """Token ids (batch, model_max_length) int32: padded to max length, truncated with a warning."""
        if isinstance(prompt, str):
            prompt = [prompt]
        if not isinstance(prompt, (list, tuple)) or not all(isinstance(p, str) for p in prompt):
            raise ValueError(f"prompt: expected a str or a list of str, got {type(prompt).__name__}")
        limit = self.tokenizer.model_max_length
        full = self.tokenizer(list(prompt)).input_ids
        cut = [i for i, ids in enumerate(full) if len(ids) > limit]
        if cut:
            logger.warning("prompt: prompts %s are longer than %d tokens and were truncated", cut, limit)
        ids = self.tokenizer(list(prompt), padding="max_length", max_length=limit, truncation=True,
                             return_tensors="np").input_ids
        return np.asarray(ids, dtype=np.int32)

    # ---- argument handling --------------------------------------------------------------------------------
    def _batch_dims(self, prompt_ids, jit: bool) -> tuple:
        shape = tuple(np.shape(prompt_ids))
        want = 3 if jit else 2
        if len(shape) != want:
            layout = "(devices, batch, tokens): shard() them" if jit else "(batch, tokens)"
            raise ValueError(f"prompt_ids: expected shape {layout} with jit={jit}, got {shape}")
        return shape[:-1]

    def _negative_ids(self, neg_prompt_ids, prompt_ids):
        if neg_prompt_ids is None:
            empty = self.prepare_inputs([""])[0][: np.shape(prompt_ids)[-1]]
            return np.broadcast_to(empty, np.shape(prompt_ids)).copy()
        if np.shape(neg_prompt_ids) != np.shape(prompt_ids):
            raise ValueError(f"neg_prompt_ids: expected the shape of prompt_ids {tuple(np.shape(prompt_ids))}, "
                             f"got {tuple(np.shape(neg_prompt_ids))}")
        return neg_prompt_ids

    @staticmethod
    def _guidance(guidance_scale, batch_dims: tuple):
        if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float, np.ndarray, jax.Array)):
            raise ValueError(f"guidance_scale: expected a number or an array, got {type(guidance_scale).__name__}")
        try:
            return jnp.broadcast_to(jnp.asarray(guidance_scale, jnp.float32), batch_dims)
        except ValueError:
            raise ValueError(f"guidance_scale: shape {np.shape(guidance_scale)} does not broadcast to the batch "
                             f"{batch_dims}") from None

    def _size(self, height, width) -> tuple[int, int]:
        size = self.unet.sample_size
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        height = height or h * self.vae_scale_factor
        width = width or w * self.vae_scale_factor
        for name, value in (("height", height), ("width", width)):
            if not isinstance(value, int) or value <= 0 or value % 8:
                raise ValueError(f"{name}: must be a positive multiple of 8, got {value!r}")
        return height, width

    def _state(self, params, jit: bool, num_inference_steps, shape, begin_index: int = 0):
        if "scheduler" not in params:
            raise ValueError("params: missing 'scheduler' (the state from from_pretrained or scheduler.create_state())")
        state = params["scheduler"]
        if jit and state.alphas_cumprod.ndim == 2:  # replicated with the other params
            state = unreplicate(state)
        return self.scheduler.set_timesteps(state, num_inference_steps, shape, begin_index)

    @staticmethod
    def _key(prng_seed, jit: bool, devices: int):
        key = as_key(prng_seed)
        if jit and key.shape != (devices, 2):
            raise ValueError(f"prng_seed: with jit=True give one key per device, shape ({devices}, 2) "
                             f"(jax.random.split(key, {devices})), got {tuple(key.shape)}")
        if not jit and key.shape != (2,):
            raise ValueError(f"prng_seed: expected one PRNG key, shape (2,), got {tuple(key.shape)}")
        return key

    @staticmethod
    def _model_params(params) -> dict:
        missing = [k for k in ("text_encoder", "unet", "vae") if k not in params]
        if missing:
            raise ValueError(f"params: missing {', '.join(missing)}")
        return {k: params[k] for k in ("text_encoder", "unet", "vae")}

    def _run(self, params, state, prompt_ids, neg_prompt_ids, prng_seed, init_latents, noise, mix, guidance_scale,
             batch_dims, jit, return_dict):
        models = self._model_params(params)
        if jit:
            _check_replicated(models, batch_dims[0])
        args = (models, state, jnp.asarray(prompt_ids),
                jnp.asarray(self._negative_ids(neg_prompt_ids, prompt_ids)),
                self._key(prng_seed, jit, batch_dims[0]), init_latents, None if noise is None else jnp.asarray(noise),
                mix, self._guidance(guidance_scale, batch_dims))
        images = (_pmap_generate if jit else _jit_generate)(self.models, *args)
        return self._output(images, return_dict)

    @staticmethod
    def _output(images, return_dict: bool):
        images = np.asarray(images)
        if not return_dict:
            return images, None
        return FlaxStableDiffusionPipelineOutput(images=images, nsfw_content_detected=None)


def _check_replicated(params: dict, devices: int) -> None:
    """With jit=True (pmap) every parameter carries a leading axis of one copy per device."""
    for name, tree in params.items():
        for leaf in jax.tree_util.tree_leaves(tree):
            if getattr(leaf, "ndim", 0) == 0 or leaf.shape[0] != devices:
                raise ValueError(f"params: with jit=True the parameters must be replicated, one copy per device "
                                 f"({devices}): pass replicate(params) (impasto.jax.utils or flax.jax_utils); "
                                 f"params[{name!r}] has a leaf of shape {tuple(getattr(leaf, 'shape', ()))}")


def _fixed_scheduler_config(config: dict) -> dict:
    """The torch pipeline's fix-ups of outdated scheduler configs (steps_offset 1, clip_sample off)."""
    config = dict(config)
    fixes = {k: v for k, v in (("steps_offset", 1), ("clip_sample", False))
             if k in config and config[k] != v and (k != "steps_offset" or config[k] is not None)}
    if fixes:
        logger.warning("scheduler config is outdated (%s); using %s",
                       ", ".join(f"{k}={config[k]}" for k in fixes), ", ".join(f"{k}={v}" for k, v in fixes.items()))
        config.update(fixes)
    return config


class FlaxStableDiffusionPipeline(FlaxPipelineBase):
    """Text-to-image with Stable Diffusion 1.x / 2.x in JAX; see the module docstring."""

    def __call__(self, prompt_ids, params, prng_seed, num_inference_steps: int = 50, height: int | None = None,
                 width: int | None = None, guidance_scale=7.5, latents=None, neg_prompt_ids=None,
                 return_dict: bool = True, jit: bool = False):
        batch_dims = self._batch_dims(prompt_ids, jit)
        height, width = self._size(height, width)
        f = self.vae_scale_factor
        shape = (batch_dims[-1], self.unet.in_channels, height // f, width // f)
        if latents is not None and tuple(np.shape(latents)) != batch_dims[:-1] + shape:
            raise ValueError(f"latents: expected shape {batch_dims[:-1] + shape}, got {tuple(np.shape(latents))}")
        state = self._state(params, jit, num_inference_steps, shape)
        mix = jnp.stack([jnp.zeros((), jnp.float32), state.init_noise_sigma])
        return self._run(params, state, prompt_ids, neg_prompt_ids, prng_seed, jnp.zeros(batch_dims[:-1] + shape),
                         latents, mix, guidance_scale, batch_dims, jit, return_dict)
