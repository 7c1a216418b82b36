"""A seeded procedural world of captioned images: one coloured shape on a plain background.

Every sample is described by five attributes (shape, colour, size, position, background) and rendered at
64x64 with 4x supersampling; the caption names the shape and colour always and the other attributes most of
the time, with varied wording. The same seed always gives the same images and captions.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 64
SUPERSAMPLE = 4

COLOURS = {
    "red": (220, 30, 30),
    "orange": (250, 140, 20),
    "yellow": (245, 225, 30),
    "green": (30, 170, 50),
    "blue": (30, 70, 230),
    "purple": (140, 40, 190),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
}
SHAPES = ("circle", "square", "triangle")
SIZES = {"small": 7.0, "large": 12.0}  # radius in pixels of a 64x64 image
POSITIONS = {  # name -> (x, y) as fractions of the image side
    "top left": (0.25, 0.25), "top": (0.5, 0.25), "top right": (0.75, 0.25),
    "left": (0.25, 0.5), "centre": (0.5, 0.5), "right": (0.75, 0.5),
    "bottom left": (0.25, 0.75), "bottom": (0.5, 0.75), "bottom right": (0.75, 0.75),
}

SHAPE_WORDS = {"circle": ("circle", "circle", "disc"), "square": ("square",), "triangle": ("triangle",)}
SIZE_WORDS = {"small": ("small", "small", "little", "tiny"), "large": ("large", "large", "big")}
_CORNER_PHRASES = ("at the {v} {h}", "in the {v} {h} corner", "in the {v} {h}", "{v} {h}")
_SIDE_PHRASES = {
    "left": ("on the left", "at the left", "to the left", "on the left side"),
    "right": ("on the right", "at the right", "to the right", "on the right side"),
    "top": ("at the top", "near the top", "at the top edge"),
    "bottom": ("at the bottom", "near the bottom", "at the bottom edge"),
    "centre": ("in the centre", "in the center", "in the middle", "at the centre"),
}
_BACKGROUND_PHRASES = ("on {a} {c} background", "on {a} {c} background", "against {a} {c} background",
                       "with {a} {c} background", "over {a} {c} background", "on {c}")


@dataclass(frozen=True)
class Scene:
    """The ground truth of one sample; `caption` mentions `mentioned` attributes only."""

    shape: str
    colour: str
    size: str
    position: str
    background: str
    caption: str
    mentioned: frozenset
    cx: float  # centre in pixels
    cy: float
    radius: float

    def render(self) -> Image.Image:
        return render(self)


def position_phrase(position: str, rng: random.Random) -> str:
    if " " in position:
        vertical, horizontal = position.split(" ")
        if rng.random() < 0.3:
            vertical = {"top": "upper", "bottom": "lower"}[vertical]
        return rng.choice(_CORNER_PHRASES).format(v=vertical, h=horizontal)
    return rng.choice(_SIDE_PHRASES[position])


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def make_caption(shape, colour, size, position, background, rng: random.Random) -> str:
    """Caption naming the given attributes; `size`, `position` or `background` may be None (not said)."""
    noun = rng.choice(SHAPE_WORDS[shape])
    adjectives = ([rng.choice(SIZE_WORDS[size])] if size else []) + [colour]
    if size and rng.random() < 0.2:
        adjectives.reverse()  # "a red small circle" is odd but people type it
    subject = " ".join(adjectives + [noun])
    subject = f"{_article(subject)} {subject}"
    where = position_phrase(position, rng) if position else ""
    if background is None:
        return f"{subject} {where}".strip()
    if rng.random() < 0.15:
        return f"{_article(background)} {background} background with {subject} {where}".strip()
    ground = rng.choice(_BACKGROUND_PHRASES).format(a=_article(background), c=background)
    if where and rng.random() < 0.5:
        return f"{subject} {where} {ground}"
    return f"{subject} {ground} {where}".strip()


def sample_scene(rng: random.Random, p_size=0.6, p_position=0.75, p_background=0.85) -> Scene:
    """Draw one scene; each optional attribute is named in the caption with the given probability."""
    shape = rng.choice(SHAPES)
    colour = rng.choice(sorted(COLOURS))
    background = rng.choice([c for c in sorted(COLOURS) if c != colour])
    size = rng.choice(sorted(SIZES))
    position = rng.choice(list(POSITIONS))
    said = {"shape", "colour"}
    said |= {"size"} if rng.random() < p_size else set()
    said |= {"position"} if rng.random() < p_position else set()
    said |= {"background"} if rng.random() < p_background else set()
    caption = make_caption(shape, colour, size if "size" in said else None,
                           position if "position" in said else None,
                           background if "background" in said else None, rng)
    fx, fy = POSITIONS[position]
    cx = fx * IMAGE_SIZE + rng.uniform(-3, 3)
    cy = fy * IMAGE_SIZE + rng.uniform(-3, 3)
    radius = SIZES[size] + rng.uniform(-1, 1)
    return Scene(shape, colour, size, position, background, caption, frozenset(said), cx, cy, radius)


def render(scene: Scene) -> Image.Image:
    """Draw `scene` as a 64x64 RGB image (antialiased by drawing at 4x and downsampling)."""
    s = SUPERSAMPLE
    img = Image.new("RGB", (IMAGE_SIZE * s, IMAGE_SIZE * s), COLOURS[scene.background])
    draw = ImageDraw.Draw(img)
    x, y, r, fill = scene.cx * s, scene.cy * s, scene.radius * s, COLOURS[scene.colour]
    if scene.shape == "circle":
        draw.ellipse([x - r, y - r, x + r, y + r], fill=fill)
    elif scene.shape == "square":
        h = 0.886 * r  # same area as the circle
        draw.rectangle([x - h, y - h, x + h, y + h], fill=fill)
    else:
        big = 1.3 * r  # circumradius of an equilateral triangle, its box centred on (x, y)
        half_w, half_h = big * 3 ** 0.5 / 2, 0.75 * big
        draw.polygon([(x, y - half_h), (x + half_w, y + half_h), (x - half_w, y + half_h)], fill=fill)
    return img.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BOX)


class ShapesWorld:
    """An infinite, seeded stream of scenes: `ShapesWorld(seed).scenes(n)` or `.batch(n)`."""

    def __init__(self, seed: int = 0, **probabilities):
        self.rng = random.Random(seed)
        self.probabilities = probabilities

    def scene(self) -> Scene:
        return sample_scene(self.rng, **self.probabilities)

    def scenes(self, n: int) -> list:
        return [self.scene() for _ in range(n)]

    def batch(self, n: int):
        """`n` scenes and their images as a uint8 array of shape (n, 64, 64, 3)."""
        scenes = self.scenes(n)
        return scenes, np.stack([np.asarray(render(s)) for s in scenes])


def vocabulary() -> list:
    """Every word a caption can contain (the text encoder's vocabulary is built from it)."""
    words = set(COLOURS) | set(SIZES) | {"a", "an", "the", "background", "with", "corner", "side", "edge"}
    for names in (SHAPE_WORDS, SIZE_WORDS):
        for options in names.values():
            words |= set(options)
    for phrases in list(_SIDE_PHRASES.values()) + [_CORNER_PHRASES, _BACKGROUND_PHRASES]:
        for phrase in phrases:
            words |= set(phrase.replace("{v}", "top").replace("{h}", "left").replace("{c}", "red").replace("{a}", "a").split())
    words |= {"upper", "lower", "bottom", "right", "top", "left"}
    return sorted(words)
