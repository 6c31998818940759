"""The predictions file contract (medclf.predictions/1, and seed 002's original four keys): the one
reader, validator and record builder. Python mirror of R/io.R: same checks, same messages.

A predictions file holds one entry per image in `paths`, `labels` (class indices), `probabilities`
(rows summing to 1), `predictions`, `logits`, `classes`, `positive_class`, `split` and the writer's
provenance. Every stage that reads one (report, compare, calibrate, conformal, ensemble, explain,
quality, cv) goes through `load_predictions_file` or `read_predictions_file` + `validate_predictions`.
"""

import math
from pathlib import Path

import numpy as np

from medclf.core import layout, schemas
from medclf.core.errors import MedclfError
from medclf.core.fileio import read_json

LEGACY_KEYS = ("labels", "predictions", "predictive probabilities", "label probabilities")
FOUR_KEY_LOGITS = "original four-key (logits -> softmax)"
FOUR_KEY_PROBABILITIES = "original four-key (probabilities, used as given)"
ROW_SUM_TOLERANCE = 1e-6
PER_IMAGE_KEYS = ("paths", "labels", "predictions", "probabilities", "logits", "predictive probabilities",
                  "label probabilities", "quality")
LOG_CLIP = 1e-12  # probabilities are clipped here before the log: a saturated softmax gives exact zeros


def fail(source, message):
    """Stop with one line `<source>: <message>` (the R side's mc_fail)."""
    raise MedclfError(f"{source}: {message}")


def read_predictions_file(path):
    path = Path(path)
    if path.is_file() and path.stat().st_size == 0:
        fail(path, "file is empty; re-create it with `medclf test`")
    try:
        return read_json(path)
    except MedclfError as exc:
        if "not valid JSON" in str(exc):
            raise MedclfError(f"{path}: not valid JSON (truncated?); re-create it with `medclf test`") from exc
        raise


def is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _matrix(rows, field, source):
    try:
        arr = np.asarray(rows, dtype=np.float64)
    except (TypeError, ValueError):
        arr = None
    if arr is None or arr.ndim != 2:
        if not isinstance(rows, list) or not all(isinstance(r, list) for r in rows):
            fail(source, f"{field}: expected a list of rows (one row of class values per image)")
        if len({len(r) for r in rows}) > 1:
            fail(source, f"{field}: rows have different lengths or non-numeric entries; expected one row of numbers per image")
        for i, r in enumerate(rows):
            for j, v in enumerate(r):
                if v is None:
                    fail(source, f"{field}: row {i + 1}, column {j + 1} is NaN or missing; every image needs finite values")
        fail(source, f"{field}: entries must be numbers")
    bad = np.argwhere(~np.isfinite(arr))
    if len(bad):
        i, j = bad[0]
        fail(source, f"{field}: row {i + 1}, column {j + 1} is NaN or missing; every image needs finite values")
    return arr


def _row_sums(p):
    total = p[:, 0].copy()
    for j in range(1, p.shape[1]):  # sequential sum, as R/io.R, so both agree bit for bit
        total = total + p[:, j]
    return total


def _softmax_rows(logits):
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / _row_sums(e)[:, None]


def rows_are_probabilities(x):
    """Every value in [0, 1] and every row summing to 1 within ROW_SUM_TOLERANCE (R: mc_rows_are_probabilities).
    Seed 002's original test script wrote logits under "predictive probabilities", medclf's
    python/test_torchvision.py writes probabilities there: the content tells which."""
    return bool(np.all((x >= 0) & (x <= 1)) and np.all(np.abs(_row_sums(x) - 1) <= ROW_SUM_TOLERANCE))


def _present(obj, key):
    return obj.get(key) is not None


def validate_predictions(obj, source):
    """Python mirror of mc_validate_predictions (R/io.R): same checks, same messages."""
    if not isinstance(obj, dict):
        fail(source, "expected a JSON object with labels and probabilities")
    legacy = "schema" not in obj or obj["schema"] is None
    if not legacy and obj["schema"] != schemas.PREDICTIONS:
        fail(source, f"schema: '{obj['schema']}' is not supported (expected {schemas.PREDICTIONS})")
    required = LEGACY_KEYS if legacy else ("classes", "labels", "probabilities")
    missing = [k for k in required if k not in obj]
    if missing:
        expected = ("the four keys of test_torchvision.py or a medclf.predictions/1 file" if legacy
                    else "a file written by `medclf test`")
        fail(source, f"missing key{'s' if len(missing) > 1 else ''} {', '.join(repr(k) for k in missing)}; expected {expected}")
    field = "predictive probabilities" if legacy else "probabilities"
    labels = obj["labels"]
    if not isinstance(labels, list) or any(isinstance(v, (list, dict, str, bool)) for v in labels):
        fail(source, "labels: expected a list of integer class indices")
    if not labels:
        fail(source, "labels: empty; there is nothing to report")
    for i, v in enumerate(labels):
        if v is None or (isinstance(v, float) and math.isnan(v)):
            fail(source, f"labels: entry {i + 1} is NaN or missing")
    for i, v in enumerate(labels):
        if v != round(v):
            fail(source, f"labels: entry {i + 1} is not an integer class index")
    n = len(labels)
    scores = _matrix(obj[field], field, source)
    lengths = {"labels": n, field: scores.shape[0]}
    for key in ("predictions", "paths", "label probabilities"):
        if _present(obj, key):
            lengths[key] = len(obj[key])
    for key, length in lengths.items():
        if length != n:
            fail(source, f"{key}: has {length} entries but labels has {n}; every field needs one entry per image")
    if _present(obj, "predictions") and not all(is_number(v) and not math.isnan(v) for v in obj["predictions"]):
        fail(source, "predictions: expected a list of integer class indices without missing values")
    k = scores.shape[1]
    if k < 2:
        fail(source, f"{field}: need at least two columns (one per class), found {k}")
    legacy_logits = legacy and not rows_are_probabilities(scores)
    if legacy:
        probabilities = _softmax_rows(scores) if legacy_logits else scores
        classes = [str(i) for i in range(k)]
    else:
        out = np.argwhere((scores < 0) | (scores > 1))
        if len(out):
            i, j = out[0]
            fail(source, f"{field}: value {scores[i, j]:.15g} at row {i + 1}, column {j + 1} is outside [0, 1]")
        total = _row_sums(scores)
        off = np.flatnonzero(np.abs(total - 1) > ROW_SUM_TOLERANCE)
        if len(off):
            fail(source, f"{field}: row {off[0] + 1} sums to {total[off[0]]:.15g}, not 1 "
                          f"(tolerance {ROW_SUM_TOLERANCE:g}); write softmax probabilities")
        probabilities = scores
        classes = obj["classes"]
        if (not isinstance(classes, list) or not all(isinstance(c, str) for c in classes)
                or len(set(classes)) != len(classes)):
            fail(source, "classes: expected a list of distinct class names")
        if len(classes) != k:
            fail(source, f"classes: has {len(classes)} names but {field} has {k} columns")
    labels_arr = np.asarray(labels, dtype=np.float64)
    bad = np.flatnonzero((labels_arr < 0) | (labels_arr >= k))
    if len(bad):
        fail(source, f"labels: value {labels[bad[0]]} at entry {bad[0] + 1} is not a class index 0..{k - 1}")
    if legacy:
        declared = "1" if k == 2 else None
    else:
        declared = obj.get("positive_class")
    if declared is not None and declared not in classes:
        fail(source, f"positive_class: '{declared}' is not one of the classes ({', '.join(classes)})")
    return {"format": FOUR_KEY_LOGITS if legacy_logits else FOUR_KEY_PROBABILITIES if legacy else schemas.PREDICTIONS,
            "split": obj.get("split"), "classes": list(classes), "labels": labels_arr.astype(np.int64),
            "probabilities": probabilities, "paths": obj.get("paths"), "positive_class": declared,
            "model": obj.get("model") if isinstance(obj.get("model"), dict) else None, "source": str(source)}


def same_predictions(a, b):
    """The same images, labels and probabilities (R: mc_same_predictions)."""
    return (np.array_equal(a["labels"], b["labels"]) and np.array_equal(a["probabilities"], b["probabilities"])
            and a["paths"] == b["paths"])


def load_predictions_file(path):
    """Read and validate one predictions file: the validated view (validate_predictions)."""
    return validate_predictions(read_predictions_file(path), path)


def require_file(path, run_dir=None, split=None):
    """`path` itself; a missing file is refused with the `medclf test` command that writes it."""
    path = Path(path)
    if not path.is_file():
        run_dir = run_dir or path.parent
        hint = f" --split {split}" if split else ""
        raise MedclfError(f"{path}: not found; run `medclf test --run {run_dir}{hint}` first")
    return path


def read_run_predictions(run_dir, split):
    """The raw medclf.predictions/1 record of a run's split (other schemas refused)."""
    path = require_file(layout.predictions_file(run_dir, split), run_dir, split)
    record = read_predictions_file(path)
    if not isinstance(record, dict) or record.get("schema") != schemas.PREDICTIONS:
        schema = record.get("schema") if isinstance(record, dict) else None
        raise MedclfError(f"{path}: schema {schema!r} is not {schemas.PREDICTIONS}; re-run `medclf test`")
    return record


def build_record(split, classes, positive_class, model, paths, labels, probabilities, logits=None, uncertainty=None,
                 **extra):
    """A medclf.predictions/1 record, the one builder every writer uses (test, cv, ensemble, probe):
    `predictions` are the argmax of `probabilities`, `logits` their log (clipped at LOG_CLIP) unless
    given, and seed 002's keys ("predictive probabilities", one-hot "label probabilities") are
    filled in. `extra` keys (e.g. inference) follow."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    labels = [int(y) for y in labels]
    listed = probabilities.tolist()
    logits = log_probabilities(probabilities) if logits is None else np.asarray(logits, dtype=np.float64)
    record = {
        "schema": schemas.PREDICTIONS, "split": split, "classes": list(classes), "positive_class": positive_class,
        "model": model, "paths": list(paths), "labels": labels,
        "predictions": [int(k) for k in probabilities.argmax(axis=1)], "probabilities": listed,
        "logits": logits.tolist(), "predictive probabilities": listed,
        "label probabilities": [[1.0 if k == y else 0.0 for k in range(len(classes))] for y in labels],
        "uncertainty": uncertainty,
    }
    record.update(extra)
    return record


def log_probabilities(probabilities):
    """The `logits` field of a record written from probabilities: log(p), p clipped at LOG_CLIP."""
    return np.log(np.clip(np.asarray(probabilities, dtype=np.float64), LOG_CLIP, None))


def passed_subset(record):
    """The predictions record restricted to images whose quality verdict is 'passed'
    (None when the record carries no verdicts)."""
    verdicts = record.get("quality")
    if not isinstance(verdicts, list):
        return None
    return subset_record(record, [i for i, v in enumerate(verdicts) if v == "passed"])


def subset_record(record, keep):
    """The predictions record restricted to the images at the indices `keep`, in that order."""
    subset = dict(record)
    for key in PER_IMAGE_KEYS:
        if isinstance(record.get(key), list):
            subset[key] = [record[key][i] for i in keep]
    return subset
