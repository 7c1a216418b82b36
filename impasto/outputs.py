"""Output containers that behave like diffusers' BaseOutput: attributes, `out[0]`, `out["name"]`, `to_tuple()`."""
from __future__ import annotations

import dataclasses
from typing import Any


class BaseOutput:
    """Subclass with @dataclass; fields that are None are skipped by indexing and to_tuple, as in diffusers."""

    def to_tuple(self) -> tuple:
        return tuple(getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not None)

    def keys(self):
        return [f.name for f in dataclasses.fields(self) if getattr(self, f.name) is not None]

    def __getitem__(self, key: int | str | slice) -> Any:
        if isinstance(key, str):
            return getattr(self, key)
        return self.to_tuple()[key]

    def __iter__(self):
        return iter(self.to_tuple())

    def __len__(self):
        return len(self.to_tuple())
