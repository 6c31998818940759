"""`medclf conformal`: split conformal prediction sets, calibrated on val, applied to test.

Score of class y for an image (higher = less conforming; references in docs/report.md):
- lac  (least ambiguous set-valued classifier, Sadinle, Lei & Wasserman 2019): 1 - p_y.
- aps  (adaptive prediction sets, Romano, Sesia & Candes 2020; non-randomised): the total
       probability of the classes ranked above y plus p_y.
- raps (regularised APS, Angelopoulos et al. 2021): aps + lam * max(0, rank(y) - k_reg).
The threshold q is the ceil((n + 1)(1 - alpha))-th smallest score of the n validation images at
their true class (infinite when that exceeds n: every class is in every set); a test image's
set holds the classes with score <= q. With --mondrian class, q is computed per true class from
that class's validation images (class-conditional coverage, Vovk 2005). Exchangeability gives
P(true class in set) >= 1 - alpha.
An empty set is filled with the top class (it only adds coverage) unless allow_empty is set;
how many were filled is reported. No R side: coverage is a count (Clopper-Pearson, as in R).
"""

import math
from pathlib import Path

import numpy as np

from medclf.core import schemas
from medclf.core.errors import MedclfError
from medclf.core.fileio import sha256_file, write_json
from medclf.evaluate import metrics as M

CONFORMAL_SCHEMA = schemas.CONFORMAL
METHODS = ("lac", "aps", "raps")
RAPS_LAMBDA = 0.01
RAPS_K_REG = 1


def class_scores(probabilities, method, lam=RAPS_LAMBDA, k_reg=RAPS_K_REG):
    """(N, K) nonconformity score of every class for every image."""
    p = np.asarray(probabilities, dtype=np.float64)
    if method == "lac":
        return 1.0 - p
    order = np.argsort(-p, axis=1, kind="stable")
    sorted_p = np.take_along_axis(p, order, axis=1)
    cumulative = np.cumsum(sorted_p, axis=1)
    scores = np.empty_like(p)
    np.put_along_axis(scores, order, cumulative, axis=1)
    if method == "raps":
        ranks = np.empty_like(order)
        np.put_along_axis(ranks, order, np.arange(1, p.shape[1] + 1)[None, :].repeat(len(p), 0), axis=1)
        scores = scores + lam * np.maximum(0, ranks - k_reg)
    elif method != "aps":
        raise MedclfError(f"--method {method}: use one of {', '.join(METHODS)}")
    return scores


def conformal_quantile(scores, alpha):
    """The ceil((n + 1)(1 - alpha))-th smallest score; +inf when that rank exceeds n."""
    n = len(scores)
    rank = math.ceil((n + 1) * (1 - alpha))
    return float(np.sort(scores)[rank - 1]) if 1 <= rank <= n else math.inf


def calibrate_thresholds(probabilities, labels, alpha, method, mondrian=False):
    """q for every class: one shared q, or per true class with mondrian (a class absent from
    calibration gets +inf: its sets always include it)."""
    labels = np.asarray(labels)
    s = class_scores(probabilities, method)[np.arange(len(labels)), labels]
    k = np.asarray(probabilities).shape[1]
    if not mondrian:
        return np.full(k, conformal_quantile(s, alpha))
    return np.array([conformal_quantile(s[labels == c], alpha) for c in range(k)])


def prediction_sets(probabilities, thresholds, method, allow_empty=False):
    """Boolean (N, K) membership and the number of empty sets filled with the top class."""
    p = np.asarray(probabilities, dtype=np.float64)
    member = class_scores(p, method) <= np.asarray(thresholds)[None, :]
    empty = ~member.any(axis=1)
    if not allow_empty:
        member[np.flatnonzero(empty), p[empty].argmax(axis=1)] = True
    return member, int(empty.sum())


def coverage_summary(member, labels, classes):
    """Coverage (Clopper-Pearson) and mean set size, overall and per true class."""
    labels = np.asarray(labels)
    covered = member[np.arange(len(labels)), labels]
    sizes = member.sum(axis=1)
    per_class = {}
    for k, name in enumerate(classes):
        mine = labels == k
        per_class[name] = {"n": int(mine.sum()),
                           "coverage": M.proportion(int(covered[mine].sum()), int(mine.sum()), "0/0: no test images of this class"),
                           "mean_set_size": float(sizes[mine].mean()) if mine.any() else None}
    return {"n": int(len(labels)), "coverage": M.proportion(int(covered.sum()), len(labels), "0/0: no test images"),
            "mean_set_size": float(sizes.mean()),
            "set_size_counts": {str(s): int((sizes == s).sum()) for s in range(len(classes) + 1)},
            "per_class": per_class}


def run_conformal(run_dir, alpha=0.1, method="lac", mondrian=None, allow_empty=False, out_dir=None):
    """Calibrate on <run>/predictions_val.json, write sets for predictions_test.json; returns paths."""
    from medclf.core.provenance import git_commit, library_versions
    from medclf.evaluate.calibration import load_val_and_test

    if not 0 < alpha < 1:
        raise MedclfError(f"--alpha {alpha}: the miscoverage rate must lie strictly between 0 and 1 (e.g. 0.1)")
    if method not in METHODS:
        raise MedclfError(f"--method {method}: use one of {', '.join(METHODS)}")
    if mondrian not in (None, "class"):
        raise MedclfError(f"--mondrian {mondrian}: only 'class' (coverage per true class) is supported")
    run_dir = Path(run_dir)
    (val_path, val_obj, val), (test_path, test_obj, test) = load_val_and_test(run_dir)
    classes = test["classes"]
    thresholds = calibrate_thresholds(val["probabilities"], val["labels"], alpha, method, mondrian == "class")
    member, n_empty = prediction_sets(test["probabilities"], thresholds, method, allow_empty)
    settings = {"method": method, "alpha": alpha, "mondrian": mondrian, "allow_empty": allow_empty,
                "raps": {"lambda": RAPS_LAMBDA, "k_reg": RAPS_K_REG} if method == "raps" else None,
                "thresholds": {c: (None if math.isinf(q) else q) for c, q in zip(classes, thresholds)},
                "calibrated_on": str(val_path), "calibrated_on_sha256": sha256_file(val_path),
                "n_calibration": int(len(val["labels"])), "applied_to": str(test_path),
                "applied_to_sha256": sha256_file(test_path),
                "empty_sets": n_empty, "empty_sets_filled_with_top_class": (not allow_empty) and n_empty > 0}
    tag = f"conformal_{method}_a{alpha:g}" + ("_mondrian" if mondrian else "")
    out_dir = Path(out_dir or run_dir / tag)
    record = dict(test_obj, prediction_sets=[[classes[k] for k in np.flatnonzero(row)] for row in member],
                  conformal=settings)
    summary = {"schema": CONFORMAL_SCHEMA, **settings,
               "summary": coverage_summary(member, test["labels"], classes),
               "library_versions": library_versions(), "git_commit": git_commit()}
    paths = [out_dir / "predictions_test.json", out_dir / "conformal.json"]
    write_json(paths[0], record)
    write_json(paths[1], summary)
    return paths
