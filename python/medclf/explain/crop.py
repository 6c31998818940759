"""`medclf crop`: attention-guided cropping, stage 1 of the two-stage model of the melanoma seed.

Stage 1 is an ordinary run (`medclf train`, low resolution). Its attention is the Grad-CAM map
(medclf.explain.heatmap) of the predicted class on the image as the run sees it: the centre square of the
original, resized to the run's input size. For every image of a splits file:

  mask   = attention > mean + k * std   (over the map)
  region = the largest 8-connected component of the mask
  box    = the square around the region's bounding box, widened by `margin` on each side and at
           least `min_side` of the image's shorter side, mapped to the original image's pixels
           (x along the width, y along the height), then shifted inside the image (never larger
           than its shorter side), so it is always a square that lies in the image.

A uniform map (std 0) or an empty mask falls back to the centre square of the original (what the
plain model sees), and boxes.csv says so in `source`. Writes into OUT (a new folder outside the
image folders; originals are only read):

  images/<path as in splits.csv>  the cropped copy (JPEG quality 95 for JPEG sources, the source's
                                  own format for PNG/BMP/TIFF/WebP, PNG otherwise: `<path>.png`)
  boxes.csv                       path, split, width, height, x0, y0, x1, y1 (pixels, x1/y1 exclusive),
                                  source (attention | centre: uniform map | centre: empty mask),
                                  region_pixels, threshold
  splits.csv + partition.json     the input's rows and columns, `path` pointing at the crops (same
                                  relative path, so compare joins crop and plain runs by path);
                                  partition.json's data_root is OUT/images, `crop` records how
  crop.json                       medclf.crop/1: run, splits, k, margin, min_side, method, layer,
                                  counts per source, seconds, library versions, git commit
"""

import csv
import io
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medclf.core import schemas
from medclf.core.errors import MedclfError, UnreadableImageError
from medclf.core.fileio import atomic_path, read_csv, write_json, write_text

DEFAULT_K = 1.0
DEFAULT_MARGIN = 0.1
DEFAULT_MIN_SIDE = 0.25
ATTENTION, UNIFORM, EMPTY = "attention", "centre: uniform map", "centre: empty mask"
BOX_COLUMNS = ("path", "split", "width", "height", "x0", "y0", "x1", "y1", "source", "region_pixels", "threshold")
_KEEP_FORMAT = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF",
                ".webp": "WEBP"}


@dataclass(frozen=True)
class Box:
    """A square crop in original-image pixels: columns x0..x1-1, rows y0..y1-1."""

    x0: int
    y0: int
    x1: int
    y1: int
    source: str
    region_pixels: int = 0
    threshold: float = float("nan")


def _log(message):
    print(f"medclf crop: {message}", file=sys.stderr, flush=True)


def largest_component(mask):
    """Boolean mask of the largest 8-connected component of `mask` (ties: the first in row order)."""
    from scipy import ndimage

    labels, n = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    if n == 0:
        return np.zeros_like(mask, dtype=bool)
    sizes = np.bincount(labels.ravel())[1:]
    return labels == (int(np.argmax(sizes)) + 1)


def square_inside(cx, cy, side, width, height):
    """(x0, y0, x1, y1) of the square of `side` centred at (cx, cy), shifted to lie in the image;
    the side is capped at the shorter image side."""
    side = int(round(min(max(side, 1.0), min(width, height))))
    x0 = int(round(cx - side / 2))
    y0 = int(round(cy - side / 2))
    x0 = min(max(x0, 0), width - side)
    y0 = min(max(y0, 0), height - side)
    return x0, y0, x0 + side, y0 + side


def centre_box(width, height, source):
    side = min(width, height)
    return Box(*square_inside(width / 2, height / 2, side, width, height), source)


def attention_box(attention, width, height, k=DEFAULT_K, margin=DEFAULT_MARGIN, min_side=DEFAULT_MIN_SIDE):
    """The crop Box of an original image (width x height) from the attention map (h, w) of its
    centre square (the region `data.resize_and_crop` shows the model)."""
    attention = np.asarray(attention, dtype=np.float64)
    std = float(attention.std())
    if not np.isfinite(std) or std == 0.0:
        return centre_box(width, height, UNIFORM)
    threshold = float(attention.mean()) + k * std
    region = largest_component(attention > threshold)
    if not region.any():
        return centre_box(width, height, EMPTY)
    rows, cols = np.nonzero(region)
    short = min(width, height)
    scale_x, scale_y = short / attention.shape[1], short / attention.shape[0]
    left, top = (width - short) / 2, (height - short) / 2
    x_lo, x_hi = left + cols.min() * scale_x, left + (cols.max() + 1) * scale_x
    y_lo, y_hi = top + rows.min() * scale_y, top + (rows.max() + 1) * scale_y
    side = max(x_hi - x_lo, y_hi - y_lo) * (1 + 2 * margin)
    side = max(side, min_side * short)
    box = square_inside((x_lo + x_hi) / 2, (y_lo + y_hi) / 2, side, width, height)
    return Box(*box, ATTENTION, int(region.sum()), threshold)


def box_iou(a, b):
    """Intersection over union of two (x0, y0, x1, y1) boxes (exclusive ends)."""
    iw = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


# ------------------------------------------------------------------ files

def crop_name(rel_path):
    """Relative path of the crop: the same path where the format can be written, else `<path>.png`."""
    return rel_path if Path(rel_path).suffix.lower() in _KEEP_FORMAT else f"{rel_path}.png"


def save_crop(image, box, path):
    """Crop a PIL image to the box and write it atomically in the format its name asks for."""
    fmt = _KEEP_FORMAT.get(Path(path).suffix.lower(), "PNG")
    options = {"quality": 95} if fmt in ("JPEG", "WEBP") else {}
    with atomic_path(path) as tmp:
        image.crop((box.x0, box.y0, box.x1, box.y1)).save(tmp, format=fmt, **options)


def refuse_unsafe_out(out, image_root):
    """OUT must not be inside the image folder (the originals' tree) and must be new or empty."""
    out, root = Path(out).resolve(), Path(image_root).resolve()
    if out == root or root in out.parents:
        raise MedclfError(f"--out {out}: inside the image folder {root}; crops are copies and never go beside the "
                          "originals: choose a folder outside it (e.g. results/NAME_crops)")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise MedclfError(f"--out {out}: exists and is not empty; nothing there is replaced: choose a new folder")


def raw_splits_frame(table):
    """The splits file's rows as text, exactly as written (metadata values are not re-typed)."""
    if table.dialect != "medclf":
        raise MedclfError(f"{table.source}: a seed split file; crop needs medclf's splits.csv "
                          "(`medclf partition` writes it)")
    return read_csv(table.source, "re-run `medclf partition`", dtype=str, keep_default_na=False)


def write_cropped_split(out, table, names):
    """OUT/splits.csv (paths -> crops, every other column kept) and OUT/partition.json."""
    from medclf.core.splits import REQUIRED_COLUMNS, splits_csv_text

    frame = raw_splits_frame(table)
    frame["path"] = [names[p] for p in frame["path"]]
    extra = [c for c in frame.columns if c not in REQUIRED_COLUMNS and c != "fold"]
    write_text(out / "splits.csv", splits_csv_text(frame, extra))
    info = dict(table.info) if table.info else {"classes": list(table.classes), "positive_class": table.positive_class}
    info["data_root"] = str((out / "images").resolve())
    info["crop"] = {"source_splits": str(Path(table.source).resolve()),
                    "source_data_root": str(Path(table.data_root).resolve()), "boxes": "boxes.csv"}
    write_json(out / "partition.json", info)


def write_boxes(path, records):
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(BOX_COLUMNS)
    for rel, split, width, height, box in records:
        threshold = "" if not np.isfinite(box.threshold) else f"{box.threshold:.6g}"
        writer.writerow([rel, split, width, height, box.x0, box.y0, box.x1, box.y1, box.source,
                         box.region_pixels, threshold])
    write_text(path, buffer.getvalue())


# ------------------------------------------------------------------ the stage

def _model_inputs(images, side, transform):
    import torch

    from medclf.data.preprocess import resize_and_crop

    arrays = [np.asarray(resize_and_crop(img, side), dtype=np.uint8).transpose(2, 0, 1).copy() for img in images]
    return torch.stack([transform(torch.from_numpy(a)) for a in arrays])


def _read(table, rel):
    from medclf.data.imageio import read_image

    try:
        return read_image(table.resolve(rel))
    except UnreadableImageError as exc:
        raise MedclfError(f"{exc}; remove it from the splits file (re-run `medclf partition`, which excludes "
                          "unreadable files)") from exc


def attention_maps(model, config, images, layer, device):
    """Grad-CAM maps (N, s, s) in [0, 1] of each image's predicted class, as the run sees it."""
    import torch

    from medclf.data import transforms
    from medclf.explain import heatmap

    run_input = transforms.eval_input(config)
    inputs = _model_inputs(images, run_input.side, run_input.transform).to(device)
    with torch.no_grad():
        logits = model(inputs)
    targets = (logits[:, 0] > 0).long().tolist() if logits.shape[1] == 1 else logits.argmax(1).tolist()
    return heatmap.heatmaps(model, inputs, targets, "gradcam", layer)


def crop_split_images(model, config, table, out, layer, device, k, margin, min_side, batch, progress):
    """Crop every image of the table; returns (names {path: crop path}, boxes.csv records)."""
    from tqdm import tqdm

    frame = table.frame
    names, records = {}, []
    bar = tqdm(total=len(frame), desc="crop", unit="img", disable=not progress, file=sys.stderr)
    for start in range(0, len(frame), batch):
        rows = frame.iloc[start:start + batch]
        images = [_read(table, rel) for rel in rows["path"]]
        maps = attention_maps(model, config, images, layer, device)
        for rel, split, img, attention in zip(rows["path"], rows["split"], images, maps):
            box = attention_box(attention, img.width, img.height, k, margin, min_side)
            names[rel] = crop_name(rel)
            save_crop(img, box, out / "images" / names[rel])
            records.append((rel, split, img.width, img.height, box))
        bar.update(len(rows))
    bar.close()
    return names, records


def run_crop(run_dir, splits, out, k=DEFAULT_K, margin=DEFAULT_MARGIN, min_side=DEFAULT_MIN_SIDE, target_layer=None,
             data_root=None, device="auto", batch=32, progress=True):
    """Write OUT/images/, boxes.csv, splits.csv, partition.json and crop.json; returns crop.json's dict."""
    from medclf.core.provenance import git_commit, library_versions
    from medclf.core.splits import read_splits
    from medclf.engine.precision import select_device
    from medclf.explain import heatmap
    from medclf.infer.predict import load_run

    device = select_device(device)
    if not 0 <= margin <= 1 or not 0 < min_side <= 1:
        raise MedclfError(f"--margin {margin} / --min-side {min_side}: use 0 <= margin <= 1 and 0 < min-side <= 1")
    out = Path(out)
    table = read_splits(splits, data_root=data_root)
    refuse_unsafe_out(out, table.data_root)
    model, config, _ = load_run(run_dir, device)
    if [str(c) for c in table.classes] != list(config["classes"]):
        raise MedclfError(f"{table.source}: classes {table.classes} differ from the run's {config['classes']}; "
                          "crop with the splits file of the run's study")
    layer = target_layer or heatmap.find_target_layer(model, config["architecture"])
    _log(f"Grad-CAM of {run_dir} (layer {layer}) on {len(table.frame)} images, k = {k}")
    started = time.perf_counter()
    names, records = crop_split_images(model, config, table, out, layer, device, k, margin, min_side, batch, progress)
    write_boxes(out / "boxes.csv", records)
    write_cropped_split(out, table, names)
    counts = {s: sum(r[4].source == s for r in records) for s in (ATTENTION, UNIFORM, EMPTY)}
    summary = {"schema": schemas.CROP, "run": str(run_dir), "splits": str(table.source), "k": k, "margin": margin,
               "min_side": min_side, "method": "gradcam", "target": "predicted", "target_layer": layer,
               "n": len(records), "sources": counts, "seconds": round(time.perf_counter() - started, 3), "library_versions": library_versions(),
               "git_commit": git_commit()}
    write_json(out / "crop.json", summary)
    return summary
