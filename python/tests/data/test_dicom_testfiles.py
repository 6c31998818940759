"""Compressed DICOM: every .dcm file bundled with pydicom is either read or refused for a
stated reason (issue 16). pydicom's bundled files only: get_testdata_files() without a pattern
never downloads."""

import os
from collections import Counter

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")

from medclf.core.errors import UnreadableImageError  # noqa: E402
from medclf.data.imageio import read_image  # noqa: E402

NO_PIXELS = "DICOM without pixel data"
CORRUPT = "corrupt or non-conformant"
INVALID = "invalid DICOM pixel data"


def _bundled():
    from pydicom.data import get_testdata_files

    return {os.path.basename(f): f for f in get_testdata_files() if f.endswith(".dcm")}


def _outcomes():
    out = {}
    for name, path in sorted(_bundled().items()):
        try:
            image = read_image(path)
            out[name] = ("read", image.mode)
        except UnreadableImageError as exc:
            out[name] = ("refused", str(exc))
    return out


@pytest.fixture(scope="module")
def outcomes():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the deliberately odd files
        return _outcomes()


def test_compressed_transfer_syntaxes_are_decoded(outcomes):
    # One file per decoder family: JPEG-LS, JPEG lossless, JPEG 2000, RLE, baseline JPEG.
    for name in ("JPEGLSNoMode.dcm", "JPEG-LL.dcm", "693_J2KR.dcm", "MR_small_RLE.dcm", "SC_rgb_jpeg_dcmtk.dcm",
                 "emri_small_jpeg_2k_lossless.dcm", "emri_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm"):
        if name in outcomes:
            assert outcomes[name] == ("read", "RGB"), name


def test_files_pydicom_reads_only_with_force_are_not_refused_for_their_header(outcomes):
    bundled = _bundled()
    forced = []
    for name, path in bundled.items():
        try:
            pydicom.dcmread(path)
        except pydicom.errors.InvalidDicomError:
            forced.append(name)
    assert len(forced) >= 4, forced  # no_meta.dcm, ExplVR_*NoMeta.dcm, ...
    for name in forced:
        kind, detail = outcomes[name]
        assert kind == "read" or NO_PIXELS in detail, f"{name}: {detail}"
        assert "File Meta Information" not in detail


def test_every_refusal_states_why_and_files_without_pixels_are_refused(outcomes):
    bundled = _bundled()
    for name, (kind, detail) in outcomes.items():
        ds = pydicom.dcmread(bundled[name], force=True)
        has_pixels = any(t in ds for t in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"))
        if not has_pixels:
            assert kind == "refused" and NO_PIXELS in detail, name
        elif kind == "refused":
            assert CORRUPT in detail or INVALID in detail, f"{name}: {detail}"
            assert "no decoder" not in detail  # every decoder is installed
    kinds = Counter("read" if k == "read" else "no pixels" if NO_PIXELS in d else "broken" for k, d in outcomes.values())
    # pydicom 3.0.2 (pinned) bundles 79 .dcm files: 58 images read, 15 objects without pixels, 6 broken.
    assert kinds == Counter({"read": 58, "no pixels": 15, "broken": 6})


def test_rt_plans_reports_and_waveforms_name_their_kind(outcomes):
    assert "RT Plan Storage" in outcomes["rtplan.dcm"][1]
    assert "SR Storage" in outcomes["reportsi.dcm"][1]
    assert "Waveform" in outcomes["waveform_ecg.dcm"][1]


def test_ybr_colour_is_converted_once():
    """pydicom >= 3 returns YBR_FULL already as RGB; converting again shifted every colour."""
    bundled = _bundled()
    pairs = [("SC_rgb_rle.dcm", "SC_rgb_dcmtk_+eb+cy+n1.dcm"), ("SC_rgb_rle.dcm", "SC_rgb_jpeg_dcmtk.dcm")]
    for rgb, ybr in pairs:
        reference = np.asarray(read_image(bundled[rgb]), dtype=float)
        decoded = np.asarray(read_image(bundled[ybr]), dtype=float)
        assert np.abs(decoded - reference).mean() < 4, ybr
