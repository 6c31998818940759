"""The one image reader: formats, modes, EXIF orientation, lying extensions, DICOM, bad files."""

import numpy as np
import pytest
from PIL import Image

from medclf.core.errors import UnreadableImageError
from medclf.data.imageio import read_image

from image_files import write_dicom


def _check_rgb(img, size):
    assert img.mode == "RGB"
    assert img.size == size


@pytest.mark.parametrize("fmt,suffix", [("JPEG", ".jpg"), ("PNG", ".png"), ("BMP", ".bmp"), ("TIFF", ".tif")])
def test_formats_read_as_rgb(tmp_path, fmt, suffix):
    array = np.zeros((12, 20, 3), dtype=np.uint8)
    array[:, 10:] = (200, 100, 50)
    path = tmp_path / f"x{suffix}"
    Image.fromarray(array).save(path, fmt)
    img = read_image(path)
    _check_rgb(img, (20, 12))
    right = np.asarray(img)[6, 15].astype(int)
    tolerance = 8 if fmt == "JPEG" else 0
    assert np.all(np.abs(right - [200, 100, 50]) <= tolerance)


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "P"])
def test_modes(tmp_path, mode):
    base = Image.new("RGB", (8, 6), (40, 40, 40))
    img = base.convert(mode, palette=Image.Palette.ADAPTIVE) if mode == "P" else base.convert(mode)
    path = tmp_path / "m.png"
    img.save(path)
    out = read_image(path)
    _check_rgb(out, (8, 6))
    assert tuple(np.asarray(out)[0, 0]) == (40, 40, 40)


def test_rgba_transparent_becomes_black(tmp_path):
    img = Image.new("RGBA", (4, 4), (255, 255, 255, 0))
    img.putpixel((0, 0), (255, 255, 255, 255))
    img.save(tmp_path / "t.png")
    out = np.asarray(read_image(tmp_path / "t.png"))
    assert tuple(out[0, 0]) == (255, 255, 255)
    assert tuple(out[1, 1]) == (0, 0, 0)


def test_16bit_png_and_tiff_stretch_to_full_range(tmp_path):
    array = np.array([[1000, 2000], [3000, 5000]], dtype=np.uint16)
    for name in ("g16.png", "g16.tif"):
        img = Image.fromarray(array)
        assert img.mode == "I;16"
        img.save(tmp_path / name)
        out = np.asarray(read_image(tmp_path / name))[:, :, 0]
        # (v - 1000) / 4000 * 255
        assert out.tolist() == [[0, round(1000 / 4000 * 255)], [round(2000 / 4000 * 255), 255]]


def test_exif_orientation_applied(tmp_path):
    img = Image.new("RGB", (30, 10), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 5, 10))  # white strip on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display
    img.save(tmp_path / "o.jpg", exif=exif, quality=95)
    out = read_image(tmp_path / "o.jpg")
    assert out.size == (10, 30)
    arr = np.asarray(out).mean(axis=2)
    assert arr[:5, :].mean() > 200  # left strip is now on top
    assert arr[-5:, :].mean() < 50


def test_png_named_jpg_is_read_by_content(tmp_path):
    Image.new("RGBA", (5, 5), (10, 20, 30, 255)).save(tmp_path / "fake.jpg", "PNG")
    out = read_image(tmp_path / "fake.jpg")
    assert tuple(np.asarray(out)[2, 2]) == (10, 20, 30)


def test_dicom_with_window(tmp_path):
    pixels = np.array([[0, 100, 150], [200, 300, 4000]], dtype=np.uint16)
    write_dicom(tmp_path / "ct.dcm", pixels, center=150, width=100)
    out = np.asarray(read_image(tmp_path / "ct.dcm"))
    assert out.shape == (2, 3, 3)
    # window [100, 200]: 0,100 -> 0; 150 -> 127.5 -> 128; >= 200 -> 255
    assert out[:, :, 0].tolist() == [[0, 0, 128], [255, 255, 255]]


def test_dicom_without_window_and_monochrome1(tmp_path):
    pixels = np.array([[0, 50], [100, 200]], dtype=np.uint16)
    write_dicom(tmp_path / "a.dcm", pixels)
    assert np.asarray(read_image(tmp_path / "a.dcm"))[:, :, 0].tolist() == [[0, 64], [128, 255]]
    write_dicom(tmp_path / "b.dcm", pixels, photometric="MONOCHROME1")
    assert np.asarray(read_image(tmp_path / "b.dcm"))[:, :, 0].tolist() == [[255, 191], [127, 0]]


def test_dicom_without_extension_is_detected(tmp_path):
    write_dicom(tmp_path / "IM0001", np.array([[0, 10]], dtype=np.uint16))
    assert read_image(tmp_path / "IM0001").mode == "RGB"


def test_truncated_jpeg_raises(tmp_path):
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "f.jpg")
    data = (tmp_path / "f.jpg").read_bytes()
    (tmp_path / "t.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(UnreadableImageError) as info:
        read_image(tmp_path / "t.jpg")
    assert "t.jpg" in str(info.value)


@pytest.mark.parametrize("content", [b"this is not an image\n", b""])
def test_text_and_empty_files_raise(tmp_path, content):
    (tmp_path / "x.jpg").write_bytes(content)
    with pytest.raises(UnreadableImageError) as info:
        read_image(tmp_path / "x.jpg")
    assert info.value.path.endswith("x.jpg")


def test_missing_file_raises(tmp_path):
    with pytest.raises(UnreadableImageError):
        read_image(tmp_path / "nothing.png")


def test_oversized_image_is_unreadable_not_a_crash(tmp_path, monkeypatch):
    Image.new("L", (64, 64)).save(tmp_path / "big.png")
    # Pillow refuses images above twice MAX_IMAGE_PIXELS with DecompressionBombError (not an OSError).
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(UnreadableImageError) as info:
        read_image(tmp_path / "big.png")
    assert "big.png" in str(info.value)


def test_only_medclfs_formats_are_decoded_whatever_pillow_could_open(tmp_path):
    # Pillow reads PPM (and EPS, PSD, ...); medclf's reader refuses every format it does not list.
    Image.new("RGB", (4, 4), (10, 20, 30)).save(tmp_path / "x.png", "PPM")
    with pytest.raises(UnreadableImageError, match="not an image file"):
        read_image(tmp_path / "x.png")
