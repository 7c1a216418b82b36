"""FlaxStableDiffusionImg2ImgPipeline: image-to-image in JAX with diffusers' Flax API.

    pipeline, params = FlaxStableDiffusionImg2ImgPipeline.from_pretrained(path)
    image = pipeline.prepare_image_inputs(pil_images)          # (batch, 3, H, W) float32 in [-1, 1]
    images = pipeline(pipeline.prepare_inputs(prompts), image, params, jax.random.PRNGKey(0), strength=0.75).images

`image` may also hold latents (latent_channels channels, already scaled), used as they are, as the torch
pipeline does. The image is encoded by a sample of the VAE's latent distribution (key folded from `prng_seed`),
then noised to the first step that runs (the last int(num_inference_steps * strength) steps of the ladder) by
the scheduler's add_noise, with `noise` or Gaussian noise from the key. Denoising and decoding share
text-to-image's compiled program.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .pipeline import FlaxPipelineBase
from .vae import FlaxAutoencoderKL


def encode_image(vae: FlaxAutoencoderKL, vae_params, image, rng):
    """Scaled latents (NCHW) sampled from the VAE's posterior."""
    dist = vae.apply({"params": vae_params}, image, method=vae.encode).latent_dist
    return dist.sample(rng).transpose(0, 3, 1, 2).astype(jnp.float32) * vae.scaling_factor


_jit_encode = jax.jit(encode_image, static_argnums=(0,))
_pmap_encode = jax.pmap(encode_image, in_axes=(None, 0, 0, 0), static_broadcasted_argnums=(0,))


def _fold(key, data: int):
    return jax.vmap(jax.random.fold_in, (0, None))(key, data) if key.ndim == 2 else jax.random.fold_in(key, data)


class FlaxStableDiffusionImg2ImgPipeline(FlaxPipelineBase):
    """Image-to-image with Stable Diffusion 1.x / 2.x in JAX; see the module docstring."""

    def prepare_inputs(self, prompt, image=None):
        """As diffusers: `prepare_inputs(prompt, image)` -> (token ids, pixels) (`prepare_image_inputs`); with
        no image, the token ids alone (the text-to-image pipeline's form)."""
        ids = super().prepare_inputs(prompt)
        if image is None:
            return ids
        pixels = self.prepare_image_inputs(image)
        if len(pixels) != len(ids):
            raise ValueError(f"image: {len(pixels)} images for {len(ids)} prompts; give one image per prompt")
        return ids, pixels

    def prepare_image_inputs(self, image) -> np.ndarray:
        """PIL images / numpy arrays (or a list) -> float32 (batch, 3, H, W) in [-1, 1], sized to a multiple of
        the VAE factor (the torch pipeline's preprocessing)."""
        from ..image_processor import VaeImageProcessor

        pixels = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor).preprocess(image)
        if pixels.shape[1] != 3:
            raise ValueError(f"image: expected RGB images, got {pixels.shape[1]} channels")
        return pixels.float().numpy()

    @staticmethod
    def get_timestep_start(num_inference_steps: int, strength: float) -> int:
        """Ladder position where image-to-image starts: the last int(N * strength) of N steps run."""
        init = min(int(num_inference_steps * strength), num_inference_steps)
        return max(num_inference_steps - init, 0)

    def __call__(self, prompt_ids, image, params, prng_seed, strength: float = 0.8, num_inference_steps: int = 50,
                 height: int | None = None, width: int | None = None, guidance_scale=7.5, noise=None,
                 neg_prompt_ids=None, return_dict: bool = True, jit: bool = False):
        batch_dims = self._batch_dims(prompt_ids, jit)
        if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0 <= strength <= 1:
            raise ValueError(f"strength: expected a number in [0, 1], got {strength!r}")
        if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(f"num_inference_steps: expected a positive int, got {num_inference_steps!r}")
        start = self.get_timestep_start(num_inference_steps, strength)
        if start >= num_inference_steps:
            raise ValueError(f"strength: {strength} x num_inference_steps={num_inference_steps} leaves no denoising "
                             "step; raise strength or num_inference_steps")
        image = jnp.asarray(image, jnp.float32)
        latent_channels = self.vae.latent_channels
        if image.ndim != len(batch_dims) + 3 or image.shape[:-4] != batch_dims[:-1] or \
                image.shape[-3] not in (3, latent_channels):
            raise ValueError(f"image: expected shape {batch_dims[:-1]} + (batch, 3 or {latent_channels}, H, W) "
                             f"(prepare_image_inputs, then shard with jit=True), got {tuple(image.shape)}")
        if image.shape[-4] not in (1, batch_dims[-1]):
            raise ValueError(f"image: got {image.shape[-4]} images for a batch of {batch_dims[-1]} prompts; "
                             "give one image or one per prompt")
        is_latent = image.shape[-3] == latent_channels
        f = self.vae_scale_factor
        h, w = image.shape[-2:]
        if is_latent:
            h, w = h * f, w * f
        for name, given, actual in (("height", height, h), ("width", width, w)):
            if given is not None and given != actual:
                raise ValueError(f"{name}: {given} differs from the image's {actual}; resize the image instead")
        height, width = self._size(h, w)
        shape = (batch_dims[-1], self.unet.in_channels, height // f, width // f)
        if noise is not None and tuple(np.shape(noise)) != batch_dims[:-1] + shape:
            raise ValueError(f"noise: expected shape {batch_dims[:-1] + shape}, got {tuple(np.shape(noise))}")

        state = self._state(params, jit, num_inference_steps, shape, start * self.scheduler.order)
        key = self._key(prng_seed, jit, batch_dims[0])
        if is_latent:
            init = image
        else:
            encode = _pmap_encode if jit else _jit_encode
            init = encode(self.vae, self._model_params(params)["vae"], image, _fold(key, 1))
        init = jnp.broadcast_to(init, batch_dims[:-1] + shape)
        return self._run(params, state, prompt_ids, neg_prompt_ids, _fold(key, 2), init, noise, state.noise_weights,
                         guidance_scale, batch_dims, jit, return_dict)
