"""`medclf ensemble`: combine the predictions of several runs of the same images into one
predictions file, so `report`, `compare` and the R scripts read it unchanged.

Members are run folders (their predictions_<split>.json) or predictions files, of the same split
and the same images (joined by path; the first member's order is kept). Methods:
- mean: the mean of the members' probabilities.
- weighted: a weighted mean; the weights are given (--weights, normalised to sum 1) or fitted on
  the members' validation predictions (predictions_val.json beside each member's file) by
  minimising the log loss of the weighted mean (weights = softmax of free parameters, L-BFGS from
  equal weights). Only validation predictions are read for the fit, never the split being combined.
- rank: binary only; each member's positive-class probability becomes its normalised rank
  ((rank - 1/2) / n, ties averaged), and the ranks are averaged. Only the order of the images
  means something (ROC-AUC, average precision): the scores are not calibrated probabilities, the
  file says so ("model": {"calibrated": false, ...}) and `medclf report` refuses threshold
  metrics on it unless --allow-uncalibrated.

Outputs in --out: predictions_<split>.json (medclf.predictions/1; "model" lists the members and
their weights; "uncertainty" has method "ensemble": entropy of the combined probabilities and the
members' disagreement, mutual information), predictions_val.json of the same ensemble when every
member has validation predictions and <split> is not val (for threshold rules in `medclf report`),
and ensemble.json (medclf.ensemble/1: members with SHA-256, method, weights and how they were
chosen, versions, git commit). See docs/sweep.md.
"""

import os
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from medclf.core import layout, schemas
from medclf.core.errors import MedclfError
from medclf.core.fileio import sha256_file, write_json
from medclf.core.predictions import build_record, read_predictions_file, validate_predictions
from medclf.core.provenance import library_versions
from medclf.evaluate import uncertainty
from medclf.evaluate.metrics import mid_ranks

METHODS = ("mean", "weighted", "rank")
RANK_NOTE = ("rank-averaged scores: only the order of the images is meaningful (ROC-AUC, average precision); "
             "they are not calibrated probabilities, so thresholds, sensitivity, specificity and calibration "
             "computed on them mean nothing")
_SHOWN = 5  # paths named in a mismatch message


# ------------------------------------------------------------------------------- reading members

def member_file(member, split):
    """The predictions file of a member: RUN/predictions_<split>.json, or the file itself."""
    path = Path(member)
    if path.is_dir():
        path = layout.predictions_file(path, split)
        if not path.is_file():
            raise MedclfError(f"{path}: not found; run `medclf test --run {member} --split {split}` first, "
                              "or give the predictions file")
    elif not path.is_file():
        raise MedclfError(f"{path}: no such run folder or predictions file")
    return path


def read_member(path, split):
    """A member's validated predictions (core.predictions.validate_predictions), with paths, of `split`."""
    raw = read_predictions_file(path)
    data = validate_predictions(raw, path)
    if data["format"] != schemas.PREDICTIONS:
        raise MedclfError(f"{path}: an old four-key file without image paths; ensembles join members by path: "
                          "re-create it with `medclf test`")
    if data["split"] is not None and data["split"] != split:
        raise MedclfError(f"{path}: holds the {data['split']} split, not {split}; give --split {data['split']} "
                          f"or the members' predictions_{split}.json")
    if not data["paths"] or len(set(data["paths"])) != len(data["paths"]):
        raise MedclfError(f"{path}: paths are missing or repeated; ensembles join members by image path")
    if isinstance(raw.get("model"), dict) and raw["model"].get("calibrated") is False:
        raise MedclfError(f"{path}: holds rank scores, not probabilities; combine the members it was made of")
    return data


def _listed(paths):
    shown = ", ".join(repr(p) for p in paths[:_SHOWN])
    return shown + (f" and {len(paths) - _SHOWN} more" if len(paths) > _SHOWN else "")


def align_members(members):
    """Reorder every member to the first member's image order; refuse other images, classes or labels."""
    first = members[0]
    order_of = {p: i for i, p in enumerate(first["paths"])}
    aligned = [first]
    for data in members[1:]:
        if data["classes"] != first["classes"]:
            raise MedclfError(f"{data['source']}: classes ({', '.join(data['classes'])}) differ from "
                              f"{first['source']} ({', '.join(first['classes'])}); ensemble runs of one study")
        here = set(data["paths"])
        missing = [p for p in first["paths"] if p not in here]
        extra = [p for p in data["paths"] if p not in order_of]
        if missing or extra:
            parts = ([f"lacks {len(missing)} image(s) of {first['source']}: {_listed(missing)}"] if missing else []) + \
                    ([f"has {len(extra)} image(s) that {first['source']} lacks: {_listed(extra)}"] if extra else [])
            raise MedclfError(f"{data['source']}: {'; '.join(parts)}; ensemble members must predict the same "
                              "images of the same split (test every run on one splits file)")
        position = {p: i for i, p in enumerate(data["paths"])}
        idx = np.array([position[p] for p in first["paths"]])
        data = dict(data, paths=list(first["paths"]), labels=data["labels"][idx], probabilities=data["probabilities"][idx])
        differ = np.flatnonzero(data["labels"] != first["labels"])
        if len(differ):
            raise MedclfError(f"{data['source']}: labels differ from {first['source']} for {len(differ)} image(s): "
                              f"{_listed([first['paths'][i] for i in differ])}; members must use the same labels")
        aligned.append(data)
    return aligned


def load_members(members, split):
    """(files, aligned data) of the members' `split` predictions; the same file twice is refused."""
    files = [member_file(m, split) for m in members]
    seen = {}
    for f in files:
        real = os.path.realpath(f)
        if real in seen:
            raise MedclfError(f"{f}: is the same predictions file as {seen[real]}; give each member once "
                              "(use --method weighted --weights to weight one more)")
        seen[real] = f
    return files, align_members([read_member(f, split) for f in files])


# ------------------------------------------------------------------------------------ combining

def combine_mean(stack, weights):
    """(M, N, K) member probabilities and M weights summing to 1 -> (N, K) weighted mean."""
    return np.tensordot(np.asarray(weights, dtype=np.float64), stack, axes=1)


def combine_rank(stack):
    """Binary (M, N, 2) -> (N, 2): [1 - r, r], r = the members' mean normalised rank of P(class 1)."""
    n = stack.shape[1]
    ranks = np.stack([(mid_ranks(member[:, 1]) - 0.5) / n for member in stack])
    r = ranks.mean(axis=0)
    return np.column_stack([1.0 - r, r])


def fit_weights(stack, labels):
    """Weights (summing to 1) minimising the log loss of the weighted mean of validation
    probabilities `stack` (M, N, K) with `labels` (N,); starts from equal weights."""
    from scipy.optimize import minimize

    stack = np.asarray(stack, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    own = stack[:, np.arange(stack.shape[1]), labels].T  # (N, M): each member's probability of the truth

    def loss(z):
        w = np.exp(z - z.max())
        w /= w.sum()
        return -np.mean(np.log(np.clip(own @ w, 1e-12, None)))

    result = minimize(loss, np.zeros(stack.shape[0]), method="L-BFGS-B")
    w = np.exp(result.x - result.x.max())
    return w / w.sum(), float(result.fun), float(loss(np.zeros(stack.shape[0])))


def given_weights(weights, n_members):
    w = np.asarray([float(x) for x in weights], dtype=np.float64)
    if len(w) != n_members:
        raise MedclfError(f"--weights: {len(w)} weight(s) for {n_members} members; give one per member, in order")
    if np.any(~np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise MedclfError(f"--weights {' '.join(map(str, weights))}: use non-negative numbers, not all 0")
    return w / w.sum()


def choose_weights(method, weights, members, files):
    """(weights, how they were chosen) for the method; the fit reads validation predictions only."""
    if weights is not None and method != "weighted":
        raise MedclfError(f"--weights only goes with --method weighted (not {method})")
    n = len(members)
    if method != "weighted":
        return np.full(n, 1.0 / n), {"source": "equal" if method == "mean" else "equal ranks"}
    if weights is not None:
        return given_weights(weights, n), {"source": "given (--weights)"}
    val_files, val = validation_members(files, "fit the weights")
    w, fitted_loss, equal_loss = fit_weights(np.stack([d["probabilities"] for d in val]), val[0]["labels"])
    return w, {"source": "fitted on validation predictions (log loss of the weighted mean)",
               "fitted_on": [str(f) for f in val_files], "n_validation": int(len(val[0]["labels"])),
               "validation_log_loss": fitted_loss, "validation_log_loss_equal_weights": equal_loss}


def validation_members(files, purpose):
    """The members' predictions_val.json (beside each member's file), aligned."""
    val_files = [f.with_name("predictions_val.json") for f in files]
    absent = [str(f) for f in val_files if not f.is_file()]
    if absent:
        raise MedclfError(f"{absent[0]}: not found; validation predictions are needed to {purpose} "
                          "(`medclf test` writes them beside predictions_test.json), or give --weights")
    return val_files, align_members([read_member(f, "val") for f in val_files])


def ensemble_uncertainty(stack, weights, sources):
    """The "uncertainty" block: entropy of the combined probabilities, and the weighted mean of the
    members' entropies; their difference (mutual information) is the members' disagreement."""
    mean = combine_mean(stack, weights)
    predictive = uncertainty.entropy(mean)
    expected = np.tensordot(weights, uncertainty.entropy(stack), axes=1)
    measures = {"predictive_entropy": predictive.tolist(), "expected_entropy": expected.tolist(),
                "mutual_information": np.maximum(predictive - expected, 0.0).tolist()}
    return uncertainty.uncertainty_record("ensemble", samples=len(sources), members=sources, measures=measures)


# ------------------------------------------------------------------------------------ the stage

def ensemble_record(split, method, members, files, weights):
    """The ensemble's predictions file (medclf.predictions/1)."""
    stack = np.stack([d["probabilities"] for d in members])
    first = members[0]
    probabilities = combine_rank(stack) if method == "rank" else combine_mean(stack, weights)
    sources = [str(f) for f in files]
    model = {"architecture": "ensemble", "checkpoint": None, "epoch": None, "method": method,
             "members": [{"predictions": s, "architecture": (d["model"] or {}).get("architecture"),
                          "checkpoint": (d["model"] or {}).get("checkpoint"), "epoch": (d["model"] or {}).get("epoch"),
                          "weight": float(w)} for s, d, w in zip(sources, members, weights)],
             "calibrated": method != "rank"}
    if method == "rank":
        model["note"] = RANK_NOTE
    return build_record(split, first["classes"], first["positive_class"], model, first["paths"], first["labels"],
                        probabilities,
                        uncertainty=None if method == "rank" else ensemble_uncertainty(stack, weights, sources))


def run_ensemble(members, method="mean", weights=None, split="test", out_dir=None):
    """Write OUT/predictions_<split>.json (and predictions_val.json, ensemble.json). Returns the paths."""
    from medclf.core.provenance import git_commit

    if method not in METHODS:
        raise MedclfError(f"--method {method}: use one of {', '.join(METHODS)}")
    if not members:
        raise MedclfError("give at least one run folder or predictions file")
    if out_dir is None:
        raise MedclfError("--out is required: the folder for the ensemble's predictions")
    files, data = load_members(members, split)
    if method == "rank" and len(data[0]["classes"]) != 2:
        raise MedclfError(f"--method rank: {files[0]} has {len(data[0]['classes'])} classes; rank averaging keeps "
                          "an order for two classes only; use --method mean or weighted")
    w, chosen = choose_weights(method, weights, data, files)
    records = {layout.predictions_file(out_dir, split): ensemble_record(split, method, data, files, w)}
    if split != "val" and all(f.with_name("predictions_val.json").is_file() for f in files):
        val_files, val = validation_members(files, "")
        records[Path(out_dir) / "predictions_val.json"] = ensemble_record("val", method, val, val_files, w)
    provenance = {"schema": schemas.ENSEMBLE, "method": method, "split": split,
                  "members": [{"predictions": str(f), "sha256": sha256_file(f), "weight": float(x)}
                              for f, x in zip(files, w)],
                  "weights": chosen, "calibrated": method != "rank", "n": len(data[0]["labels"]),
                  "versions": library_versions(("numpy", "scipy")), "git_commit": git_commit(),
                  "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    for path, record in records.items():
        write_json(path, record)
    write_json(Path(out_dir) / "ensemble.json", provenance)
    return list(records) + [Path(out_dir) / "ensemble.json"]


def refuse_uncalibrated(raw, source, allowed):
    """`medclf report` on rank scores: refused unless allowed; returns the note to print, or None."""
    model = raw.get("model") if isinstance(raw, dict) else None
    if not isinstance(model, dict) or model.get("calibrated") is not False:
        return None
    if not allowed:
        raise MedclfError(f"{source}: {RANK_NOTE}. Compare its ROC-AUC with `medclf compare`, or pass "
                          "--allow-uncalibrated to report every metric anyway")
    return model.get("note") or RANK_NOTE
