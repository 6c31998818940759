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

from medclf.core.errors import UnreadableImageError

# Files with these extensions are treated as images when a folder is scanned.
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".gif", ".webp", ".dcm", ".dicom"})

_DICOM_MAGIC_OFFSET = 128
# The only Pillow decoders medclf lets read a file (found from the content): no other plugin
# (EPS through Ghostscript, PSD, ...) ever parses an input.
PIL_FORMATS = ("JPEG", "PNG", "BMP", "TIFF", "GIF", "WEBP")


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


PIXEL_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
DECODERS_HINT = "pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg pylibjpeg-rle (pinned in requirements.txt)"


def _dicom_kind(ds):
    """'RT Plan Storage (modality RTPLAN)'-like words for a refusal message."""
    sop = getattr(ds, "SOPClassUID", None)
    name = getattr(sop, "name", None) or str(sop or "unknown SOP class")
    return f"{name}, modality {getattr(ds, 'Modality', '?')}"


def _read_dicom(path):
    """Decode a DICOM file's pixels. Files without the 128-byte preamble and 'DICM' (older
    ACR-NEMA style, or stripped by tools) are read with force=True; files without pixel data
    (structured reports, RT plans, waveforms, ...) are refused with their kind."""
    try:
        import pydicom
    except ImportError as exc:  # pragma: no cover - pydicom is a pinned requirement
        raise UnreadableImageError(path, "DICOM needs pydicom: pip install pydicom") from exc
    try:
        ds = pydicom.dcmread(str(path), force=True)
    except Exception as exc:  # pydicom raises many types for corrupt files
        raise UnreadableImageError(path, f"invalid DICOM: {exc}") from exc
    if not any(tag in ds for tag in PIXEL_TAGS):
        raise UnreadableImageError(path, f"DICOM without pixel data ({_dicom_kind(ds)}): not an image; "
                                         "leave it out of the image folder")
    try:
        pixels = ds.pixel_array
    except Exception as exc:
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        syntax = getattr(syntax, "name", syntax)
        message = str(exc)
        if "exceptions were raised by all available plugins" in message:
            first = message.splitlines()[1].strip() if len(message.splitlines()) > 1 else message
            raise UnreadableImageError(path, f"corrupt or non-conformant {syntax} pixel data (every decoder failed; "
                                             f"{first})") from exc
        if "plugin" in message:  # pydicom: "... not supported by any of the available decoding plugins"
            raise UnreadableImageError(path, f"no decoder for transfer syntax {syntax}; {DECODERS_HINT}") from exc
        raise UnreadableImageError(path, f"invalid DICOM pixel data: {message}") from exc
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2"))
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if frames > 1:
        pixels = pixels[frames // 2]  # the middle frame is the most representative slice
    if pixels.ndim == 3:  # three samples per pixel: pydicom >= 3 already returns YBR_* converted to RGB
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
        with Image.open(path, formats=PIL_FORMATS) as img:
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
