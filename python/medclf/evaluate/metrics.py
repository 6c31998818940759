"""Pure metric functions in Python (no I/O).

They serve two purposes: the training loop's monitored validation metrics, and the pure-Python
fallback of the R report (engine "python"), which must agree with R to 1e-9. Each function
states its 0/0 convention.
"""

import numpy as np


def mid_ranks(values):
    """Ranks 1..n of `values`, tied values sharing the mean of their ranks (scipy's
    rankdata(method="average"), R's rank()): exact halves, no floating-point sums. Kept in numpy
    because training scores every epoch with it, and scipy.stats costs a second to import."""
    _, index, counts = np.unique(np.asarray(values, dtype=np.float64), return_inverse=True, return_counts=True)
    last = np.cumsum(counts)
    return (last - (counts - 1) / 2.0)[index.reshape(-1)]


def roc_auc(labels_binary, scores):
    """Area under the ROC curve of `scores` for labels in {0, 1}, 1 = positive, higher score =
    more positive (pROC's direction "<"). Ties count one half (Mann-Whitney).
    One class absent: NaN (the AUC is undefined), never an error."""
    y = np.asarray(labels_binary).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = mid_ranks(s)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def roc_auc_ovr_macro(labels, probabilities):
    """Macro average of one-vs-rest AUCs over classes; classes absent from `labels` are
    skipped (their AUC is undefined). All undefined: NaN. Two classes: the AUC of class 1."""
    labels = np.asarray(labels)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.shape[1] == 2:
        return roc_auc(labels == 1, probabilities[:, 1])
    aucs = [roc_auc(labels == k, probabilities[:, k]) for k in range(probabilities.shape[1])]
    aucs = [a for a in aucs if not np.isnan(a)]
    return float(np.mean(aucs)) if aucs else float("nan")


def balanced_accuracy(labels, predictions, n_classes=None):
    """Mean recall over the classes present in `labels` (the ISIC 2018 headline metric).
    A class with no true examples has recall 0/0 and is left out of the mean; no examples: NaN."""
    labels = np.asarray(labels)
    predictions = np.asarray(predictions)
    present = np.unique(labels) if n_classes is None else [k for k in range(n_classes) if (labels == k).any()]
    if len(present) == 0:
        return float("nan")
    return float(np.mean([(predictions[labels == k] == k).mean() for k in present]))


# ---------------------------------------------------------------------------------------------
# The pure-Python fallback of the R report (R/metrics.R). Same conventions, same order of
# floating-point operations where it matters, so both agree to 1e-9 (tests/test_metrics_parity).
#
# - A case is called positive when its score (probability of the positive class) >= threshold.
# - Each metric is a dict {estimate, lower, upper, method[, note]}; 95% intervals; a ratio with
#   denominator 0 has estimate/lower/upper None and a note (never an error).
# - Proportions: exact Clopper-Pearson (as R's binom.test). F1: Clopper-Pearson of the Jaccard
#   index J = TP/(TP+FP+FN) mapped through F1 = 2J/(1+J). Balanced accuracy: MOVER-Wilson
#   interval of a mean of independent binomial proportions (see below).
# - ROC-AUC: Mann-Whitney (ties 1/2) with DeLong's interval as pROC computes it (fast DeLong of
#   Sun & Xu 2014 via mid-ranks); one class absent: None + note; fewer than 2 cases in a class:
#   interval None.
# - Average precision: sum_k (R_k - R_{k-1}) P_k over distinct thresholds (sklearn's definition),
#   logit interval. Macro AUC: DeLong covariance of the one-vs-rest AUCs. Calibration: Brier,
#   ECE (portable bootstrap interval), calibration slope and intercept (see the section below).
# - Cohen's kappa: Fleiss, Cohen & Everitt (1969) asymptotic SE, kappa +/- z SE clipped to [-1, 1].
# ---------------------------------------------------------------------------------------------

CONF_LEVEL = 0.95
# An interval narrower than this is reported as zero-width (its variance is 0), with the reason.
ZERO_WIDTH = 1e-12
METHOD_CP = "Clopper-Pearson"
METHOD_F1 = "Clopper-Pearson of Jaccard J=TP/(TP+FP+FN), mapped by F1=2J/(1+J)"
METHOD_AUC = "DeLong (pROC, direction '<')"
METHOD_AP = "step-wise sum over distinct thresholds (sklearn average_precision_score)"
METHOD_KAPPA = "Cohen's kappa; asymptotic SE of Fleiss, Cohen & Everitt (1969)"
METHOD_MACRO = "macro mean over classes where defined (one-vs-rest)"


def _num(x):
    if x is None:
        return None
    x = float(x)
    return None if np.isnan(x) else x


def zero_width(lower, upper):
    """True for an interval narrower than ZERO_WIDTH (its variance is 0); R: mc_zero_width."""
    return lower is not None and upper is not None and upper - lower < ZERO_WIDTH


def value(estimate, lower=None, upper=None, method="", note=None):
    """A metric value; a zero-width interval always carries a note (a generic one if the metric gave none)."""
    out = {"estimate": _num(estimate), "lower": _num(lower), "upper": _num(upper), "method": method}
    if note is None and zero_width(out["lower"], out["upper"]):
        note = "interval has zero width"
    if note is not None:
        out["note"] = note
    return out


def proportion(x, n, empty_note, method=METHOD_CP):
    """x/n with its exact Clopper-Pearson interval (R's binom.test); n = 0 gives None + note."""
    from scipy.stats import beta

    if n == 0:
        return value(None, None, None, method, empty_note)
    alpha = (1 - CONF_LEVEL) / 2
    lower = 0.0 if x == 0 else beta.ppf(alpha, x, n - x + 1)
    upper = 1.0 if x == n else beta.ppf(1 - alpha, x + 1, n - x)
    return value(x / n, lower, upper, method)


def confusion(is_positive, called_positive):
    y = np.asarray(is_positive, dtype=bool)
    c = np.asarray(called_positive, dtype=bool)
    return {"tp": int((y & c).sum()), "fn": int((y & ~c).sum()), "tn": int((~y & ~c).sum()), "fp": int((~y & c).sum())}


def macro_mean(values, method):
    est = [v["estimate"] for v in values if v["estimate"] is not None]
    if not est:
        return value(None, None, None, method, "undefined for every class")
    return value(np.mean(est), None, None, method)


def count_metrics(cm):
    tp, fn, tn, fp = cm["tp"], cm["fn"], cm["tn"], cm["fp"]
    sens = proportion(tp, tp + fn, "0/0: no positive cases; sensitivity undefined")
    spec = proportion(tn, tn + fp, "0/0: no negative cases; specificity undefined")
    ppv = proportion(tp, tp + fp, "0/0: no case called positive; PPV undefined")
    npv = proportion(tn, tn + fn, "0/0: no case called negative; NPV undefined")
    acc = proportion(tp + tn, tp + tn + fp + fn, "0/0: no cases")
    jac = proportion(tp, tp + fp + fn, "0/0: no positive cases and none called positive; F1 undefined", METHOD_F1)

    def to_f1(j):
        return None if j is None else 2 * j / (1 + j)

    f1 = dict(jac, estimate=to_f1(jac["estimate"]), lower=to_f1(jac["lower"]), upper=to_f1(jac["upper"]))
    bal = balanced_accuracy_interval([tp, tn], [tp + fn, tn + fp], "undefined unless both classes are present")
    return {"sensitivity": sens, "specificity": spec, "ppv": ppv, "npv": npv, "accuracy": acc, "f1": f1,
            "balanced_accuracy": bal}


def delong_placements(is_positive, scores):
    """(theta, V10 per positive case, V01 per negative case) by mid-ranks (Sun & Xu 2014)."""
    y = np.asarray(is_positive, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    cases, controls = s[y], s[~y]
    m, n = len(cases), len(controls)
    combined = mid_ranks(s)
    v10 = (combined[y] - mid_ranks(cases)) / n
    v01 = 1.0 - (combined[~y] - mid_ranks(controls)) / m
    return float(v10.mean()), v10, v01


def auc_delong(is_positive, scores):
    """ROC-AUC with pROC's DeLong interval (ci.auc(method = "delong"))."""
    from scipy.stats import norm

    y = np.asarray(is_positive, dtype=bool)
    m, n = int(y.sum()), int((~y).sum())
    if m == 0 or n == 0:
        return value(None, None, None, METHOD_AUC, "only one class present; AUC undefined")
    est = roc_auc(y, scores)
    if m < 2 or n < 2:
        return value(est, None, None, METHOD_AUC, "fewer than 2 cases in a class; DeLong interval undefined")
    theta, v10, v01 = delong_placements(y, scores)
    sx = float(np.sum((v10 - theta) * (v10 - theta))) / (m - 1)
    sy = float(np.sum((v01 - theta) * (v01 - theta))) / (n - 1)
    sd = np.sqrt(sx / m + sy / n)
    alpha = (1 - CONF_LEVEL) / 2
    lower = min(1.0, max(0.0, theta + sd * norm.ppf(alpha)))
    upper = min(1.0, max(0.0, theta + sd * norm.ppf(1 - alpha)))
    note = None
    if est in (0.0, 1.0):
        note = "perfect separation: DeLong variance is 0, interval degenerate"
    elif zero_width(lower, upper):
        why = "constant scores" if len(np.unique(scores)) == 1 else "every positive-negative pair ties alike"
        note = f"{why}: DeLong variance is 0, interval has zero width"
    return value(est, lower, upper, METHOD_AUC, note)


def threshold_table(is_positive, scores):
    """One row per distinct score, highest first: counts of cases scoring >= that threshold."""
    y = np.asarray(is_positive, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-s, kind="stable")
    s, yo = s[order], y[order]
    last = np.append(s[1:] != s[:-1], True)
    tp = np.cumsum(yo)[last].astype(np.float64)
    fp = np.cumsum(~yo)[last].astype(np.float64)
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    return {
        "threshold": s[last], "tp": tp, "fp": fp,
        "sensitivity": tp / n_pos if n_pos > 0 else np.full(len(tp), np.nan),
        "specificity": (n_neg - fp) / n_neg if n_neg > 0 else np.full(len(tp), np.nan),
        "precision": tp / (tp + fp),
    }


def average_precision(is_positive, scores):
    y = np.asarray(is_positive, dtype=bool)
    n_pos = int(y.sum())
    if n_pos == 0:
        return value(None, None, None, METHOD_AP, "no positive cases; AP undefined")
    tab = threshold_table(y, scores)
    recall = tab["tp"] / n_pos
    return value(float(np.sum(np.diff(np.concatenate([[0.0], recall])) * tab["precision"])), None, None, METHOD_AP)


def kappa(counts):
    """Cohen's kappa of a square matrix (rows = truth, columns = decision) with the FCE (1969) SE."""
    from scipy.stats import norm

    counts = np.asarray(counts, dtype=np.float64)
    n = counts.sum()
    if n == 0:
        return value(None, None, None, METHOD_KAPPA, "0/0: no cases")
    p = counts / n
    rows, cols = p.sum(axis=1), p.sum(axis=0)
    po, pe = float(np.trace(p)), float(np.sum(rows * cols))
    if pe == 1:
        return value(None, None, None, METHOD_KAPPA,
                     "0/0: chance agreement is 1 (truth and decisions each one class); kappa undefined")
    k = (po - pe) / (1 - pe)
    z = norm.ppf(1 - (1 - CONF_LEVEL) / 2)
    degenerate = _kappa_degenerate(counts, po)
    if degenerate:  # kappa is constant on every table of this support: its variance is exactly 0
        return value(k, k, k, METHOD_KAPPA, f"{degenerate}: kappa variance is 0, interval has zero width")
    a = np.sum(np.diag(p) * (1 - (rows + cols) * (1 - k)) ** 2)
    off = p.copy()
    np.fill_diagonal(off, 0)
    # cols[i] + rows[j] = p_.i + p_j., the weight of cell p_ij in the FCE formula.
    b = (1 - k) ** 2 * np.sum(off * (cols[:, None] + rows[None, :]) ** 2)
    variance = max(0.0, (a + b - (k - pe * (1 - k)) ** 2) / (n * (1 - pe) ** 2))
    se = np.sqrt(variance)
    return value(k, max(-1.0, k - z * se), min(1.0, k + z * se), METHOD_KAPPA)


def _kappa_degenerate(counts, po):
    """Why kappa's variance is exactly 0 (kappa = 0 with one class in the truth or the decisions,
    kappa = 1 with perfect agreement), or None; the formula would leave rounding noise (~1e-8 wide)."""
    if np.count_nonzero(counts.sum(axis=1) > 0) == 1:
        return "a single class in the truth"
    if np.count_nonzero(counts.sum(axis=0) > 0) == 1:
        return "a single class in the decisions"
    return "perfect agreement" if po == 1 else None


def parse_rule(rule):
    """'youden' | 'sensitivity:T' | 'specificity:T' -> (kind, target)."""
    from medclf.core.errors import MedclfError

    if rule == "youden":
        return "youden", None
    kind, _, target = str(rule).partition(":")
    try:
        t = float(target)
    except ValueError:
        t = None
    if kind not in ("sensitivity", "specificity") or t is None or not (0 < t <= 1):
        raise MedclfError(f"threshold rule '{rule}': use youden, sensitivity:T or specificity:T with 0 < T <= 1")
    return kind, t


def choose_threshold(is_positive, scores, rule):
    """Threshold from distinct observed scores (R: mc_choose_threshold): youden = max(sens+spec-1),
    ties to the higher threshold; sensitivity:T = highest threshold with sensitivity >= T;
    specificity:T = lowest threshold with specificity >= T."""
    from medclf.core.errors import MedclfError

    kind, target = parse_rule(rule)
    y = np.asarray(is_positive, dtype=bool)
    if y.all() or not y.any():
        raise MedclfError(f"threshold rule '{rule}' needs both classes in the validation predictions")
    tab = threshold_table(y, scores)
    if kind == "youden":
        j = tab["sensitivity"] + tab["specificity"] - 1
        i = int(np.flatnonzero(j == j.max())[0])
    elif kind == "sensitivity":
        ok = np.flatnonzero(tab["sensitivity"] >= target)
        i = int(ok[0]) if len(ok) else None
    else:
        ok = np.flatnonzero(tab["specificity"] >= target)
        i = int(ok[-1]) if len(ok) else None
    if i is None:
        raise MedclfError(f"threshold rule '{rule}': no threshold reaches the target on the validation predictions")
    return {"threshold": float(tab["threshold"][i]), "rule": rule, "sensitivity": float(tab["sensitivity"][i]),
            "specificity": float(tab["specificity"][i])}


def _operating_point(kind, target, tab, i):
    if i is None:
        return {"kind": kind, "target": target, "threshold": None, "sensitivity": None, "specificity": None,
                "precision": None, "note": "no threshold reaches the target"}
    return {"kind": kind, "target": target, "threshold": float(tab["threshold"][i]),
            "sensitivity": float(tab["sensitivity"][i]), "specificity": float(tab["specificity"][i]),
            "precision": float(tab["precision"][i])}


def operating_points(is_positive, scores, spec_targets=(0.9, 0.95), sens_targets=(0.9, 0.95),
                     recall_targets=(0.95, 0.999)):
    """Step-function operating points on one set (no interpolation): sensitivity at specificity >= T,
    specificity at sensitivity >= T, and the highest precision with recall >= T (ties to the
    higher threshold; the original notebook took the first point below the target instead)."""
    y = np.asarray(is_positive, dtype=bool)
    if y.all() or not y.any():
        return []
    tab = threshold_table(y, scores)
    out = []
    for t in spec_targets:
        ok = np.flatnonzero(tab["specificity"] >= t)
        out.append(_operating_point("sensitivity_at_specificity", t, tab, int(ok[-1]) if len(ok) else None))
    for t in sens_targets:
        ok = np.flatnonzero(tab["sensitivity"] >= t)
        out.append(_operating_point("specificity_at_sensitivity", t, tab, int(ok[0]) if len(ok) else None))
    for t in recall_targets:
        ok = np.flatnonzero(tab["sensitivity"] >= t)
        i = None
        if len(ok):
            prec = tab["precision"][ok]
            i = int(ok[np.flatnonzero(prec == prec.max())[0]])
        out.append(_operating_point("precision_at_recall", t, tab, i))
    return out


def binary_metrics(is_positive, scores, threshold):
    y = np.asarray(is_positive, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    cm = confusion(y, s >= threshold)
    m = count_metrics(cm)
    m["roc_auc"] = auc_delong(y, s)
    m["average_precision"] = average_precision_logit(y, s)
    m["cohen_kappa"] = kappa([[cm["tn"], cm["fp"]], [cm["fn"], cm["tp"]]])
    m.update(calibration_metrics(y, s))
    return {"confusion_matrix": cm, "metrics": m}


def per_class_metrics(labels, decided, probabilities, classes):
    labels = np.asarray(labels)
    decided = np.asarray(decided)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    out = {}
    indices = bootstrap_indices(len(labels)) if len(labels) else None
    for k, name in enumerate(classes):
        is_k = labels == k
        cm = confusion(is_k, decided == k)
        m = count_metrics(cm)
        del m["balanced_accuracy"], m["accuracy"]
        m["roc_auc"] = auc_delong(is_k, probabilities[:, k])
        m["average_precision"] = average_precision_logit(is_k, probabilities[:, k])
        m.update(calibration_metrics(is_k, probabilities[:, k], indices))
        out[name] = {"n": int(is_k.sum()), "confusion_matrix": cm, "metrics": m}
    return out


def macro_metrics(per_class):
    names = ["sensitivity", "specificity", "ppv", "npv", "f1", "roc_auc", "average_precision"]
    return {nm: macro_mean([pc["metrics"][nm] for pc in per_class.values()], METHOD_MACRO) for nm in names}


def confusion_table(labels, decided, n_classes):
    counts = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(counts, (np.asarray(labels), np.asarray(decided)), 1)
    return counts


def multiclass_metrics(labels, probabilities, classes):
    """Decided class = argmax (first on ties); per-class one-vs-rest, macro, accuracy, balanced
    accuracy (mean recall over classes present), kappa and macro one-vs-rest AUC."""
    labels = np.asarray(labels)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    decided = probabilities.argmax(axis=1)
    counts = confusion_table(labels, decided, len(classes))
    per_class = per_class_metrics(labels, decided, probabilities, classes)
    macro = macro_metrics(per_class)
    rows = counts.sum(axis=1)
    present = np.flatnonzero(rows > 0)
    bal = balanced_accuracy_interval(np.diag(counts)[present].tolist(), rows[present].tolist(), "no cases")
    onehot = (labels[:, None] == np.arange(len(classes))[None, :]).astype(np.float64)
    metrics = {"accuracy": proportion(int(np.trace(counts)), len(labels), "0/0: no cases"),
               "balanced_accuracy": bal, "cohen_kappa": kappa(counts),
               "macro_auc": macro_auc_delong(labels, probabilities),
               "brier_score": brier(onehot, probabilities),
               "ece": dict(ece(decided == labels, probabilities.max(axis=1)), method=METHOD_ECE_TOP)}
    return {"confusion_matrix": {"classes": list(classes), "rows": "truth", "columns": "decision",
                                 "matrix": counts.tolist()},
            "metrics": metrics, "per_class": per_class, "macro": macro, "decided": decided}


# ---------------------------------------------------------------------------------------------
# Intervals for the summaries (issue 16) and calibration measures. Mirrored in R/metrics.R to
# 1e-9 (tests/test_intervals_parity.py). References are in docs/report.md.
# ---------------------------------------------------------------------------------------------

METHOD_BALANCED_MOVER = ("mean of per-class recalls; MOVER-Wilson interval (Zou & Donner 2008) for a mean of "
                         "independent binomial proportions")
METHOD_MACRO_AUC_DELONG = ("macro mean of one-vs-rest AUCs over classes where defined (not Hand & Till); "
                           "DeLong covariance of the AUCs on the same images -> variance of their mean")
METHOD_AP_LOGIT = "step-wise sum over distinct thresholds (sklearn average_precision_score); logit interval (Boyd et al. 2013)"
METHOD_BRIER = "mean squared error of the probability; normal interval of a mean"
METHOD_ECE = "expected calibration error, 15 equal-width bins; percentile bootstrap (portable generator)"
METHOD_CAL_SLOPE = "logistic recalibration logit(P) = a + b logit(p): slope b, Wald interval"
METHOD_CAL_INTERCEPT = "calibration-in-the-large: logit(P) = a + logit(p) (offset): a, Wald interval"
METHOD_ECE_TOP = ("top-label expected calibration error (confidence of the decided class vs correct), 15 equal-width "
                  "bins; percentile bootstrap (portable generator)")
ECE_BINS = 15
ECE_BOOT_N = 500
ECE_BOOT_SEED = 20240617
LOGIT_CLIP = 1e-12  # probabilities are clipped to [1e-12, 1 - 1e-12] before logit (softmax saturates)
PM_MODULUS = 2147483647  # Park-Miller "minimal standard" generator: identical draws in R and Python
PM_MULTIPLIER = 16807


def _z():
    from scipy.stats import norm

    return float(norm.ppf(1 - (1 - CONF_LEVEL) / 2))


def wilson(x, n):
    """Wilson score interval (lower, upper) of x/n; n > 0."""
    z = _z()
    p = x / n
    center = (x + z * z / 2) / (n + z * z)
    half = z * np.sqrt(n) / (n + z * z) * np.sqrt(p * (1 - p) + z * z / (4 * n))
    return max(0.0, center - half), min(1.0, center + half)


def balanced_accuracy_interval(successes, totals, na_note):
    """Mean of independent binomial proportions x_c/n_c with the MOVER-Wilson interval:
    mean -/+ sqrt(sum (p_c - l_c)^2) / K and sqrt(sum (u_c - p_c)^2) / K, (l_c, u_c) Wilson.
    Any n_c = 0: None + note (the recall of an absent class is 0/0)."""
    if len(totals) == 0 or any(n == 0 for n in totals):
        return value(None, None, None, METHOD_BALANCED_MOVER, na_note)
    k = len(totals)
    p = np.array([x / n for x, n in zip(successes, totals)], dtype=np.float64)
    bounds = np.array([wilson(x, n) for x, n in zip(successes, totals)], dtype=np.float64)
    est = float(np.mean(p))
    lower = est - np.sqrt(np.sum((p - bounds[:, 0]) ** 2)) / k
    upper = est + np.sqrt(np.sum((bounds[:, 1] - p) ** 2)) / k
    return value(est, max(0.0, lower), min(1.0, upper), METHOD_BALANCED_MOVER)


def _delong_influence(is_positive, scores):
    """Per-image DeLong component of one AUC: (V10 - theta)/sqrt(m(m-1)) for positives,
    (V01 - theta)/sqrt(n(n-1)) for negatives, so sum over images of products = DeLong (co)variance."""
    y = np.asarray(is_positive, dtype=bool)
    m, n = int(y.sum()), int((~y).sum())
    theta, v10, v01 = delong_placements(y, scores)
    psi = np.empty(len(y), dtype=np.float64)
    psi[y] = (v10 - theta) / np.sqrt(m * (m - 1.0))
    psi[~y] = (v01 - theta) / np.sqrt(n * (n - 1.0))
    return theta, psi


def macro_auc_delong(labels, probabilities):
    """Macro one-vs-rest AUC over classes present and absent-not (both sides non-empty), with a
    normal interval from the variance of the mean of the K AUCs: (1/K^2) sum_i (sum_k psi_ik)^2,
    psi the per-image DeLong components. One AUC: exactly pROC's DeLong variance; AUCs sharing
    positives and negatives: DeLong, DeLong & Clarke-Pearson (1988) covariance."""
    labels = np.asarray(labels)
    p = np.asarray(probabilities, dtype=np.float64)
    defined = [k for k in range(p.shape[1]) if 0 < int((labels == k).sum()) < len(labels)]
    if not defined:
        return value(None, None, None, METHOD_MACRO_AUC_DELONG, "undefined for every class")
    est = float(np.mean([roc_auc(labels == k, p[:, k]) for k in defined]))
    if any(min(int((labels == k).sum()), int((labels != k).sum())) < 2 for k in defined):
        return value(est, None, None, METHOD_MACRO_AUC_DELONG, "a class has fewer than 2 cases; DeLong interval undefined")
    total = np.zeros(len(labels), dtype=np.float64)
    for k in defined:
        total = total + _delong_influence(labels == k, p[:, k])[1]
    sd = np.sqrt(float(np.sum(total * total))) / len(defined)
    z = _z()
    return value(est, min(1.0, max(0.0, est - z * sd)), min(1.0, max(0.0, est + z * sd)), METHOD_MACRO_AUC_DELONG)


def average_precision_logit(is_positive, scores):
    """AP with the logit interval of Boyd, Eng & Page (2013): logit(AP) +/- z / sqrt(n_pos AP (1 - AP))."""
    ap = average_precision(is_positive, scores)
    ap["method"] = METHOD_AP_LOGIT
    est = ap["estimate"]
    if est is None:
        return ap
    if est <= 0 or est >= 1:
        return dict(ap, note="AP is 0 or 1: logit interval undefined")
    n_pos = int(np.asarray(is_positive, dtype=bool).sum())
    eta = np.log(est / (1 - est))
    half = _z() / np.sqrt(n_pos * est * (1 - est))
    return value(est, 1 / (1 + np.exp(-(eta - half))), 1 / (1 + np.exp(-(eta + half))), METHOD_AP_LOGIT)


def brier(outcome, probability):
    """Mean of (p - y)^2 per image (rows of a matrix are summed: the multi-class Brier score),
    with a normal interval of a mean. No cases: None + note."""
    y = np.asarray(outcome, dtype=np.float64)
    p = np.asarray(probability, dtype=np.float64)
    if len(y) == 0:
        return value(None, None, None, METHOD_BRIER, "0/0: no cases")
    err = (p - y) ** 2
    per_image = err if err.ndim == 1 else err.sum(axis=1)
    est = float(np.mean(per_image))
    if len(per_image) < 2:
        return value(est, None, None, METHOD_BRIER, "one case: interval undefined")
    sd = np.sqrt(float(np.sum((per_image - est) ** 2)) / (len(per_image) - 1))
    half = _z() * sd / np.sqrt(len(per_image))
    return value(est, max(0.0, est - half), est + half, METHOD_BRIER)


def ece_estimate(outcome, probability, bins=ECE_BINS):
    """sum over equal-width bins ((l, u], 0 in the first) of |sum_i (y_i - p_i)| / N."""
    y = np.asarray(outcome, dtype=np.float64)
    p = np.asarray(probability, dtype=np.float64)
    idx = np.clip(np.ceil(p * bins), 1, bins).astype(np.int64) - 1
    gaps = np.bincount(idx, weights=y - p, minlength=bins)
    return float(np.sum(np.abs(gaps)) / len(y))


def _mulmod(a, b, m=PM_MODULUS):
    return (a * b) % m


def bootstrap_indices(n, boot_n=ECE_BOOT_N, seed=ECE_BOOT_SEED):
    """(boot_n, n) 0-based resampling indices from the Park-Miller generator x <- 16807 x mod
    (2^31 - 1), drawn in one sequence row by row; R's mc_bootstrap_indices draws the same."""
    jump = pow(PM_MULTIPLIER, n, PM_MODULUS)
    starts = np.empty(boot_n, dtype=np.int64)
    x = seed % PM_MODULUS or 1
    for b in range(boot_n):
        starts[b] = x
        x = _mulmod(x, jump)
    out = np.empty((boot_n, n), dtype=np.int64)
    state = starts
    for j in range(n):
        state = (state * PM_MULTIPLIER) % PM_MODULUS
        out[:, j] = np.floor(state / PM_MODULUS * n).astype(np.int64)
    return out


def ece(outcome, probability, indices=None):
    """ECE with a 95% percentile bootstrap interval over images (quantile type 7); `indices`
    (from bootstrap_indices) can be shared between classes. No cases: None + note."""
    y = np.asarray(outcome, dtype=np.float64)
    p = np.asarray(probability, dtype=np.float64)
    if len(y) == 0:
        return value(None, None, None, METHOD_ECE, "0/0: no cases")
    est = ece_estimate(y, p)
    if indices is None:
        indices = bootstrap_indices(len(y))
    draws = np.array([ece_estimate(y[i], p[i]) for i in indices])
    alpha = (1 - CONF_LEVEL) / 2
    return value(est, float(np.quantile(draws, alpha)), float(np.quantile(draws, 1 - alpha)), METHOD_ECE)


def logistic_fit(y, x, offset, slope, start=None):
    """Newton-Raphson for logit(P) = a + b x (slope) or a + x (offset), from 0 (as glm: P = 1/2) or
    from `start` (a bootstrap resample starts at the full sample's fit). Returns (coefficients,
    covariance) or None when it does not converge."""
    design = np.column_stack([np.ones(len(y)), x]) if slope else np.ones((len(y), 1))
    beta = np.zeros(design.shape[1]) if start is None else np.array(start, dtype=np.float64)
    for _ in range(100):
        eta = design @ beta + (0.0 if slope else offset)
        with np.errstate(over="ignore"):  # exp overflow -> mu = 0, as in R
            mu = 1 / (1 + np.exp(-eta))
        info = design.T @ (design * (mu * (1 - mu))[:, None])
        try:
            step = np.linalg.solve(info, design.T @ (y - mu))
        except np.linalg.LinAlgError:
            return None
        beta = beta + step
        if np.max(np.abs(step)) < 1e-10:
            eta = design @ beta + (0.0 if slope else offset)
            with np.errstate(over="ignore"):
                mu = 1 / (1 + np.exp(-eta))
            info = design.T @ (design * (mu * (1 - mu))[:, None])
            return beta, np.linalg.inv(info)
    return None


def calibration_slope_intercept(outcome, probability):
    """(slope, intercept) of logistic recalibration on logit(p), p clipped to [1e-12, 1 - 1e-12]
    (Cox 1958; Van Calster et al. 2019). One class absent, or perfect separation (slope
    infinite): None + note."""
    y = np.asarray(outcome, dtype=np.float64)
    p = np.clip(np.asarray(probability, dtype=np.float64), LOGIT_CLIP, 1 - LOGIT_CLIP)
    x = np.log(p / (1 - p))
    if y.sum() == 0 or y.sum() == len(y):
        note = "only one class present; calibration slope and intercept undefined"
        return value(None, None, None, METHOD_CAL_SLOPE, note), value(None, None, None, METHOD_CAL_INTERCEPT, note)
    z = _z()
    out = []
    for slope, method in ((True, METHOD_CAL_SLOPE), (False, METHOD_CAL_INTERCEPT)):
        separated = slope and (x[y == 1].min() > x[y == 0].max() or x[y == 1].max() < x[y == 0].min())
        fit = None if separated else logistic_fit(y, x, x, slope)
        if fit is None:
            out.append(value(None, None, None, method, "perfect separation or no convergence; undefined"))
            continue
        beta, cov = fit
        i = 1 if slope else 0
        se = np.sqrt(cov[i, i])
        out.append(value(beta[i], beta[i] - z * se, beta[i] + z * se, method))
    return out[0], out[1]


def calibration_metrics(outcome, probability, indices=None):
    """{brier_score, ece, calibration_slope, calibration_intercept} of one probability column."""
    slope, intercept = calibration_slope_intercept(outcome, probability)
    return {"brier_score": brier(outcome, probability), "ece": ece(outcome, probability, indices),
            "calibration_slope": slope, "calibration_intercept": intercept}
