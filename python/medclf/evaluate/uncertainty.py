"""Per-image uncertainty and selective prediction (pure, no I/O; no R side).

- predictive entropy H[mean_s p_s] (nats) of the predictive distribution;
- expected entropy mean_s H[p_s] and mutual information H[mean p] - mean H[p_s] (the epistemic
  part; Houlsby et al. 2011, Gal & Ghahramani 2016), from S stochastic samples: MC dropout
  passes today; the members of an ensemble later fill the same fields (method "ensemble");
- risk-coverage: keep the images with the lowest uncertainty, score the kept ones; the area
  under the risk (error rate) - coverage curve, AURC (Geifman & El-Yaniv 2017), lower is better.
"""

import numpy as np

from medclf.evaluate import metrics as M

REJECT_FRACTIONS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5)


def entropy(p):
    p = np.asarray(p, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, -p * np.log(p), 0.0)
    return terms.sum(axis=-1)


def sample_uncertainty(samples):
    """(S, N, K) sampled probabilities -> mean probabilities and per-image measures."""
    samples = np.asarray(samples, dtype=np.float64)
    mean = samples.mean(axis=0)
    predictive = entropy(mean)
    expected = entropy(samples).mean(axis=0)
    return mean, {"predictive_entropy": predictive.tolist(), "expected_entropy": expected.tolist(),
                  "mutual_information": np.maximum(predictive - expected, 0.0).tolist()}


def uncertainty_record(method, samples=None, members=None, measures=None, probabilities=None):
    """The predictions file's "uncertainty" block. method: softmax (one pass: entropy only),
    mc_dropout (samples = passes) or ensemble (members = run folders; not built yet)."""
    if measures is None:
        measures = {"predictive_entropy": entropy(probabilities).tolist(), "expected_entropy": None,
                    "mutual_information": None}
    return {"method": method, "samples": samples, "members": members, **measures}


def risk_coverage(correct, uncertainty):
    """Coverage and selective risk (error rate of the kept images) at each distinct uncertainty
    cut, most certain first; ties are kept or rejected together. AURC = sum of risk x coverage step."""
    correct = np.asarray(correct, dtype=np.float64)
    u = np.asarray(uncertainty, dtype=np.float64)
    order = np.argsort(u, kind="stable")
    u, errors = u[order], 1.0 - correct[order]
    last = np.append(u[1:] != u[:-1], True)
    kept = np.arange(1, len(u) + 1)[last]
    risk = np.cumsum(errors)[last] / kept
    coverage = kept / len(u)
    aurc = float(np.sum(np.diff(np.concatenate([[0.0], coverage])) * risk))
    return {"coverage": coverage.tolist(), "risk": risk.tolist(), "aurc": aurc}


def rejection_table(labels, probabilities, uncertainty, fractions=REJECT_FRACTIONS):
    """Accuracy and (macro one-vs-rest) AUC after rejecting the most uncertain fraction."""
    labels = np.asarray(labels)
    p = np.asarray(probabilities, dtype=np.float64)
    order = np.argsort(np.asarray(uncertainty, dtype=np.float64), kind="stable")
    rows = []
    for f in fractions:
        keep = order[: max(1, int(round(len(labels) * (1 - f))))]
        y, q = labels[keep], p[keep]
        auc = M.roc_auc_ovr_macro(y, q)
        rows.append({"rejected": f, "n_kept": int(len(keep)), "accuracy": float(np.mean(q.argmax(axis=1) == y)),
                     "auc": None if np.isnan(auc) else auc})
    return rows
