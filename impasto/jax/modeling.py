"""Loading Flax models from diffusers folders: config.json fields -> linen module, torch weights -> param trees.

`FlaxModelMixin` gives a linen module (a dataclass whose fields are config keys) these class methods:

- `from_config(config, dtype=jnp.float32)`: the module, refusing config values it does not implement;
- `from_torch(torch_model, dtype=None)` -> (module, params): converts an impasto torch model's state dict;
- `from_pretrained(path, subfolder=None, dtype=jnp.float32, from_pt=None)` -> (module, params): Flax msgpack
  weights when the folder has them (and `from_pt` is not True), else the torch weights, loaded by impasto's
  torch class (which handles variants, shards and old key layouts) and converted in memory;
- `init_weights(rng)`: random params of the right shapes (each model class defines `dummy_inputs()`).

Conversion rule (diffusers' PyTorch -> Flax): conv weights (O, I, kh, kw) -> kernel (kh, kw, I, O); linear
weights -> kernel transposed; norm weights -> scale; embeddings -> embedding; `name.N` -> `name_N` where the
Flax module names lists that way. Params are cast to `dtype` (floating leaves only).
"""
from __future__ import annotations

import dataclasses
import importlib
import logging
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization
from flax.traverse_util import flatten_dict, unflatten_dict

from ..loading.hub import resolve_file
from ..models.config import read_json

logger = logging.getLogger("impasto")

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def parse_dtype(dtype) -> Any:
    """jnp.float32 / jnp.bfloat16 / jnp.float16 or their names -> the jnp dtype; ValueError otherwise."""
    if isinstance(dtype, str) and dtype in DTYPES:
        return DTYPES[dtype]
    for value in DTYPES.values():
        if dtype is value or (dtype is not None and np.dtype(dtype) == np.dtype(value)):
            return value
    raise ValueError(f"dtype: expected jnp.float32, jnp.bfloat16 or jnp.float16, got {dtype!r}")


def cast_params(params, dtype):
    """Cast floating leaves of a param tree to `dtype`; integer leaves are kept."""
    def cast(x):
        x = jnp.asarray(x)
        return x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x
    return jax.tree_util.tree_map(cast, params)


def underscore_indices(key: str) -> str:
    """'down_blocks.0.resnets.1.conv1.weight' -> 'down_blocks_0.resnets_1.conv1.weight'."""
    return re.sub(r"(\w+)\.(\d+)(?=\.|$)", r"\1_\2", key)


def torch_state_to_numpy(state: dict) -> dict[str, np.ndarray]:
    out = {}
    for k, v in state.items():
        v = v.detach().cpu()
        if not v.is_floating_point():
            out[k] = v.numpy()
        else:
            out[k] = v.float().numpy()
    return out


def convert_state(state: dict[str, np.ndarray], shapes: dict, flax_key, owner: str) -> dict:
    """Torch tensors (numpy) -> a nested Flax param dict shaped like `shapes` (a flattened tree of shapes).

    `flax_key(torch_key)` gives the dotted Flax path prefix (without the leaf name). Keys with no place in the
    tree are skipped with a log line; a missing param or a shape mismatch raises ValueError."""
    out, skipped = {}, []
    for key, value in state.items():
        stem, _, leaf = key.rpartition(".")
        path = tuple(flax_key(stem).split(".")) if stem else ()
        if leaf == "bias":
            target, value = path + ("bias",), value
        elif leaf in ("weight", "gamma") and path + ("scale",) in shapes:
            target = path + ("scale",)
        elif leaf == "beta" and path + ("bias",) in shapes:
            target = path + ("bias",)
        elif leaf == "weight" and path + ("embedding",) in shapes:
            target = path + ("embedding",)
        elif leaf == "weight" and value.ndim == 4:
            target, value = path + ("kernel",), value.transpose(2, 3, 1, 0)
        elif leaf == "weight" and value.ndim == 2:
            target, value = path + ("kernel",), value.T
        else:
            target = path + (leaf,)
        if target not in shapes:
            skipped.append(key)
            continue
        if tuple(value.shape) != tuple(shapes[target]):
            raise ValueError(f"{owner}: weight {key} has shape {tuple(value.shape)} but the Flax param "
                             f"{'/'.join(target)} needs {tuple(shapes[target])}")
        out[target] = np.ascontiguousarray(value)
    if skipped:
        logger.info("%s: torch weights with no Flax param (skipped): %s", owner, ", ".join(sorted(skipped)))
    missing = sorted("/".join(k) for k in shapes if k not in out)
    if missing:
        raise ValueError(f"{owner}: the torch weights lack {len(missing)} params the Flax model needs, e.g. "
                         f"{', '.join(missing[:5])}")
    return unflatten_dict(out)


class FlaxModelMixin:
    """Class methods to build and load a linen model; see the module docstring."""

    torch_class: str = ""  # "module:Class" of the impasto torch model with the same config and weights
    flax_weights_name = "diffusion_flax_model.msgpack"
    config_name = "config.json"
    unsupported: dict[str, tuple] = {}  # config key -> values this implementation accepts

    # ---- config -------------------------------------------------------------------------------------
    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls) if f.name not in ("parent", "name", "dtype")]

    @classmethod
    def from_config(cls, config: dict, dtype=jnp.float32):
        config = dict(config)
        for key, allowed in cls.unsupported.items():
            if key in config and config[key] not in allowed:
                raise ValueError(f"{cls.__name__}: config {key}={config[key]!r} is not supported by the Flax "
                                 f"model; expected one of {allowed}")
        kwargs = {}
        for name in cls.field_names():
            if name in config:
                value = config[name]
                kwargs[name] = tuple(value) if isinstance(value, list) else value
        return cls(**kwargs, dtype=parse_dtype(dtype))

    @property
    def config(self) -> dict:
        return {name: getattr(self, name) for name in self.field_names()}

    # ---- params -------------------------------------------------------------------------------------
    def init_weights(self, rng) -> dict:
        return self.init(rng, *self.dummy_inputs())["params"]

    def param_shapes(self) -> dict:
        tree = jax.eval_shape(lambda: self.init(jax.random.PRNGKey(0), *self.dummy_inputs()))["params"]
        return {k: v.shape for k, v in flatten_dict(tree).items()}

    def flax_key(self, torch_stem: str) -> str:
        """Dotted Flax path of a torch module path (default: `name.N` -> `name_N`)."""
        return underscore_indices(torch_stem)

    def convert_torch_state(self, state: dict) -> dict:
        """A torch state dict (tensors or arrays) -> this model's Flax params (float32)."""
        if state and not isinstance(next(iter(state.values())), np.ndarray):
            state = torch_state_to_numpy(state)
        return convert_state(state, self.param_shapes(), self.flax_key, type(self).__name__)

    # ---- loading ------------------------------------------------------------------------------------
    @classmethod
    def torch_model_class(cls):
        module, _, name = cls.torch_class.partition(":")
        return getattr(importlib.import_module(module), name)

    @classmethod
    def from_torch(cls, torch_model, dtype=None):
        """(module, params) from an impasto torch model (dtype: the torch model's unless given)."""
        if dtype is None:
            dtype = str(torch_model.dtype).replace("torch.", "")
        dtype = parse_dtype(dtype)
        model = cls.from_config(dict(torch_model.config), dtype=dtype)
        params = model.convert_torch_state(torch_model.state_dict())
        return model, cast_params(params, dtype)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, subfolder: str | None = None, dtype=jnp.float32,
                        from_pt: bool | None = None, **hub):
        """(module, params) from a diffusers folder (or hub id); see the module docstring."""
        dtype = parse_dtype(dtype)
        flax_file = None
        if from_pt is not True:
            flax_file = resolve_file(pretrained_model_name_or_path, cls.flax_weights_name, subfolder,
                                     required=from_pt is False, **hub)
        if flax_file is not None:
            config = read_json(resolve_file(pretrained_model_name_or_path, cls.config_name, subfolder, **hub))
            model = cls.from_config(config, dtype=dtype)
            params = serialization.msgpack_restore(flax_file.read_bytes())
            expected = model.param_shapes()
            got = {k: tuple(v.shape) for k, v in flatten_dict(params).items()}
            if got != {k: tuple(v) for k, v in expected.items()}:
                raise ValueError(f"{flax_file}: its params do not fit {cls.__name__} built from its config.json")
            return model, cast_params(params, dtype)
        import torch

        torch_model = cls.torch_model_class().from_pretrained(pretrained_model_name_or_path, subfolder=subfolder,
                                                              torch_dtype=torch.float32, **hub)
        return cls.from_torch(torch_model, dtype=dtype)

    def save_pretrained(self, save_directory, params) -> None:
        """Write config.json and the Flax msgpack weights (readable by `from_pretrained`)."""
        import json
        from pathlib import Path

        out = Path(save_directory)
        out.mkdir(parents=True, exist_ok=True)
        config = {k: list(v) if isinstance(v, tuple) else v for k, v in self.config.items()}
        config["_class_name"] = type(self).__name__.removeprefix("Flax")
        (out / self.config_name).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        params = jax.tree_util.tree_map(np.asarray, params)
        (out / self.flax_weights_name).write_bytes(serialization.msgpack_serialize(params))
