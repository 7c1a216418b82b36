"""Multi-device helpers for the Flax pipelines, as in diffusers' examples (`flax.jax_utils` semantics).

    params = replicate(params)                          # one copy per local device
    prompt_ids = shard(prompt_ids)                      # (devices * b, 77) -> (devices, b, 77)
    rng = jax.random.split(jax.random.PRNGKey(0), jax.device_count())
    images = pipeline(prompt_ids, params, rng, jit=True).images   # (devices, b, H, W, 3)
    images = unshard(images)                            # (devices * b, H, W, 3)
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image


def replicate(tree, devices=None):
    """Copy every leaf of `tree` onto each local device (a new leading device axis, one slice per device)."""
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    devices = list(devices or jax.local_devices())
    sharding = NamedSharding(Mesh(np.array(devices), ("devices",)), PartitionSpec("devices"))

    def put(x):
        x = jnp.asarray(x)
        return jax.device_put(jnp.broadcast_to(x[None], (len(devices), *x.shape)), sharding)

    return jax.tree_util.tree_map(put, tree)


def unreplicate(tree):
    """The first device's copy of a replicated tree."""
    return jax.tree_util.tree_map(lambda x: x[0], tree)


def shard(tree, num_devices: int | None = None):
    """Split the leading (batch) axis of every leaf into (devices, batch / devices)."""
    n = num_devices or jax.local_device_count()

    def split(x):
        x = np.asarray(x) if not isinstance(x, jax.Array) else x
        if x.shape[0] % n:
            raise ValueError(f"shard: a leading axis of {x.shape[0]} does not split over {n} devices; "
                             f"give a multiple of {n} inputs")
        return x.reshape(n, x.shape[0] // n, *x.shape[1:])

    return jax.tree_util.tree_map(split, tree)


def unshard(x):
    """(devices, batch, ...) -> (devices * batch, ...)."""
    return x.reshape(x.shape[0] * x.shape[1], *x.shape[2:])


def numpy_to_pil(images) -> list:
    """Float images in [0, 1], (H, W, C) or (..., H, W, C), to a flat list of PIL images."""
    images = np.asarray(images)
    images = images.reshape(-1, *images.shape[-3:])
    images = (images * 255).round().astype("uint8")
    if images.shape[-1] == 1:
        return [Image.fromarray(i[..., 0], mode="L") for i in images]
    return [Image.fromarray(i) for i in images]


def as_key(prng_seed):
    """An int seed (numpy's too), a jax.random.PRNGKey or a typed jax.random.key (or one per device) -> a raw
    uint32 PRNG key."""
    import numbers

    if isinstance(prng_seed, numbers.Integral) and not isinstance(prng_seed, bool):
        return jax.random.PRNGKey(int(prng_seed))
    key = jnp.asarray(prng_seed)
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    if key.shape[-1:] != (2,) or key.dtype != jnp.uint32:
        raise ValueError(f"prng_seed: expected a jax.random.PRNGKey (or one per device), got shape "
                         f"{tuple(key.shape)} dtype {key.dtype}")
    return key
