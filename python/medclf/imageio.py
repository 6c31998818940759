"""The one image reader of medclf.

`read_image(path)` returns an 8-bit RGB `PIL.Image` for JPEG, PNG, BMP, TIFF (8 and 16 bit),
GIF/WebP and DICOM, whatever the colour mode (L, RGB, RGBA, P, I;16, I, F) and whatever the
file extension claims: the format is taken from the file's content. EXIF orientation is
applied. Any failure (truncated, not an image, empty) raises UnreadableImageError naming the
file, so callers can warn, skip and count instead of crashing.
"""

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from medclf.errors import UnreadableImageError

# Files with these extensions are treated as images when a folder is scanned.
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".gif", ".webp", ".dcm", ".dicom"})

_DICOM_MAGIC_OFFSET = 128


def is_image_name(path):
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def _is_dicom(path):
    with open(path, "rb") as fh:
        head = fh.read(_DICOM_MAGIC_OFFSET + 4)
    return head[_DICOM_MAGIC_OFFSET:] == b"DICM"


def _to_uint8(array, low=None, high=None):
    """Linearly map [low, high] (default: the array's min and max) to [0, 255]."""
    array = np.asarray(array, dtype=np.float64)
    if low is None:
        low, high = float(np.nanmin(array)), float(np.nanmax(array))
    if high <= low:
        return np.zeros(array.shape, dtype=np.uint8)
    scaled = (np.clip(array, low, high) - low) / (high - low) * 255.0
    return np.round(scaled).astype(np.uint8)


def _first(value):
    if value is None:
        return None
    try:
        return float(value[0]) if hasattr(value, "__len__") and not isinstance(value, str) else float(value)
    except (TypeError, ValueError, IndexError):
        return None


def _read_dicom(path):
    try:
        import pydicom
    except ImportError as exc:  # pragma: no cover - pydicom is a pinned requirement
        raise UnreadableImageError(path, "DICOM needs pydicom: pip install pydicom") from exc
    try:
        ds = pydicom.dcmread(str(path))
        pixels = ds.pixel_array
    except Exception as exc:  # pydicom raises many types for corrupt files
        raise UnreadableImageError(path, f"invalid DICOM: {exc}") from exc
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2"))
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if frames > 1:
        pixels = pixels[frames // 2]  # the middle frame is the most representative slice
    if photometric in ("RGB", "YBR_FULL", "YBR_FULL_422") and pixels.ndim == 3:
        if photometric != "RGB":
            from pydicom.pixels import convert_color_space

            pixels = convert_color_space(pixels, photometric, "RGB")
        return Image.fromarray(_to_uint8(pixels, 0, 255) if pixels.dtype != np.uint8 else pixels, "RGB")
    values = pixels.astype(np.float64) * float(getattr(ds, "RescaleSlope", 1) or 1) + float(
        getattr(ds, "RescaleIntercept", 0) or 0
    )
    center, width = _first(getattr(ds, "WindowCenter", None)), _first(getattr(ds, "WindowWidth", None))
    if center is not None and width is not None and width > 0:
        gray = _to_uint8(values, center - width / 2.0, center + width / 2.0)
    else:
        gray = _to_uint8(values)
    if photometric == "MONOCHROME1":  # MONOCHROME1 shows low values as white
        gray = 255 - gray
    return Image.fromarray(gray, "L").convert("RGB")


def _pil_to_rgb(img):
    img = ImageOps.exif_transpose(img)
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit and float scans: stretch the image's own range to 8 bits.
        return Image.fromarray(_to_uint8(np.asarray(img)), "L").convert("RGB")
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA"):
        # Transparent pixels become black, the background of MRI and most scans.
        background = Image.new("RGB", img.size, (0, 0, 0))
        background.paste(img.convert("RGBA"), mask=img.convert("RGBA").getchannel("A"))
        return background
    return img.convert("RGB")


def read_image(path, draft_size=None):
    """Read any supported image file as 8-bit RGB. Raises UnreadableImageError.

    `draft_size`: a JPEG may be decoded at 1/2, 1/4 or 1/8 scale (`Image.draft`) as long as both
    sides stay at least this large, which is several times faster for thumbnails; other formats
    are decoded in full. The whole file is still read, so truncated files fail as usual."""
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise UnreadableImageError(path, "empty file")
        if _is_dicom(path) or path.suffix.lower() in (".dcm", ".dicom"):
            return _read_dicom(path)
        with Image.open(path) as img:
            if draft_size and img.format == "JPEG":
                img.draft(img.mode, (draft_size, draft_size))
            img.load()  # decode now: truncated files fail here, not later in a worker
            return _pil_to_rgb(img)
    except UnreadableImageError:
        raise
    except FileNotFoundError as exc:
        raise UnreadableImageError(path, "file not found") from exc
    except UnidentifiedImageError as exc:
        raise UnreadableImageError(path, "not an image file (content is not JPEG/PNG/BMP/TIFF/DICOM)") from exc
    except Exception as exc:  # Pillow plugins raise many types (DecompressionBombError, struct.error...)
        raise UnreadableImageError(path, f"corrupt or truncated: {exc}") from exc
