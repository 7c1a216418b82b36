"""Configuration objects compatible with diffusers' `config.json` / `scheduler_config.json` files.

A class that mixes in `ConfigMixin` and decorates its `__init__` with `@register_to_config` records every
init argument (given or defaulted) in `self.config`, a read-only dict with attribute access. `from_config`
builds an instance from such a dict, ignoring keys the class does not know (so schedulers can be swapped),
and `save_config` / `load_config` read and write the JSON file diffusers writes.
"""
from __future__ import annotations

import functools
import inspect
import json
import logging
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

logger = logging.getLogger("impasto")

DIFFUSERS_VERSION = "0.42.1"  # written into saved configs, so diffusers reads them without complaint


class FrozenDict(OrderedDict):
    """A dict whose items are also attributes and which refuses changes after construction."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for key, value in self.items():
            object.__setattr__(self, key, value)
        object.__setattr__(self, "_frozen", True)

    def _refuse(self, *args, **kwargs):
        raise TypeError(f"{type(self).__name__} is read-only; use register_to_config or from_config(..., key=value)")

    __delitem__ = setdefault = pop = update = popitem = _refuse

    def __setattr__(self, name, value):
        if getattr(self, "_frozen", False):
            self._refuse()
        object.__setattr__(self, name, value)

    def __setitem__(self, name, value):
        if getattr(self, "_frozen", False):
            self._refuse()
        super().__setitem__(name, value)

    def __reduce__(self):
        # rebuild through __init__: OrderedDict's own reduce restores the frozen flag before the items, so
        # copy.deepcopy and pickle of any configured object (a scheduler, a model) were refused
        return type(self), (list(self.items()),)


def _json_ready(value):
    import numpy as np

    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, tuple):
        return [_json_ready(v) for v in value]
    if isinstance(value, list):
        return [_json_ready(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if type(value).__module__ == "torch" and type(value).__name__ == "dtype":
        return str(value).replace("torch.", "")
    return value


class ConfigMixin:
    """Base for everything that has a diffusers-style config (models, schedulers, pipelines)."""

    config_name: str | None = None
    ignore_for_config: list[str] = []
    has_compatibles = False
    _compatibles: list[str] = []

    def register_to_config(self, **kwargs):
        kwargs.pop("kwargs", None)
        current = dict(self.__dict__.get("_internal_dict", {}))
        current.update(kwargs)
        self._internal_dict = FrozenDict(current)

    @property
    def config(self) -> FrozenDict:
        return self._internal_dict

    # ---- building -------------------------------------------------------------------------------------
    @classmethod
    def init_keys(cls) -> list[str]:
        params = inspect.signature(cls.__init__).parameters
        return [
            name
            for name, p in params.items()
            if name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and name not in cls.ignore_for_config
        ]

    @classmethod
    def extract_init_dict(cls, config: dict, **kwargs) -> tuple[dict, dict]:
        """Split a config dict into (init arguments for this class, everything else)."""
        defaulted = set(config.get("_use_default_values", []))
        config = {k: v for k, v in config.items() if k not in defaulted}
        init, unused = {}, {}
        keys = set(cls.init_keys())
        for key, value in config.items():
            if key in keys:
                init[key] = value
            elif not key.startswith("_"):
                unused[key] = value
        for key, value in kwargs.items():
            if key in keys:
                init[key] = value
            else:
                unused[key] = value
        return init, unused

    @classmethod
    def from_config(cls, config: dict | None = None, return_unused_kwargs: bool = False, **kwargs):
        """Build from a config dict (e.g. another scheduler's `.config`); unknown keys are kept but unused."""
        if config is None:
            config = {}
        if not isinstance(config, dict):
            raise TypeError(f"config: expected a dict (such as `other.config`), got {type(config).__name__}")
        init, unused = cls.extract_init_dict(dict(config), **kwargs)
        obj = cls(**init)
        # keep keys meant for compatible classes, so a round trip through this class loses nothing; keys this
        # class takes but that were left out (listed in `_use_default_values`) keep this class's own default
        own = set(cls.init_keys())
        hidden = {k: v for k, v in config.items()
                  if k not in init and k not in own and not k.startswith("_") and k not in kwargs}
        if hidden:
            obj.register_to_config(**hidden)
        if return_unused_kwargs:
            return obj, unused
        return obj

    # ---- files ----------------------------------------------------------------------------------------
    @classmethod
    def load_config(cls, path: str | os.PathLike, subfolder: str | None = None, **hub_kwargs) -> dict:
        """Read `config_name` from a folder (or a hub id, resolved offline-first)."""
        from ..loading.hub import resolve_file

        file = resolve_file(path, cls.config_name, subfolder=subfolder, **hub_kwargs)
        return read_json(file)

    def to_json_string(self) -> str:
        data = {"_class_name": type(self).__name__, "_diffusers_version": DIFFUSERS_VERSION}
        data.update({k: _json_ready(v) for k, v in self.config.items() if k != "_use_default_values"})
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    def save_config(self, save_directory: str | os.PathLike, **kwargs):
        save_directory = Path(save_directory)
        if save_directory.is_file():
            raise ValueError(f"save_directory: {save_directory} is a file, expected a folder")
        save_directory.mkdir(parents=True, exist_ok=True)
        (save_directory / self.config_name).write_text(self.to_json_string(), encoding="utf-8")

    def __repr__(self):
        return f"{type(self).__name__} {self.to_json_string()}"


def read_json(file: str | os.PathLike) -> dict:
    """Read a JSON object, with an error naming the file when it is not valid JSON."""
    try:
        with open(file, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{file}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{file}: expected a JSON object, got {type(data).__name__}")
    return data


def register_to_config(init):
    """Decorator for `__init__`: records every argument (given or defaulted) in `self.config`."""

    signature = inspect.signature(init)

    @functools.wraps(init)
    def wrapper(self, *args, **kwargs):
        private = {k: kwargs.pop(k) for k in list(kwargs) if k.startswith("_")}
        ignore = set(getattr(self, "ignore_for_config", []))
        bound = signature.bind(self, *args, **kwargs)
        values = {}
        given = set()
        for i, (name, param) in enumerate(signature.parameters.items()):
            if i == 0 or name in ignore or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                continue
            if name in bound.arguments:
                values[name] = bound.arguments[name]
                given.add(name)
            else:
                values[name] = param.default
        defaulted = sorted(set(values) - given)
        if defaulted:
            values["_use_default_values"] = defaulted
        self.register_to_config(**private, **values)
        init(self, *args, **kwargs)

    return wrapper


def check_type(owner: str, key: str, value: Any, expected: type | tuple) -> None:
    """Raise a ValueError naming `owner.key` when a config value has the wrong type."""
    if not isinstance(value, expected):
        names = " or ".join(t.__name__ for t in (expected if isinstance(expected, tuple) else (expected,)))
        raise ValueError(f"{owner}: config key {key!r} must be {names}, got {value!r} ({type(value).__name__})")
