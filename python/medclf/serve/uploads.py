"""Untrusted uploads for `medclf serve`: format from content, pixel limit, streaming size cap, headers.

`read_upload(data, name, max_pixels)` turns the bytes of one uploaded file into an 8-bit RGB
`PIL.Image` through medclf's one reader (`medclf.data.imageio.read_image`), after three checks that
need no decoding:
  * the format is detected from the first bytes (`sniff_format`): JPEG, PNG, BMP, TIFF, GIF, WebP
    or DICOM (part 10, with 'DICM' at byte 128); anything else is refused (415) whatever its name
    or content type says, so no other Pillow plugin ever sees it;
  * the pixel count read from the header (Pillow's lazy open limited to that one format, or the
    DICOM header without its pixel data) must not exceed `max_pixels` (422);
  * decoding runs with Pillow's DecompressionBombWarning turned into a refusal, a second line of
    defence where a header understates the pixels.
Every refusal is an `UploadError(status, message)` whose message reads `<file>: <what>; <fix>`.

`BodySizeLimit` is an ASGI middleware that refuses a request body above a byte cap with 413:
at once when Content-Length says so, otherwise as soon as the streamed body passes the cap, so
an oversized upload is never held in full. `SecurityHeaders` adds nosniff and a content security
policy that allows nothing from outside the server.
"""

import json
import os
import tempfile
import threading
import warnings
from pathlib import Path

from PIL import Image

from medclf.core.errors import MedclfError, UnreadableImageError
from medclf.data.imageio import read_image

PIL_FORMATS = {"JPEG": (b"\xff\xd8\xff",), "PNG": (b"\x89PNG\r\n\x1a\n",), "BMP": (b"BM",),
               "TIFF": (b"II*\x00", b"MM\x00*"), "GIF": (b"GIF87a", b"GIF89a")}
FORMAT_NAMES = "JPEG, PNG, BMP, TIFF, GIF, WebP or DICOM"
# One decode at a time: a full-resolution image is the largest object a request creates, and
# warnings.catch_warnings (global state) is then never entered by two threads at once.
_DECODE_LOCK = threading.Lock()


class UploadError(MedclfError):
    """A refused upload: the HTTP status and one line for the user."""

    def __init__(self, status, message):
        self.status = status
        super().__init__(message)


def sniff_format(head):
    """Format name from a file's first 132 bytes, or None."""
    for name, magics in PIL_FORMATS.items():
        if any(head.startswith(m) for m in magics):
            return name
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[128:132] == b"DICM":
        return "DICOM"
    return None


def header_pixels(path, fmt):
    """(width, height, frames) from the header only; the pixel data is not decoded."""
    if fmt == "DICOM":
        import pydicom

        ds = pydicom.dcmread(str(path), stop_before_pixels=True, force=True)
        return int(ds.get("Columns", 0) or 0), int(ds.get("Rows", 0) or 0), int(ds.get("NumberOfFrames", 1) or 1)
    with Image.open(path, formats=[fmt]) as img:
        return img.size[0], img.size[1], int(getattr(img, "n_frames", 1) or 1)


def _bomb(exc):
    """Whether an exception is (or was caused by) Pillow's decompression-bomb check."""
    kinds = (Image.DecompressionBombWarning, Image.DecompressionBombError)
    return isinstance(exc, kinds) or isinstance(exc.__cause__, kinds)


def _bomb_refusal(name, exc):
    cause = exc if isinstance(exc, Warning) or exc.__cause__ is None else exc.__cause__
    return UploadError(422, f"{name}: refused as a possible decompression bomb ({cause}); upload a smaller image")


def _check_pixels(path, name, fmt, max_pixels):
    try:
        width, height, frames = header_pixels(path, fmt)
    except Exception as exc:  # Pillow and pydicom raise many types for a broken header
        if _bomb(exc):
            raise _bomb_refusal(name, exc) from exc
        raise UploadError(422, f"{name}: not a readable {fmt} file ({exc}); upload the original image") from exc
    if width * height > max_pixels or width * height * frames > 4 * max_pixels:
        raise UploadError(422, f"{name}: {width} x {height} pixels{f' x {frames} frames' if frames > 1 else ''} "
                               f"is above this server's limit of {max_pixels:,} pixels; upload a smaller image")


def read_upload(data, name, max_pixels):
    """8-bit RGB PIL image of an uploaded file's bytes (see the module docstring)."""
    if not data:
        raise UploadError(422, f"{name}: empty file; upload an image file")
    fmt = sniff_format(data[:132])
    if fmt is None:
        raise UploadError(415, f"{name}: not an image (the content is not {FORMAT_NAMES}, whatever the file name "
                               "says); upload an image file")
    with tempfile.TemporaryDirectory(prefix="medclf-upload-") as tmp, _DECODE_LOCK, warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        path = Path(tmp) / "upload"
        with open(path, "wb") as fh:
            fh.write(data)
        _check_pixels(path, name, fmt, max_pixels)
        try:
            return read_image(path)
        except UnreadableImageError as exc:
            if _bomb(exc):
                raise _bomb_refusal(name, exc) from exc
            raise UploadError(422, f"{name}: cannot read this {fmt} file ({exc.reason}); "
                                   "upload the original, complete image") from exc


def _json_response(status, message):
    body = json.dumps({"detail": message}).encode("utf-8")
    return ({"type": "http.response.start", "status": status,
             "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]},
            {"type": "http.response.body", "body": body})


class BodySizeLimit:
    """Refuse request bodies above `max_bytes` with 413, while streaming (see the module docstring)."""

    def __init__(self, app, max_bytes):
        self.app = app
        self.max_bytes = int(max_bytes)

    def message(self):
        return (f"request body above this server's limit of {self.max_bytes:,} bytes; upload fewer or smaller "
                "images (medclf serve --max-upload-mb)")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            for event in _json_response(413, self.message()):
                await send(event)
            return
        received = 0

        async def limited_receive():
            nonlocal received
            event = await receive()
            if event["type"] == "http.request":
                received += len(event.get("body", b""))
                if received > self.max_bytes:
                    from fastapi import HTTPException

                    # FastAPI re-raises an HTTPException met while reading the body: it becomes the 413.
                    raise HTTPException(status_code=413, detail=self.message())
            return event

        await self.app(scope, limited_receive, send)


PAGE_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
               "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
# Swagger UI's page starts itself with one inline script (FastAPI's get_swagger_ui_html).
DOCS_POLICY = ("default-src 'none'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
               "img-src 'self' data:; connect-src 'self'; base-uri 'none'; frame-ancestors 'none'")


class SecurityHeaders:
    """nosniff, no framing, no referrer, and a content security policy on every response."""

    def __init__(self, app, docs_path="/docs"):
        self.app = app
        self.docs_path = docs_path

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        policy = DOCS_POLICY if scope.get("path") == self.docs_path else PAGE_POLICY

        async def send_with_headers(event):
            if event["type"] == "http.response.start":
                headers = [(k, v) for k, v in event.get("headers", []) if k.lower() != b"x-content-type-options"]
                headers += [(b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
                            (b"referrer-policy", b"no-referrer"), (b"content-security-policy", policy.encode()),
                            (b"cache-control", b"no-store")]
                event = dict(event, headers=headers)
            await send(event)

        await self.app(scope, receive, send_with_headers)


def clean_name(name):
    """The upload's base name, printable, at most 100 characters (it is echoed back)."""
    base = os.path.basename(str(name or "upload").replace("\\", "/")) or "upload"
    return "".join(c if c.isprintable() else "?" for c in base)[:100]
