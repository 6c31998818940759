"""Image quality: measures, thresholds calibrated on the train split, and the gate `medclf test` applies.

Measures (`measure_image`, on an 8-bit RGB image from `imageio.read_image`). The grey image is
ITU-R 601 luma, resized (antialiased) so its shorter side is `MEASURE_SIDE` = 128 pixels. For
sharpness it is then smoothed by a Gaussian of sigma `SHARPNESS_SIGMA` = 1 pixel: the measures see
a fixed band of frequencies, so they do not depend on the file's resolution nor on how the resize
filter treats the finest detail (within 2% when a file is resized by 0.9x to 2x, see the tests).
  laplacian_var     variance of the 3x3 Laplacian (OpenCV, ksize 1) of that grey image, 0-255 scale
  tenengrad         mean squared 3x3 Sobel gradient magnitude (gx^2 + gy^2) of that grey image
  contrast_range    (p99 - p1) of the grey levels / 255
  contrast_rms      standard deviation of the grey levels / 255
  mean_luminance    mean grey level / 255
  dark_fraction     fraction of full-resolution grey pixels <= 2 (clipped dark)
  bright_fraction   fraction of full-resolution grey pixels >= 253 (clipped bright)
  blank             1 when contrast_range < BLANK_RANGE (a blank or near-constant slice), else 0
The original HAM10000 app's two checks (preset seed003), on the full-resolution colour image:
  seed003_laplacian_var  cv2.Laplacian(BGR image, CV_64F).var(), passes when > 15
  seed003_contrast       smallest t in 0.02, 0.04, ... (rounded to 3 decimals) for which
                         skimage.exposure.is_low_contrast(BGR image, fraction_threshold=t) is
                         True, passes when > 0.15; is_low_contrast greys the BGR array as if it
                         were RGB (0.2125, 0.7154, 0.0721) on [0, 1] and divides p99 - p1 by the
                         float dtype's range, 2. The app called this value "gamma".

quality.json (medclf.quality/1): preset (calibrated | seed003), rules {measure: {op, value}}
(an image passes a rule when `value op threshold` holds), and for calibrated thresholds the
percentile, the split (always train) and its file count and fingerprint.
"""

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from medclf.core import schemas
from medclf.core.errors import MedclfError, UnreadableImageError
from medclf.core.fileio import read_json, sha256_file, write_json, write_text
from medclf.core.predictions import read_predictions_file
from medclf.data.imageio import IMAGE_EXTENSIONS, is_image_name, read_image

MEASURE_SIDE = 128
SHARPNESS_SIGMA = 1.0
BLANK_RANGE = 2 / 255
DARK_LEVEL, BRIGHT_LEVEL = 2, 253
MIN_CLIPPED_FRACTION = 0.01
SEED003_RULES = {"seed003_laplacian_var": {"op": ">", "value": 15.0},
                 "seed003_contrast": {"op": ">", "value": 0.15}}
# Which tail of each measure is bad: calibration puts the threshold at that tail's percentile.
LOW_IS_BAD = ("laplacian_var", "tenengrad", "contrast_range", "contrast_rms")
HIGH_IS_BAD = ("dark_fraction", "bright_fraction")
BOTH_BAD = ("mean_luminance",)
MEASURES = LOW_IS_BAD + BOTH_BAD + HIGH_IS_BAD + ("blank", "seed003_laplacian_var", "seed003_contrast")
OPS = {">": np.greater, ">=": np.greater_equal, "<": np.less, "<=": np.less_equal}


def grey_levels(rgb):
    """ITU-R 601 luma of an (H, W, 3) uint8 array, float64 on the 0-255 scale."""
    rgb = np.asarray(rgb, dtype=np.float64)
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


def fixed_scale_grey(img, side=MEASURE_SIDE):
    """Grey image whose shorter side is `side` pixels (aspect kept), float64 0-255."""
    w, h = img.size
    scale = side / min(w, h)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    grey = Image.fromarray(grey_levels(np.asarray(img.convert("RGB"))).astype(np.float32), "F")
    return np.asarray(grey.resize(size, Image.Resampling.BILINEAR), dtype=np.float64)


def laplacian_var(grey):
    import cv2

    return float(cv2.Laplacian(np.asarray(grey, dtype=np.float64), cv2.CV_64F).var())


def tenengrad(grey):
    import cv2

    grey = np.asarray(grey, dtype=np.float64)
    gx = cv2.Sobel(grey, cv2.CV_64F, 1, 0, ksize=3)
    gy = cv2.Sobel(grey, cv2.CV_64F, 0, 1, ksize=3)
    return float(np.mean(gx ** 2 + gy ** 2))


def seed003_contrast(bgr, step=0.02):
    """The app's stepped is_low_contrast loop (see the module docstring), computed once."""
    grey = np.asarray(bgr, dtype=np.float64)[..., :3] / 255.0 @ np.array([0.2125, 0.7154, 0.0721])
    p1, p99 = np.percentile(grey, [1, 99])
    ratio = (p99 - p1) / 2.0  # skimage's dtype_limits for float images: (-1, 1)
    t = 0.0
    while True:
        t = round(t + step, 3)
        if ratio < t:
            return t


def seed003_measures(rgb):
    """The original app's two numbers on the full-resolution colour image (BGR, as cv2 decodes it)."""
    import cv2

    bgr = np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8)[..., ::-1])
    return {"seed003_laplacian_var": float(cv2.Laplacian(bgr, cv2.CV_64F).var()),
            "seed003_contrast": seed003_contrast(bgr)}


def measure_image(img):
    """Every measure of one RGB PIL image (see the module docstring)."""
    rgb = np.asarray(img.convert("RGB"), dtype=np.uint8)
    full_grey = np.rint(grey_levels(rgb))
    import cv2

    grey = fixed_scale_grey(img)
    smooth = cv2.GaussianBlur(grey, (0, 0), SHARPNESS_SIGMA)
    p1, p99 = np.percentile(grey, [1, 99])
    contrast_range = float((p99 - p1) / 255.0)
    row = {"laplacian_var": laplacian_var(smooth), "tenengrad": tenengrad(smooth),
           "contrast_range": contrast_range, "contrast_rms": float(grey.std() / 255.0),
           "mean_luminance": float(grey.mean() / 255.0),
           "dark_fraction": float(np.mean(full_grey <= DARK_LEVEL)),
           "bright_fraction": float(np.mean(full_grey >= BRIGHT_LEVEL)),
           "blank": int(contrast_range < BLANK_RANGE)}
    row.update(seed003_measures(rgb))
    return row


def measure_files(files, names=None, progress=True, label="images"):
    """quality rows (path + every measure) for image files; an unreadable file is a clear error."""
    from tqdm import tqdm

    rows = []
    for path, name in tqdm(list(zip(files, names or files)), desc=f"quality {label}", unit="img",
                           disable=not progress, leave=False):
        try:
            img = read_image(path)
        except UnreadableImageError as exc:
            raise MedclfError(f"{exc}; remove it from the splits file or the folder") from exc
        rows.append({"path": str(name), **measure_image(img)})
    return pd.DataFrame(rows, columns=["path", *MEASURES])


def measure_splits(table, splits=("train", "val", "test"), progress=True):
    """quality rows for the named splits of a SplitTable, with label and split columns."""
    frames = []
    for split in splits:
        rows = table.rows(split)
        measured = measure_files([table.resolve(p) for p in rows["path"]], list(rows["path"]), progress, split)
        measured.insert(1, "split", split)
        measured.insert(2, "label", list(rows["label"].astype(str)))
        frames.append(measured)
    return pd.concat(frames, ignore_index=True)


def measure_folder(folder, progress=True):
    folder = Path(folder)
    if not folder.is_dir():
        raise MedclfError(f"{folder}: not a folder; pass --folder DIR with images, or --splits FILE")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and is_image_name(p))
    if not files:
        raise MedclfError(f"{folder}: no image files found (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})")
    return measure_files(files, [p.relative_to(folder).as_posix() for p in files], progress, folder.name)


def calibrate(train_rows, percentile=1.0):
    """Rules from the train split's distribution: a low measure fails below its `percentile`-th
    percentile, a high one above its (100 - percentile)-th (clipped fractions: at least
    MIN_CLIPPED_FRACTION), mean luminance on both sides; a blank image always fails."""
    if not 0 < percentile < 50:
        raise MedclfError(f"--percentile {percentile}: use a value between 0 and 50 (e.g. 1)")
    if len(train_rows) == 0:
        raise MedclfError("the train split is empty; thresholds are calibrated on train images")
    rules = {}
    for m in LOW_IS_BAD + BOTH_BAD:
        rules[m] = {"op": ">=", "value": float(np.percentile(train_rows[m], percentile))}
    for m in HIGH_IS_BAD:
        # Where nearly every train image has no clipped pixel the percentile is 0, and one clipped
        # pixel would reject an image: a clipped fraction counts from MIN_CLIPPED_FRACTION up.
        rules[m] = {"op": "<=", "value": max(MIN_CLIPPED_FRACTION,
                                             float(np.percentile(train_rows[m], 100 - percentile)))}
    rules["mean_luminance_max"] = {"measure": "mean_luminance", "op": "<=",
                                   "value": float(np.percentile(train_rows["mean_luminance"], 100 - percentile))}
    rules["blank"] = {"op": "<", "value": 1}
    return rules


def train_fingerprint(paths):
    return hashlib.sha256("\n".join(sorted(map(str, paths))).encode("utf-8")).hexdigest()


def calibrated_gate(table, percentile=1.0, progress=True):
    """(quality.json content, train rows): thresholds from the train split only; val and test
    images are never read here."""
    train = measure_splits(table, ("train",), progress)
    return {"schema": schemas.QUALITY, "preset": "calibrated", "percentile": percentile, "split": "train",
            "n_images": int(len(train)), "splits_file": str(table.source),
            "train_paths_sha256": train_fingerprint(train["path"]),
            "rules": calibrate(train, percentile)}, train


def seed003_gate():
    return {"schema": schemas.QUALITY, "preset": "seed003", "rules": {k: dict(v) for k, v in SEED003_RULES.items()},
            "note": "SkinLesionClassifierHAM's app: Laplacian variance > 15 and stepped is_low_contrast > 0.15 "
                    "on the full-resolution colour image; fixed, not calibrated"}


def read_gate(path):
    gate = read_json(path)
    if not isinstance(gate, dict) or gate.get("schema") != schemas.QUALITY or not isinstance(gate.get("rules"), dict):
        raise MedclfError(f"{path}: not a {schemas.QUALITY} file; create one with `medclf quality`")
    for name, rule in gate["rules"].items():
        if rule.get("measure", name) not in MEASURES or rule.get("op") not in OPS:
            raise MedclfError(f"{path}: rule {name!r} has an unknown measure or op; re-create it with `medclf quality`")
    return gate


def gate_verdict(row, rules):
    """'passed', or 'rejected: ' + every failed rule as `measure value op threshold` failed."""
    failed = []
    for name, rule in rules.items():
        measure = rule.get("measure", name)
        value = row[measure]
        if not OPS[rule["op"]](value, rule["value"]):
            failed.append(f"{measure} {value:.4g} not {rule['op']} {rule['value']:.4g}")
    return "passed" if not failed else "rejected: " + "; ".join(failed)


def gate_verdicts(rows, gate):
    return [gate_verdict(row, gate["rules"]) for _, row in rows.iterrows()]


def gate_predictions(run_dir, predictions_paths, gate_path, data_root=None, progress=True):
    """`medclf test --quality-gate`: add `quality` ('passed' or 'rejected: reason', one per image,
    in file order) and `quality_gate` {file, sha256, preset} to each predictions file. Rows are
    marked, never dropped."""
    gate = read_gate(gate_path)
    if data_root is None:
        data_root = read_json(Path(run_dir) / "config.json").get("data_root")
    for path in predictions_paths:
        record = read_predictions_file(path)
        rows = measure_files([Path(data_root or ".") / p for p in record["paths"]], record["paths"], progress,
                             record.get("split", "predictions"))
        record["quality"] = gate_verdicts(rows, gate)
        record["quality_gate"] = {"file": str(gate_path), "sha256": sha256_file(gate_path), "preset": gate["preset"]}
        write_json(path, record)
    return predictions_paths


def write_csv(path, frame):
    write_text(path, frame.to_csv(index=False, lineterminator="\n", float_format="%.6g"))


def _with_verdicts(rows, gate):
    rows = rows.copy()
    rows["seed003_verdict"] = gate_verdicts(rows, seed003_gate())
    if gate is not None:
        rows["verdict"] = gate_verdicts(rows, gate)
    return rows


def quality_of_folder(folder, out_dir, gate_path=None, preset="calibrated", progress=True):
    """quality.csv for every image under a folder; verdicts when a gate (or the seed003 preset) is given."""
    gate = read_gate(gate_path) if gate_path else (seed003_gate() if preset == "seed003" else None)
    rows = _with_verdicts(measure_folder(folder, progress), gate)
    path = Path(out_dir) / "quality.csv"
    write_csv(path, rows)
    return {"csv": path, "rows": rows}


def quality_of_splits(table, out_dir, gate_out=None, preset="calibrated", percentile=1.0, progress=True):
    """Calibrate on train (or take the seed003 preset), write quality.json, then measure val and
    test for quality.csv. Returns the paths, the gate and the rows."""
    if preset == "seed003":
        gate, train = seed003_gate(), measure_splits(table, ("train",), progress)
    else:
        gate, train = calibrated_gate(table, percentile, progress)
    from medclf.core.provenance import git_commit, library_versions

    gate_path = Path(gate_out) if gate_out else Path(out_dir) / "quality.json"
    gate = dict(gate, library_versions=library_versions(), git_commit=git_commit())
    write_json(gate_path, gate)
    rows = _with_verdicts(pd.concat([train, measure_splits(table, ("val", "test"), progress)], ignore_index=True),
                          gate)
    csv_path = Path(out_dir) / "quality.csv"
    write_csv(csv_path, rows)
    return {"csv": csv_path, "gate": gate_path, "gate_content": gate, "rows": rows}


def rejection_summary(rows):
    """Per split: images, rejected by the chosen gate, rejected by the seed003 preset."""
    out = []
    for split, part in rows.groupby("split", sort=False) if "split" in rows else [("all", rows)]:
        line = {"split": split, "n": int(len(part)),
                "seed003_rejected": int((part["seed003_verdict"] != "passed").sum())}
        if "verdict" in part:
            line["rejected"] = int((part["verdict"] != "passed").sum())
        out.append(line)
    return out
