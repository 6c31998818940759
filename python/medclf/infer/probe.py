"""`medclf probe`: a linear probe (logistic regression or linear SVM) on `medclf embed` embeddings.

Steps, each on the split it names and no other:
  1. StandardScaler + model fitted on train, for every C of the grid (default 1e-6 .. 1e2; a
     choice at either end of the grid is warned about: extend --C);
  2. C chosen on val: the highest mean one-vs-rest ROC-AUC of the decision values (binary: the
     AUC), ties to the smaller C (stronger regularisation);
  3. probabilities: binary (both models): Platt scaling, a one-feature logistic regression of the
     decision value fitted on val; multi-class logreg: its own multinomial softmax; multi-class
     linear SVM (one-vs-rest): one Platt fit per class on val, the K probabilities renormalised
     to sum to 1. Val probabilities are thus fitted on val itself: score the test split.
  4. predictions_val.json and predictions_test.json in the standard contract (medclf.predictions/1;
     logits = log probabilities), so `medclf report` and `medclf compare` read them unchanged;
     probe.json (medclf.probe/1): model, C grid with val scores, chosen C, calibration, the
     embeddings file's SHA-256 and meta, seconds spent fitting (grid + calibration).
"""

import sys
import time
import warnings
from pathlib import Path

import numpy as np

from medclf.core import layout, schemas
from medclf.core.errors import MedclfError
from medclf.core.fileio import sha256_file, write_json
from medclf.core.predictions import build_record
from medclf.infer.embed import read_embeddings

MODELS = ("logreg", "linear-svm")
DEFAULT_GRID = tuple(10.0 ** e for e in range(-6, 3))


def _log(message):
    print(f"medclf probe: {message}", file=sys.stderr, flush=True)


def build_probe(model, C, class_weight=None, seed=0):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    if model == "logreg":
        clf = LogisticRegression(C=C, max_iter=5000, class_weight=class_weight)
    elif model == "linear-svm":
        clf = LinearSVC(C=C, max_iter=20000, class_weight=class_weight, random_state=seed)
    else:
        raise MedclfError(f"--model {model}: unknown; use one of {', '.join(MODELS)}")
    return make_pipeline(StandardScaler(), clf)


def decision_columns(pipeline, X, n_classes):
    """(N, K) scores: binary -> [-d, d], multi-class -> the K one-vs-rest (or multinomial) scores."""
    d = pipeline.decision_function(X)
    return np.column_stack([-d, d]) if d.ndim == 1 else d


def val_score(labels, scores):
    """Mean over classes present with both outcomes of the one-vs-rest ROC-AUC of that class's score."""
    from sklearn.metrics import roc_auc_score

    aucs = [roc_auc_score(labels == k, scores[:, k]) for k in range(scores.shape[1])
            if 0 < (labels == k).sum() < len(labels)]
    if not aucs:
        raise MedclfError("the val split has a single class: C cannot be chosen on it; re-partition with more val images")
    return float(np.mean(aucs)) if scores.shape[1] > 2 else float(aucs[-1])


def choose_C(model, grid, train, val, n_classes, class_weight=None, seed=0):
    """(fitted pipeline of the chosen C, [{C, val_score, warnings}]): fitted on train, scored on val."""
    table, best = [], None
    for C in sorted(grid):
        pipeline = build_probe(model, C, class_weight, seed)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pipeline.fit(*train)
        score = val_score(val[1], decision_columns(pipeline, val[0], n_classes))
        table.append({"C": C, "val_score": score, "warnings": sorted({str(w.message).split(".")[0] for w in caught})})
        if best is None or score > best[0]:  # strict: a tie keeps the smaller C
            best = (score, pipeline)
    return best[1], table


def platt(decision, positive):
    """(a, b) of P = 1 / (1 + exp(-(a * d + b))), an unregularised logistic fit on (d, positive)."""
    from sklearn.linear_model import LogisticRegression

    if positive.all() or not positive.any():
        raise MedclfError("the val split has a single class for Platt scaling; re-partition with more val images")
    fit = LogisticRegression(C=np.inf, max_iter=1000).fit(decision.reshape(-1, 1), positive.astype(int))
    return float(fit.coef_[0, 0]), float(fit.intercept_[0])


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def fit_calibration(model, pipeline, X_val, y_val, n_classes):
    """How decision values become probabilities, fitted on val: [{class, a, b}] or softmax."""
    scores = decision_columns(pipeline, X_val, n_classes)
    if n_classes == 2:
        a, b = platt(scores[:, 1], y_val == 1)
        return {"method": "platt", "fitted_on": "val", "per_class": [{"class": 1, "a": a, "b": b}]}
    if model == "logreg":
        return {"method": "softmax", "fitted_on": "train (the multinomial model itself)", "per_class": []}
    per_class = [dict(zip(("a", "b"), platt(scores[:, k], y_val == k)), **{"class": k}) for k in range(n_classes)]
    return {"method": "platt one-vs-rest, renormalised", "fitted_on": "val", "per_class": per_class}


def probabilities(pipeline, calibration, X, n_classes):
    """(N, K) probabilities, rows summing to 1."""
    if calibration["method"] == "softmax":
        return pipeline.predict_proba(X)
    scores = decision_columns(pipeline, X, n_classes)
    if n_classes == 2:
        c = calibration["per_class"][0]
        p = _sigmoid(c["a"] * scores[:, 1] + c["b"])
        return np.column_stack([1.0 - p, p])
    p = np.column_stack([_sigmoid(c["a"] * scores[:, c["class"]] + c["b"]) for c in calibration["per_class"]])
    return p / p.sum(axis=1, keepdims=True)


def predictions_record(split, data, rows, probs, model_info):
    """The standard predictions file (medclf.predictions/1) of one split."""
    from medclf.evaluate import uncertainty

    classes = [str(c) for c in data["classes"]]
    labels = [int(y) for y in data["labels"][rows]]
    probs = np.clip(np.asarray(probs, dtype=np.float64), 0.0, 1.0)
    probs = probs / probs.sum(axis=1, keepdims=True)
    return build_record(split, classes, data["meta"].get("positive_class"), model_info,
                        [str(p) for p in data["paths"][rows]], labels, probs,
                        uncertainty=uncertainty.uncertainty_record("softmax", probabilities=probs))


def split_rows(data, split, path):
    rows = np.flatnonzero(data["splits"] == split)
    if not len(rows):
        raise MedclfError(f"{path}: no {split} images in the embeddings; embed a splits file with train, val and test")
    return rows


def run_probe(embeddings, out, model="logreg", grid=DEFAULT_GRID, class_weight=None, seed=0):
    """Write OUT/predictions_val.json, predictions_test.json and probe.json; returns probe.json's dict."""
    from medclf.core.provenance import git_commit, library_versions

    data = read_embeddings(embeddings)
    X, y, n_classes = data["embeddings"].astype(np.float64), data["labels"], len(data["classes"])
    rows = {s: split_rows(data, s, embeddings) for s in ("train", "val", "test")}
    if len(np.unique(y[rows["train"]])) < 2:
        raise MedclfError(f"{embeddings}: the train split has a single class; a probe needs two or more")
    _log(f"{model} on {X.shape[1]}-d embeddings: C from {len(grid)} values on {len(rows['val'])} val images")
    started = time.perf_counter()
    pipeline, table = choose_C(model, grid, (X[rows["train"]], y[rows["train"]]), (X[rows["val"]], y[rows["val"]]),
                               n_classes, class_weight, seed)
    chosen = pipeline[-1].C
    if len(grid) > 1 and chosen in (min(grid), max(grid)):
        _log(f"warning: C = {chosen:g} is at the end of the grid; the best C may lie beyond it: extend --C")
    calibration = fit_calibration(model, pipeline, X[rows["val"]], y[rows["val"]], n_classes)
    seconds = time.perf_counter() - started
    info = {"architecture": f"probe:{model} on {data['meta'].get('architecture')}", "checkpoint": None, "epoch": None,
            "probe": {"model": model, "C": chosen, "embeddings": str(embeddings)}}
    out = Path(out)
    written = {}
    for split in ("val", "test"):
        probs = probabilities(pipeline, calibration, X[rows[split]], n_classes)
        written[split] = layout.predictions_file(out, split)
        write_json(written[split], predictions_record(split, data, rows[split], probs, info))
    summary = {"schema": schemas.PROBE, "model": model, "class_weight": class_weight, "grid": table, "C": chosen,
               "selection": "mean one-vs-rest val ROC-AUC of the decision values; ties -> smaller C",
               "calibration": calibration, "embeddings": {"path": str(embeddings), "sha256": sha256_file(embeddings),
                                                          "meta": data["meta"]},
               "counts": {s: int(len(r)) for s, r in rows.items()}, "seconds": round(seconds, 3),
               "library_versions": library_versions(), "git_commit": git_commit()}
    write_json(out / "probe.json", summary)
    return summary
