"""A deterministic analyser of one-shape images: what a caption of the shapes world would say about them.

background: the palette colour nearest to the median of the border pixels. Foreground: pixels far from the
background colour; the largest 4-connected foreground region is the shape. colour: the palette colour
nearest to the region's median colour. position: the region's centroid in thirds of the image (left /
centre / right x top / centre / bottom; the middle cell is "centre"); the centroid's y is moved up by a sixth
of the height for triangles, whose centroid lies below the middle of their box, where the world centres them.
shape: fill ratio of the bounding box (square ~1.0, circle ~0.785, triangle ~0.5). size: the radius of the
circle (or, for squares and triangles, of the circle of the same world size) that the area implies, against
the midpoint of the two radii.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .world import COLOURS, IMAGE_SIZE, SIZES

_NAMES = sorted(COLOURS)
_PALETTE = np.array([COLOURS[n] for n in _NAMES], dtype=np.float32)
FOREGROUND_DISTANCE = 80.0
SQUARE_FILL, TRIANGLE_FILL = 0.9, 0.64
# area / radius**2 of each shape as world.render draws it (square: same area as the circle)
_AREA_PER_RADIUS2 = {"circle": math.pi, "square": math.pi, "triangle": 3 * 3 ** 0.5 / 4 * 1.3 ** 2}


@dataclass(frozen=True)
class Analysis:
    background: str
    colour: str | None  # None: no foreground region found
    position: str | None
    shape: str | None
    size: str | None
    area: int
    fill: float


def nearest_colour(rgb) -> str:
    distance = ((_PALETTE - np.asarray(rgb, dtype=np.float32)) ** 2).sum(axis=1)
    return _NAMES[int(distance.argmin())]


def _largest_region(mask: np.ndarray) -> np.ndarray:
    """Boolean mask of the largest 4-connected component of `mask` (flood fill, fine at 64x64)."""
    labels = np.zeros(mask.shape, dtype=np.int32)
    h, w = mask.shape
    best, best_size, label = 0, 0, 0
    for y0, x0 in zip(*np.nonzero(mask)):
        if labels[y0, x0]:
            continue
        label += 1
        labels[y0, x0] = label
        stack, size = [(y0, x0)], 0
        while stack:
            y, x = stack.pop()
            size += 1
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not labels[ny, nx]:
                    labels[ny, nx] = label
                    stack.append((ny, nx))
        if size > best_size:
            best, best_size = label, size
    return labels == best if best else np.zeros_like(mask)


def position_name(x: float, y: float, side: int = IMAGE_SIZE) -> str:
    column = ("left", "centre", "right")[min(2, int(3 * x / side))]
    row = ("top", "centre", "bottom")[min(2, int(3 * y / side))]
    if row == "centre":
        return column
    if column == "centre":
        return row
    return f"{row} {column}"


def analyse(image) -> Analysis:
    """Analyse a PIL image or an (h, w, 3) uint8 array (resized to 64x64 first if needed)."""
    if isinstance(image, Image.Image):
        pil = image.convert("RGB")
    elif isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[2] == 3:
        pil = Image.fromarray(image.astype(np.uint8))
    else:
        raise ValueError(f"image must be a PIL image or an (h, w, 3) uint8 array, got {type(image).__name__}")
    if pil.size != (IMAGE_SIZE, IMAGE_SIZE):
        pil = pil.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BOX)
    pixels = np.asarray(pil, dtype=np.float32)
    border = np.concatenate([pixels[0], pixels[-1], pixels[1:-1, 0], pixels[1:-1, -1]])
    background_rgb = np.median(border, axis=0)
    background = nearest_colour(background_rgb)
    far = np.sqrt(((pixels - background_rgb) ** 2).sum(axis=2)) > FOREGROUND_DISTANCE
    region = _largest_region(far)
    area = int(region.sum())
    if area < 4:
        return Analysis(background, None, None, None, None, area, 0.0)
    colour = nearest_colour(np.median(pixels[region], axis=0))
    ys, xs = np.nonzero(region)
    height = ys.max() - ys.min() + 1
    fill = area / ((xs.max() - xs.min() + 1) * height)
    shape = "square" if fill >= SQUARE_FILL else "circle" if fill >= TRIANGLE_FILL else "triangle"
    lift = height / 6 if shape == "triangle" else 0.0
    position = position_name(xs.mean() + 0.5, ys.mean() + 0.5 - lift)
    radius = math.sqrt(area / _AREA_PER_RADIUS2[shape])
    size = "large" if radius >= (SIZES["small"] + SIZES["large"]) / 2 else "small"
    return Analysis(background, colour, position, shape, size, area, round(float(fill), 3))


def score(scene, analysis: Analysis) -> dict:
    """Per-attribute hits (True/False) for the attributes that the scene's caption names."""
    hits = {}
    for attribute in ("colour", "position", "shape", "size", "background"):
        if attribute in scene.mentioned:
            hits[attribute] = getattr(analysis, attribute) == getattr(scene, attribute)
    return hits
