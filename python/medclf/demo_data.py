"""A synthetic two-class brain-MRI-like dataset, generated from a seed, so the demo needs no
downloaded data. Each image is an axial "slice": a bright elliptical skull ring around a
textured gray brain with darker ventricles, plus noise; class `yes` adds a lesion (a bright,
soft-edged blob with a dark rim) somewhere in the brain. Same seed -> byte-identical PNGs.
"""

from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("no", "yes")


def phantom(rng, size, lesion):
    """One grayscale slice as a uint8 array of shape (size, size)."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    cx, cy = size / 2 + rng.uniform(-0.05, 0.05) * size, size / 2 + rng.uniform(-0.05, 0.05) * size
    ax, ay = rng.uniform(0.34, 0.42) * size, rng.uniform(0.40, 0.46) * size
    angle = rng.uniform(-0.25, 0.25)
    cos, sin = np.cos(angle), np.sin(angle)
    u, v = (x - cx) * cos + (y - cy) * sin, -(x - cx) * sin + (y - cy) * cos
    r = np.sqrt((u / ax) ** 2 + (v / ay) ** 2)
    image = np.zeros((size, size))
    image[(r > 0.9) & (r <= 1.0)] = rng.uniform(0.8, 0.95)  # skull
    brain = r <= 0.9
    texture = rng.normal(0, 1, (size // 8 + 1, size // 8 + 1))
    texture = np.kron(texture, np.ones((8, 8)))[:size, :size]
    image[brain] = rng.uniform(0.4, 0.55) + 0.05 * texture[brain]
    for side in (-1, 1):  # ventricles
        vr = np.sqrt(((u - side * 0.12 * ax) / (0.08 * ax)) ** 2 + (v / (0.25 * ay)) ** 2)
        image[vr <= 1] = rng.uniform(0.15, 0.25)
    if lesion:
        angle_l, dist = rng.uniform(0, 2 * np.pi), rng.uniform(0.25, 0.6)
        lx, ly = cx + dist * ax * np.cos(angle_l), cy + dist * ay * np.sin(angle_l)
        radius = rng.uniform(0.08, 0.16) * size
        d = np.sqrt((x - lx) ** 2 + (y - ly) ** 2) / radius
        image += (0.45 * np.exp(-(d ** 2) * 2.0) - 0.15 * np.exp(-((d - 1.1) ** 2) * 20)) * brain
    image += rng.normal(0, 0.03, image.shape)
    return np.clip(np.round(image * 255), 0, 255).astype(np.uint8)


def generate(out_dir, n_per_class=60, seed=0, min_size=96, max_size=128):
    """Write OUT/no/*.png and OUT/yes/*.png; returns the list of written paths."""
    out_dir = Path(out_dir)
    written = []
    for class_index, name in enumerate(CLASSES):
        folder = out_dir / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            # One generator per image: any single image can be regenerated on its own.
            rng = np.random.default_rng([seed, class_index, i])
            size = int(rng.integers(min_size, max_size + 1))
            path = folder / f"{name}_{i:03d}.png"
            Image.fromarray(phantom(rng, size, lesion=(name == "yes")), "L").save(path, compress_level=6)
            written.append(path)
    return written
