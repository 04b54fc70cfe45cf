"""The embedded model's world: captioned scenes of coloured shapes, drawn from a seed.

One small module serves three jobs: the training set of the embedded default model, the
DreamBooth subjects (a novel patterned object the base model never saw), and the evaluation
sets that the detectors in ``evaluation.py`` score.  Everything is deterministic from a seed.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image

IMAGE_SIZE = 64

# Object colours and backgrounds, far apart in RGB so that a tiny model can hold them and a
# nearest-colour detector can read them back.
OBJECT_COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 40),
    "blue": (35, 60, 220),
    "yellow": (240, 220, 30),
    "purple": (140, 40, 180),
    "orange": (250, 140, 20),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (245, 245, 245),
    "black": (15, 15, 15),
    "gray": (128, 128, 128),
    "blue": (35, 60, 220),
    "green": (30, 170, 40),
    "yellow": (240, 220, 30),
}
# The subject's stripe colour: purple, an object colour that is never a background, so the
# VAE has learnt to decode it (an unseen colour such as cyan came back magenta) and stripes stay
# visible on every background.  No training scene has a two-coloured object.
SUBJECT_STRIPE = (140, 40, 180)
SHAPES = ("circle", "square", "triangle")
SIZES = {"small": (9.0, 12.0), "large": (15.0, 20.0)}  # half-extent in pixels at 64 px

# Colour/shape pairs never shown in training: generating them tests composition.
HELD_OUT_PAIRS: frozenset[tuple[str, str]] = frozenset(
    {("purple", "triangle"), ("orange", "circle"), ("green", "square"), ("yellow", "triangle")}
)


@dataclass(frozen=True)
class Scene:
    """What a picture shows; ``caption`` is derived from it."""

    shape: str
    color: str
    background: str
    size: str = "large"
    cx: float = 32.0
    cy: float = 32.0
    extent: float = 16.0
    # A DreamBooth subject: the object carries a pattern the base model never saw.
    subject: bool = False

    @property
    def held_out(self) -> bool:
        return (self.color, self.shape) in HELD_OUT_PAIRS

    def caption(self, with_size: bool = True) -> str:
        size = f"{self.size} " if with_size else ""
        return f"a {size}{self.color} {self.shape} on a {self.background} background"


def valid_combinations(include_held_out: bool = True) -> list[tuple[str, str, str]]:
    """Every (shape, colour, background) whose colours differ."""
    combos = []
    for shape, color, bg in itertools.product(SHAPES, OBJECT_COLORS, BACKGROUNDS):
        if color == bg:
            continue
        if not include_held_out and (color, shape) in HELD_OUT_PAIRS:
            continue
        combos.append((shape, color, bg))
    return combos


def random_scene(rng: random.Random, *, include_held_out: bool = False, **fixed: object) -> Scene:
    """A scene with random placement; any field may be fixed by keyword."""
    while True:
        shape = str(fixed.get("shape") or rng.choice(SHAPES))
        color = str(fixed.get("color") or rng.choice(list(OBJECT_COLORS)))
        bg = str(fixed.get("background") or rng.choice(list(BACKGROUNDS)))
        if color == bg:
            if "color" in fixed and "background" in fixed:
                raise ValueError(f"object colour equals background: {color}")
            continue
        pinned = "color" in fixed and "shape" in fixed
        if not include_held_out and not pinned and (color, shape) in HELD_OUT_PAIRS:
            continue
        break
    size = str(fixed.get("size") or rng.choice(list(SIZES)))
    lo, hi = SIZES[size]
    extent = rng.uniform(lo, hi)
    margin = extent + 2
    cx = rng.uniform(margin, IMAGE_SIZE - margin)
    cy = rng.uniform(margin, IMAGE_SIZE - margin)
    return Scene(shape, color, bg, size, cx, cy, extent, bool(fixed.get("subject", False)))


def _shape_mask(scene: Scene, size: int, supersample: int = 4) -> np.ndarray:
    """Anti-aliased coverage (0..1) of the object, computed on a supersampled grid."""
    n = size * supersample
    coords = (np.arange(n) + 0.5) / supersample
    x, y = np.meshgrid(coords, coords)
    scale = size / IMAGE_SIZE
    cx, cy, r = scene.cx * scale, scene.cy * scale, scene.extent * scale
    dx, dy = x - cx, y - cy
    if scene.shape == "circle":
        inside = dx * dx + dy * dy <= r * r
    elif scene.shape == "square":
        s = r * 0.886  # same area as the circle of radius r
        inside = (np.abs(dx) <= s) & (np.abs(dy) <= s)
    elif scene.shape == "triangle":
        # Upward equilateral-ish triangle inscribed in the circle of radius r*1.25.
        R = r * 1.25
        top, base = cy - R, cy + R * 0.5
        half_w = R * 0.866
        t = (y - top) / (base - top)
        inside = (t >= 0) & (t <= 1) & (np.abs(dx) <= half_w * t)
    else:
        raise ValueError(f"unknown shape {scene.shape!r}")
    cov = inside.reshape(size, supersample, size, supersample).mean(axis=(1, 3))
    return cov.astype(np.float32)


def subject_pattern(size: int) -> np.ndarray:
    """The DreamBooth subject's look: wide diagonal stripes of its colour and purple.

    Stripes two latent pixels wide (8 px at 64 px) survive the 4x VAE.
    """
    y, x = np.mgrid[0:size, 0:size]
    period = max(2, size // 4)
    return (((x + y) // period) % 2).astype(np.float32)


def render(scene: Scene, size: int = IMAGE_SIZE) -> Image.Image:
    """Draw the scene as an RGB image."""
    bg = np.array(BACKGROUNDS[scene.background], np.float32)
    fg = np.array(OBJECT_COLORS[scene.color], np.float32)
    img = np.broadcast_to(bg, (size, size, 3)).copy()
    cov = _shape_mask(scene, size)[..., None]
    colour = np.broadcast_to(fg, (size, size, 3))
    if scene.subject:
        stripe = subject_pattern(size)[..., None]
        colour = fg * (1 - stripe) + np.array(SUBJECT_STRIPE, np.float32) * stripe
    img = img * (1 - cov) + colour * cov
    return Image.fromarray(np.clip(img + 0.5, 0, 255).astype(np.uint8), "RGB")


def caption_variants(scene: Scene, rng: random.Random) -> str:
    """Training captions vary a little so the text encoder learns the words, not a template."""
    choice = rng.random()
    if choice < 0.6:
        return scene.caption(with_size=True)
    if choice < 0.9:
        return scene.caption(with_size=False)
    return f"a picture of a {scene.color} {scene.shape} on a {scene.background} background"


def training_example(seed: int) -> tuple[Image.Image, str, Scene]:
    """Example number ``seed`` of the training set (held-out pairs excluded)."""
    rng = random.Random(seed)
    scene = random_scene(rng)
    return render(scene), caption_variants(scene, rng), scene


def evaluation_set(seeds_per_combo: int = 1, base_seed: int = 1234) -> list[tuple[Scene, int]]:
    """Every valid (shape, colour, background), each with ``seeds_per_combo`` seeds."""
    items = []
    for i, (shape, color, bg) in enumerate(valid_combinations(include_held_out=True)):
        for k in range(seeds_per_combo):
            seed = base_seed + i * 100 + k
            scene = random_scene(random.Random(seed), include_held_out=True,
                                 shape=shape, color=color, background=bg)
            items.append((scene, seed))
    return items


def subject_images(count: int = 4, *, seed: int = 7, shape: str = "circle",
                   color: str = "red", alpha: bool = False) -> list[tuple[Image.Image, Scene]]:
    """Instance images of the DreamBooth subject: a striped object on varied backgrounds.
    With `alpha`, RGBA pictures whose alpha is the object's coverage (the mask a user draws
    for masked training)."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        scene = random_scene(rng, shape=shape, color=color, subject=True, size="large")
        img = render(scene)
        if alpha:
            cover = np.clip(_shape_mask(scene, img.width) * 255 + 0.5, 0, 255).astype(np.uint8)
            img.putalpha(Image.fromarray(cover, "L"))
        out.append((img, scene))
    return out
