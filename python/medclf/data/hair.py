"""Synthetic hair on dermoscopy images: the `hair` augmentation step (DrawHair of the
attention-guided-cropping seed, with curved strands and a reproducible random stream).

`paint_hair(image, rng)` is pure: dark quadratic Bezier strands, each with its own colour, width
and opacity drawn from `rng`, alpha-blended into a uint8 (3, H, W) tensor (a new tensor; the
input is left as it was). `RandomHair` is the transform step. Its generator is seeded from the
epoch's seed and the image's own pixels, not from torch's shared stream, so
  * the strands of an image depend only on (run seed, epoch, image): not on the order in which
    the loader visits images, and the same in a rerun or a resumed run;
  * adding the step does not change any other augmentation's draws, so a run with `+hair`
    differs from its plain twin only by the hair.
The epoch's seed is `torch.initial_seed()`, which training sets to `epoch_seed(seed, epoch)` at
the start of every epoch; in a DataLoader worker process it is that worker's seed, itself derived
from the epoch's loader generator, so the strands stay reproducible for a given --workers.
"""

import zlib

import numpy as np
import torch

MAX_STRANDS = 6
WIDTH_FRACTION = (0.006, 0.025)  # strand width as a fraction of the image side (about 1-3 px at 64-128 px)
OPACITY = (0.6, 1.0)
DARKNESS = (0, 90)  # channel values of a strand: black to dark brown
CURVE_POINTS = 32
SUPERSAMPLE = 4


def image_key(image):
    """A 32-bit digest of the pixels (crc32): the image's identity for the hair generator."""
    return zlib.crc32(np.ascontiguousarray(image.numpy()).tobytes())


def hair_generator(epoch_seed, image):
    """numpy Generator for one (epoch seed, image) pair."""
    return np.random.default_rng([int(epoch_seed) % 2**63, image_key(image)])


def _strand_mask(rng, height, width):
    """Coverage in [0, 1] of one curved strand, (H, W) float32: a quadratic Bezier polyline drawn
    by PIL at SUPERSAMPLE x the size and box-filtered down (anti-aliased, and fast in C)."""
    from PIL import Image, ImageDraw

    side = max(height, width)
    start, end = rng.uniform(0, 1, 2) * [width, height], rng.uniform(0, 1, 2) * [width, height]
    bend = (start + end) / 2 + rng.normal(0, 0.25 * side, 2)  # the control point bends the strand
    t = np.linspace(0, 1, CURVE_POINTS)[:, None]
    curve = (1 - t) ** 2 * start + 2 * (1 - t) * t * bend + t ** 2 * end  # (P, 2) as (x, y)
    stroke = max(1, int(round(rng.uniform(*WIDTH_FRACTION) * side * SUPERSAMPLE)))
    canvas = Image.new("L", (width * SUPERSAMPLE, height * SUPERSAMPLE), 0)
    ImageDraw.Draw(canvas).line([tuple(p) for p in curve * SUPERSAMPLE], fill=255, width=stroke, joint="curve")
    small = canvas.resize((width, height), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


def paint_hair(image, rng, n_strands=None):
    """A copy of uint8 `image` (3, H, W) with `n_strands` (default: 0..MAX_STRANDS drawn from
    `rng`) dark curved strands of random colour, width and opacity."""
    count = int(rng.integers(0, MAX_STRANDS + 1)) if n_strands is None else int(n_strands)
    out = image.numpy().astype(np.float32)
    _, height, width = out.shape
    for _ in range(count):
        mask = _strand_mask(rng, height, width) * rng.uniform(*OPACITY)
        base = rng.uniform(*DARKNESS)
        colour = np.clip(base * np.array([1.0, 0.8, 0.65]) + rng.uniform(-8, 8, 3), 0, 255)  # brownish black
        out = out * (1 - mask) + colour[:, None, None] * mask
    return torch.from_numpy(np.clip(np.rint(out), 0, 255).astype(np.uint8))


class RandomHair(torch.nn.Module):
    """Transform step on uint8 (3, H, W): paint 0..max_strands strands (at least min_strands),
    reproducibly per (epoch seed, image); see the module docstring."""

    def __init__(self, min_strands=0, max_strands=MAX_STRANDS):
        super().__init__()
        self.min_strands, self.max_strands = int(min_strands), int(max_strands)

    def forward(self, image):
        rng = hair_generator(torch.initial_seed(), image)
        count = int(rng.integers(self.min_strands, self.max_strands + 1))
        return paint_hair(image, rng, count)
