"""Synthetic duplicates of real images, one transform family at a time: what the duplicate
detector must recognise (benchmarks/duplicates.py measures its recall per family; the tests
check each family on real images)."""

import io

from PIL import Image, ImageEnhance

FAMILIES = ("dihedral", "crop", "zoom", "rotation", "brightness_contrast", "jpeg", "half")
DIHEDRAL = (None, Image.Transpose.FLIP_LEFT_RIGHT, Image.Transpose.FLIP_TOP_BOTTOM, Image.Transpose.ROTATE_90,
            Image.Transpose.ROTATE_180, Image.Transpose.ROTATE_270, Image.Transpose.TRANSPOSE,
            Image.Transpose.TRANSVERSE)


def _zoom(image, factor):
    """Scale about the centre on the same canvas (> 1 zooms in; < 1 leaves a black border)."""
    w, h = image.size
    a = 1.0 / factor
    matrix = (a, 0, w / 2 * (1 - a), 0, a, h / 2 * (1 - a))
    return image.transform((w, h), Image.Transform.AFFINE, matrix, Image.Resampling.BILINEAR)


def synthetic_copy(image, family, rng, variant=None):
    """(copy, description) of an RGB image. Families and ranges:
    dihedral: one of the 8 flips/rotations (`variant` 0-7, 0 = unchanged); crop: keep 80-95 % of
    each side at a random offset; zoom: 0.9-1.1 about the centre; rotation: up to 15 degrees
    either way (black corners); brightness_contrast: each factor 0.85-1.15; jpeg: quality 60-90;
    half: half the width and height. Every copy but jpeg's is meant to be saved losslessly or
    as a quality-95 JPEG (`encode`)."""
    w, h = image.size
    if family == "dihedral":
        k = int(rng.integers(0, 8)) if variant is None else variant
        return (image.copy() if DIHEDRAL[k] is None else image.transpose(DIHEDRAL[k])), f"dihedral {k}"
    if family == "crop":
        fw, fh = rng.uniform(0.80, 0.95, 2)
        cw, ch = round(w * fw), round(h * fh)
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        return image.crop((x, y, x + cw, y + ch)), f"crop {fw:.2f}x{fh:.2f}"
    if family == "zoom":
        factor = float(rng.uniform(0.9, 1.1))
        return _zoom(image, factor), f"zoom {factor:.3f}"
    if family == "rotation":
        angle = float(rng.uniform(-15, 15))
        return image.rotate(angle, Image.Resampling.BILINEAR), f"rotation {angle:.1f}"
    if family == "brightness_contrast":
        b, c = rng.uniform(0.85, 1.15, 2)
        copy = ImageEnhance.Contrast(ImageEnhance.Brightness(image).enhance(b)).enhance(c)
        return copy, f"brightness {b:.2f} contrast {c:.2f}"
    if family == "jpeg":
        quality = int(rng.integers(60, 91))
        return image.copy(), f"jpeg {quality}"
    if family == "half":
        return image.resize((max(1, w // 2), max(1, h // 2)), Image.Resampling.LANCZOS), "half"
    raise ValueError(f"unknown transform family {family!r}; one of {', '.join(FAMILIES)}")


def encode(image, description):
    """JPEG bytes of a copy: its own quality for the jpeg family, 95 otherwise."""
    quality = int(description.split()[1]) if description.startswith("jpeg ") else 95
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()
