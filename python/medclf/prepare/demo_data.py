"""A synthetic two-class brain-MRI-like dataset, generated from a seed, so the demo needs no
downloaded data. Same seed -> byte-identical PNGs.

Each image is an axial "slice" of one generated patient: a bright elliptical skull ring around a
textured gray brain with darker ventricles. The task is meant to be hard, like the real one:
- class `yes` adds a lesion whose size, shape, position, contrast and edge vary; many lesions are
  fainter than the image's noise and texture;
- every slice, of either class, varies in gain, smooth intensity inhomogeneity (bias field), noise
  and texture, and may carry small normal bright or dark spots (vessels, calcifications) that look
  like small lesions;
- some files are near-duplicates: an earlier patient's slice re-saved under another patient id
  with a small change (brightness, noise, a one-pixel shift), as happens when a scan is exported
  twice. The partition's duplicate search should find them and keep each pair in one split.
"""

from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("no", "yes")


def _brain(rng, size, y, x):
    """Skull ring, textured brain and ventricles: (image, brain mask, (cx, cy, ax, ay))."""
    cx, cy = size / 2 + rng.uniform(-0.09, 0.09) * size, size / 2 + rng.uniform(-0.07, 0.07) * size
    ax, ay = rng.uniform(0.28, 0.42) * size, rng.uniform(0.34, 0.44) * size
    angle = rng.uniform(-0.6, 0.6)
    cos, sin = np.cos(angle), np.sin(angle)
    u, v = (x - cx) * cos + (y - cy) * sin, -(x - cx) * sin + (y - cy) * cos
    r = np.sqrt((u / ax) ** 2 + (v / ay) ** 2)
    image = np.zeros((size, size))
    image[(r > 0.9) & (r <= 1.0)] = rng.uniform(0.75, 0.95)  # skull
    brain = r <= 0.9
    cell = int(rng.integers(4, 10))  # texture grain varies between scanners
    coarse = rng.normal(0, 1, (size // cell + 1, size // cell + 1)).astype(np.float32)
    texture = np.asarray(Image.fromarray(coarse, "F").resize((size, size), Image.Resampling.BILINEAR))
    image[brain] = rng.uniform(0.38, 0.55) + rng.uniform(0.02, 0.06) * texture[brain]
    for side in (-1, 1):  # ventricles
        vr = np.sqrt(((u - side * 0.12 * ax) / (rng.uniform(0.06, 0.10) * ax)) ** 2 + (v / (0.25 * ay)) ** 2)
        image[vr <= 1] = rng.uniform(0.15, 0.28)
    return image, brain, (cx, cy, ax, ay)


def _blob(y, x, centre, radii, angle, softness):
    """A soft-edged ellipse in [0, 1]: 1 inside, falling off over `softness` of its radius."""
    cos, sin = np.cos(angle), np.sin(angle)
    du, dv = (x - centre[0]) * cos + (y - centre[1]) * sin, -(x - centre[0]) * sin + (y - centre[1]) * cos
    d = np.sqrt((du / radii[0]) ** 2 + (dv / radii[1]) ** 2)
    return np.clip((1 + softness - d) / softness, 0, 1) ** 2


def _point_in_brain(rng, geometry, reach):
    cx, cy, ax, ay = geometry
    angle, dist = rng.uniform(0, 2 * np.pi), np.sqrt(rng.uniform(0, 1)) * reach
    return cx + dist * ax * np.cos(angle), cy + dist * ay * np.sin(angle)


def lesion_contrast(rng):
    """A lesion's peak intensity change on a 0-1 scale: median 0.22; about one in six is below
    0.12, the strongest normal spots, and some are hardly above the noise."""
    return rng.lognormal(np.log(0.22), 0.6)


def phantom(rng, size, lesion):
    """One grayscale slice as a uint8 array of shape (size, size)."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    image, brain, geometry = _brain(rng, size, y, x)
    for _ in range(rng.poisson(1.0)):  # normal spots in both classes: small, bright or dark
        radius = rng.uniform(0.015, 0.04) * size
        image += (rng.choice([-1, 1]) * rng.uniform(0.03, 0.12)
                  * _blob(y, x, _point_in_brain(rng, geometry, 0.8), (radius, radius), 0.0, 0.5) * brain)
    if lesion:
        radius = rng.uniform(0.05, 0.13) * size
        centre, angle = _point_in_brain(rng, geometry, 0.75), rng.uniform(0, np.pi)
        radii, softness = (radius, radius * rng.uniform(0.5, 1.0)), rng.uniform(0.3, 1.0)
        contrast, shape = lesion_contrast(rng), _blob(y, x, centre, radii, angle, softness)
        image += contrast * shape * brain
        if rng.uniform() < 0.4:  # some lesions have a darker oedema rim
            halo = _blob(y, x, centre, (radii[0] * 1.5, radii[1] * 1.5), angle, softness)
            image -= 0.5 * contrast * np.clip(halo - shape, 0, 1) * brain
    gain, tilt = rng.uniform(0.8, 1.15), rng.normal(0, 0.12, 2)
    bias = 1 + tilt[0] * (x / size - 0.5) + tilt[1] * (y / size - 0.5)  # coil inhomogeneity
    image = image * gain * bias + rng.normal(0, rng.uniform(0.02, 0.06), image.shape)
    return np.clip(np.round(image * 255), 0, 255).astype(np.uint8)


def near_duplicate(rng, image):
    """The same slice exported again: slightly brighter or darker, and re-noised."""
    out = image.astype(np.float64) * rng.uniform(0.97, 1.03) + rng.normal(0, 1.5, image.shape)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def plan(n_per_class, seed, duplicate_fraction):
    """For each class, the source index of each image: None for a new patient, else the earlier
    image of the same class that it near-duplicates (under its own patient id)."""
    rng = np.random.default_rng([seed, 99])
    sources = {}
    for name in CLASSES:
        n_dup = int(round(duplicate_fraction * n_per_class)) if n_per_class > 1 else 0
        copies = rng.choice(np.arange(1, n_per_class), size=min(n_dup, n_per_class - 1), replace=False)
        sources[name] = [int(rng.integers(0, i)) if i in set(copies.tolist()) else None for i in range(n_per_class)]
    return sources


def generate(out_dir, n_per_class=80, seed=0, min_size=96, max_size=128, duplicate_fraction=0.1):
    """Write OUT/no/*.png and OUT/yes/*.png (one file per patient id); returns the written paths."""
    out_dir = Path(out_dir)
    written = []
    for class_index, (name, sources) in enumerate(plan(n_per_class, seed, duplicate_fraction).items()):
        folder = out_dir / name
        folder.mkdir(parents=True, exist_ok=True)
        images = []
        for i, source in enumerate(sources):
            # One generator per image: any single image can be regenerated on its own.
            rng = np.random.default_rng([seed, class_index, i])
            if source is None:
                size = int(rng.integers(min_size, max_size + 1))
                images.append(phantom(rng, size, lesion=(name == "yes")))
            else:
                images.append(near_duplicate(rng, images[source]))
            path = folder / f"{name}_patient{i:03d}.png"
            Image.fromarray(images[-1], "L").save(path, compress_level=6)
            written.append(path)
    return written
