"""Predictions files made by hand for the report, compare and probe tests, and the comparison of two
results structures to 1e-9 that the parity tests use (shared, not copied)."""

import json
import math

import numpy as np

from medclf.evaluate import report as R

TOL = 1e-9
SKIP_KEYS = {"engine", "engine_notes"}


def leaves(obj, path=""):
    """Flatten a results structure into {path: leaf}."""
    out = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k not in SKIP_KEYS:
                out.update(leaves(v, f"{path}/{k}"))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out.update(leaves(v, f"{path}[{i}]"))
    else:
        out[path] = obj
    return out


def assert_same(a, b, what):
    la, lb = leaves(a), leaves(b)
    assert set(la) == set(lb), f"{what}: keys differ: {sorted(set(la) ^ set(lb))[:10]}"
    n_numbers = 0
    for key, x in la.items():
        y = lb[key]
        if isinstance(x, (int, float)) and not isinstance(x, bool) and isinstance(y, (int, float)):
            assert math.isclose(x, y, rel_tol=0, abs_tol=TOL), f"{what}: {key}: {x} != {y}"
            n_numbers += 1
        else:
            assert x == y, f"{what}: {key}: {x!r} != {y!r}"
    assert n_numbers > 0


def write_predictions(path, labels, probabilities, classes, positive=None, legacy=False):
    labels = [int(v) for v in labels]
    probs = np.asarray(probabilities, dtype=float).tolist()
    onehot = [[1.0 if k == y else 0.0 for k in range(len(classes))] for y in labels]
    preds = [int(np.argmax(r)) for r in probs]
    if legacy:
        obj = {"labels": labels, "predictions": preds, "predictive probabilities": probs, "label probabilities": onehot}
    else:
        obj = {"schema": "medclf.predictions/1", "split": path.stem.split("_")[-1], "classes": classes,
               "positive_class": positive, "model": {"architecture": "fixture"},
               "paths": [f"img{i:04d}.png" for i in range(len(labels))], "labels": labels, "predictions": preds,
               "probabilities": probs, "logits": probs, "predictive probabilities": probs, "label probabilities": onehot}
    path.write_text(json.dumps(obj))
    return path


def normalise_rows(raw):
    raw = np.asarray(raw, dtype=float)
    return raw / raw.sum(axis=1, keepdims=True)


def binary_probs(p1):
    p1 = np.asarray(p1, dtype=float)
    return np.column_stack([1 - p1, p1])


def four_key_float32_probabilities(logits):
    """Softmax in float32, as python/test_torchvision.py computes it, written as Python floats."""
    e = np.exp(np.asarray(logits, dtype=np.float32) - np.max(logits, axis=1, keepdims=True).astype(np.float32))
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float64)


def python_results(request):
    return json.loads(json.dumps(R.python_report(request)))  # as written to disk
