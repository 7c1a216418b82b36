"""Brownian motion increments drawn exactly as torchsde 0.2.6's `BrownianInterval(halfway_tree=True)` draws them.

diffusers' DPMSolverSDEScheduler (A1111's "DPM++ SDE") takes its noise from torchsde. impasto reproduces that
sampling here, so a seed gives the same images without torchsde being installed:

- The interval [t0, t1], its ends rounded to the decimal digits of `tol`, is the root of a binary tree. A node
  [s, e] is split at round((e + s) / 2), so the tree depends only on `entropy`, never on the query order.
- The root increment is sqrt(t1 - t0) * z (unrounded ends). Each z is `torch.randn` of the full `size` from a
  `torch.Generator` seeded with the first 32-bit word of a numpy `SeedSequence(entropy, pool_size=...)`; for the
  root that sequence has no spawn key, for a split node [s, e] the key is (k, depth), with k = 0 at the root
  and 2 k + 0 / 1 for a left / right child.
- The children of a split node with increment W follow the Brownian bridge: the left one is
  (m - s) / (e - s) * W + sqrt((m - s)(e - m) / (e - s)) * z, with z from the node's own seed, the right one
  W - left.
- A query [ta, tb] is clamped into [t0, t1], rounded, and answered as the left-to-right sum of the increments
  of the largest tree nodes that tile it (refining the tree where needed).

The arithmetic keeps torchsde's order of operations, so results are bit for bit equal. A small LRU cache keeps
recent node increments (it only saves work: a node's increment is recomputed identically from its parent).
"""
from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np
import torch


def _randn(size, dtype, device, seed: int) -> torch.Tensor:
    generator = torch.Generator(device).manual_seed(int(seed))
    return torch.randn(size, dtype=dtype, device=device, generator=generator)


class _Node:
    """One sub-interval of the tree; `seed` and the children exist once it is split at `mid`."""

    __slots__ = ("start", "end", "parent", "is_left", "key", "depth", "mid", "seed", "left", "right")

    def __init__(self, start: float, end: float, parent: _Node | None = None, is_left: bool = False):
        self.start, self.end, self.parent, self.is_left = start, end, parent, is_left
        self.key = 0 if parent is None else 2 * parent.key + (0 if is_left else 1)
        self.depth = 0 if parent is None else parent.depth + 1
        self.mid = None


class BrownianInterval:
    """Increments W(tb) - W(ta) of one Brownian path on [t0, t1] of shape `size`, fixed by `entropy`
    (torchsde's halfway-tree Brownian interval, without Levy areas)."""

    def __init__(self, t0: float, t1: float, size, dtype=None, device=None, entropy: int | None = None,
                 tol: float = 1e-6, pool_size: int = 24, cache_size: int = 45):
        t0, t1 = float(t0), float(t1)
        if t0 > t1:
            raise ValueError(f"t0: {t0} must not be greater than t1={t1}")
        if not tol > 0:
            raise ValueError(f"tol: expected a positive tolerance, got {tol!r}")
        if entropy is None:  # torchsde's default: numpy's global generator
            entropy = int(np.random.randint(0, 2**31 - 1))
        self.size = tuple(size)
        self.dtype = dtype if dtype is not None else torch.get_default_dtype()
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.entropy, self.pool_size, self.cache_size = entropy, pool_size, cache_size
        self._digits = -int(math.log10(tol))
        self._cache: OrderedDict[_Node, torch.Tensor] = OrderedDict()
        self._root = _Node(self._round(t0), self._round(t1))
        seed = np.random.SeedSequence(entropy=entropy, pool_size=pool_size).generate_state(1)[0]
        self._root_w = self._randn(seed) * math.sqrt(t1 - t0)

    def _round(self, t: float) -> float:
        return round(t, self._digits)

    def _randn(self, seed) -> torch.Tensor:
        return _randn(self.size, self.dtype, self.device, seed)

    # ---- the tree ---------------------------------------------------------------------------------------------
    def _split(self, node: _Node) -> None:
        if node.mid is not None:
            return
        mid = self._round(0.5 * (node.end + node.start))
        if not node.start < mid < node.end:
            raise RuntimeError(f"BrownianInterval: cannot split [{node.start}, {node.end}] finer than its tolerance")
        node.mid = mid
        sequence = np.random.SeedSequence(entropy=self.entropy, spawn_key=(node.key, node.depth),
                                          pool_size=self.pool_size)
        node.seed = sequence.generate_state(1)[0]
        node.left = _Node(node.start, mid, node, True)
        node.right = _Node(mid, node.end, node, False)

    def _tiles(self, ta: float, tb: float) -> list[_Node]:
        """The largest nodes tiling [ta, tb] (rounded, ta < tb), left to right."""
        out, pending = [], [(self._root, ta, tb)]
        while pending:
            node, a, b = pending.pop()
            while not (a == node.start and b == node.end):
                self._split(node)
                if b <= node.mid:
                    node = node.left
                elif a >= node.mid:
                    node = node.right
                else:  # straddles the midpoint: the right part waits until the left part is tiled
                    pending.append((node.right, node.mid, b))
                    node, b = node.left, node.mid
            out.append(node)
        return out

    # ---- increments -------------------------------------------------------------------------------------------
    def _increment(self, node: _Node) -> torch.Tensor:
        path = []
        while node.parent is not None and node not in self._cache:
            path.append(node)
            node = node.parent
        w = self._root_w if node.parent is None else self._cache[node]
        for child in reversed(path):
            w = self._bridge(child.parent, w, child.is_left)
            self._remember(child, w)
        return w

    def _bridge(self, parent: _Node, w: torch.Tensor, left: bool) -> torch.Tensor:
        inv_h = 1 / (parent.end - parent.start)
        before, after = parent.mid - parent.start, parent.end - parent.mid
        w_left = w * before * inv_h + math.sqrt(before * after * inv_h) * self._randn(parent.seed)
        return w_left if left else w - w_left

    def _remember(self, node: _Node, w: torch.Tensor) -> None:
        if self.cache_size <= 0:
            return
        self._cache.pop(node, None)
        if len(self._cache) >= self.cache_size:
            self._cache.popitem(last=False)
        self._cache[node] = w

    def __call__(self, ta, tb) -> torch.Tensor:
        """W(tb) - W(ta) for t0 <= ta <= tb <= t1 (times outside are clamped to the interval)."""
        lo, hi = self._root.start, self._root.end
        ta, tb = min(max(float(ta), lo), hi), min(max(float(tb), lo), hi)
        if ta > tb:
            raise ValueError(f"ta: {ta} must not be greater than tb={tb}")
        ta, tb = self._round(ta), self._round(tb)
        if ta == tb:
            return torch.zeros(self.size, dtype=self.dtype, device=self.device)
        tiles = self._tiles(ta, tb)
        w = self._increment(tiles[0])
        for node in tiles[1:]:
            w = w + self._increment(node)
        return w


class BrownianNoiseSampler:
    """Unit-variance noise for a step sigma -> sigma_next from Brownian path(s) over [sigma_min, sigma_max]: the
    increment divided by sqrt(|sigma_next - sigma|), as diffusers' `BrownianTreeNoiseSampler` (tol 1e-6, pool
    size 24). `seed` is one int (one path shaped like `x`), a list of ints (one path per sample of the batch), or
    None (an int drawn from torch's global generator, as diffusers does)."""

    def __init__(self, x: torch.Tensor, sigma_min: float, sigma_max: float, seed=None):
        lo, hi = float(sigma_min), float(sigma_max)
        self.sign = 1.0 if lo < hi else -1.0
        lo, hi = min(lo, hi), max(lo, hi)
        if seed is None:
            seed = torch.randint(0, 2**63 - 1, []).item()
        self.batched = isinstance(seed, (list, tuple))
        if self.batched and len(seed) != x.shape[0]:
            raise ValueError(f"noise_sampler_seed: got {len(seed)} seeds for a batch of {x.shape[0]}")
        seeds = list(seed) if self.batched else [seed]
        size = x.shape[1:] if self.batched else x.shape
        self.paths = [BrownianInterval(lo, hi, size, x.dtype, x.device, entropy=s) for s in seeds]

    def __call__(self, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        sigma, sigma_next = torch.as_tensor(sigma), torch.as_tensor(sigma_next)
        (a, b), sign = ((sigma, sigma_next), 1.0) if sigma < sigma_next else ((sigma_next, sigma), -1.0)
        if self.batched:
            w = torch.stack([path(a, b) for path in self.paths]) * (self.sign * sign)
        else:
            w = self.paths[0](a, b) * (self.sign * sign)
        return w / (sigma_next - sigma).abs().sqrt()
