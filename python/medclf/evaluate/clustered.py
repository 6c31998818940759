"""Intervals that count groups (patients, lesions, duplicate clusters), not images.

Images of one group are not independent: an interval that treats them so is too narrow. When a
scored split has a group with more than one image (the `clusters` of a report request: the group
of each image, from the run's splits.csv), the intervals are recomputed over groups; the estimates
do not change. Mirrored in R/clustered.R to 1e-9 (tests/parity/test_clustered_parity.py).

- ROC-AUC: the clustered DeLong variance of Obuchowski (1997, Biometrics 53:567): each group's
  summed placement values V10_i (its positives) and V01_i (its negatives), with I groups, M
  positives, N negatives and m_i, n_i per group,
      var = I/(I-1) [ sum (V10_i - m_i A)^2 / M^2 + sum (V01_i - n_i A)^2 / N^2
                      + 2 sum (V10_i - m_i A)(V01_i - n_i A) / (M N) ],
  and a normal interval, as DeLong's.
- Sensitivity, specificity, PPV, NPV, accuracy and F1 (through the Jaccard index): the ratio
  estimator p = sum x_i / sum n_i over the groups holding an eligible image, its cluster-robust
  variance v = I_e/(I_e-1) sum (x_i - p n_i)^2 / n^2, and the Clopper-Pearson interval on the
  effective sample size n_eff = min(n, p(1-p)/v), x_eff = p n_eff (Korn & Graubard 1998, Survey
  Methodology 24:193). When v = 0 (p is 0 or 1, or every group has the same proportion) the groups
  are counted: n_eff = I_e. Balanced accuracy: MOVER-Wilson (as unclustered) on the effective
  counts of its recalls.
- Cohen's kappa, average precision, macro AUC, Brier score, ECE and the calibration slope and
  intercept: percentile group bootstrap, BOOT_N resamples of whole groups drawn within class
  strata (a group's stratum: the most frequent class of its images, the smallest on ties) with the
  portable Park-Miller generator (metrics.bootstrap_indices; stratum s uses seed BOOT_SEED + s).
A metric whose eligible images are each in a group of their own keeps its unclustered interval
exactly (so does every metric when no group has two images).
"""

import numpy as np

from medclf.evaluate import metrics as M

BOOT_N = 500
BOOT_SEED = M.ECE_BOOT_SEED
METHOD_AUC = "clustered DeLong over groups (Obuchowski 1997)"
METHOD_PAIRED = "paired clustered DeLong over groups (Obuchowski 1997)"
METHOD_PROPORTION = ("Clopper-Pearson on the effective sample size of the cluster-robust ratio-estimator variance "
                     "over groups (Korn & Graubard 1998)")
METHOD_F1 = "2J/(1+J) of the Jaccard index J, interval as " + METHOD_PROPORTION
METHOD_BALANCED = "mean of per-class recalls; MOVER-Wilson on the recalls' effective counts over groups"
METHOD_BOOT = f"percentile group bootstrap: whole groups resampled within class strata ({BOOT_N} resamples, portable generator)"
PROPORTIONS = ("sensitivity", "specificity", "ppv", "npv", "accuracy")
BOOTSTRAPPED = ("average_precision", "cohen_kappa", "brier_score", "ece", "calibration_slope", "calibration_intercept")


def group_codes(clusters):
    """0..K-1 codes of the group names (sorted), or None without clusters."""
    if clusters is None:
        return None
    _, codes = np.unique(np.asarray([str(c) for c in clusters]), return_inverse=True)
    return codes.astype(np.int64)


def request_codes(request, n_predictions):
    """The group codes of a report or compare request's `clusters` (one group name per prediction,
    in the file's order), or None."""
    clusters = request.get("clusters")
    if clusters is None:
        return None
    if len(clusters) != n_predictions:
        from medclf.core.predictions import fail

        fail("clusters", f"{len(clusters)} group names for {n_predictions} predictions")
    return group_codes(clusters)


def is_clustered(codes):
    """True when some group holds more than one image."""
    return codes is not None and len(codes) > 0 and int(np.bincount(codes).max()) > 1


def summary(codes):
    return {"n_images": int(len(codes)), "n_groups": int(len(np.unique(codes))),
            "largest_group": int(np.bincount(codes).max()), "intervals": "over groups",
            "bootstrap": {"n": BOOT_N, "seed": BOOT_SEED, "method": METHOD_BOOT}}


# ------------------------------------------------------------------ analytic intervals

def _group_parts(y, scores, codes):
    """(A, V10_i - m_i A, V01_i - n_i A) per group: the AUC's placements summed over each group."""
    theta, v10, v01 = M.delong_placements(y, scores)
    groups = int(codes.max()) + 1
    a = np.bincount(codes[y], weights=v10, minlength=groups) - np.bincount(codes[y], minlength=groups) * theta
    b = np.bincount(codes[~y], weights=v01, minlength=groups) - np.bincount(codes[~y], minlength=groups) * theta
    return theta, a, b


def _covariance(y, codes, first, second):
    """Obuchowski's (co)variance of two AUCs on the same images from their _group_parts."""
    m, n = int(y.sum()), int((~y).sum())
    present = len(np.unique(codes))
    (_, a1, b1), (_, a2, b2) = first, second
    return present / (present - 1) * (float(np.sum(a1 * a2)) / (m * m) + float(np.sum(b1 * b2)) / (n * n)
                                      + float(np.sum(a1 * b2) + np.sum(a2 * b1)) / (m * n))


def auc(is_positive, scores, codes, unclustered):
    """`unclustered` (auc_delong's value) with the Obuchowski interval when a group holds two images."""
    y = np.asarray(is_positive, dtype=bool)
    if unclustered["lower"] is None or int(np.bincount(codes).max()) < 2:
        return unclustered
    parts = _group_parts(y, scores, codes)
    theta = parts[0]
    half = M._z() * np.sqrt(max(_covariance(y, codes, parts, parts), 0.0))
    note = unclustered.get("note")
    return M.value(unclustered["estimate"], min(1.0, max(0.0, theta - half)), min(1.0, max(0.0, theta + half)),
                   METHOD_AUC, note)


def paired_auc(is_positive, score_a, score_b, codes, unclustered):
    """compare.paired_delong's test with the difference's variance over groups:
    var(A_a - A_b) = S_aa + S_bb - 2 S_ab, each S Obuchowski's (co)variance; z and two-sided p."""
    from scipy.stats import norm

    y = np.asarray(is_positive, dtype=bool)
    if unclustered["difference"]["lower"] is None or not is_clustered(codes):
        return unclustered
    pa, pb = _group_parts(y, score_a, codes), _group_parts(y, score_b, codes)
    sig = float(np.sqrt(max(_covariance(y, codes, pa, pa) + _covariance(y, codes, pb, pb)
                            - 2 * _covariance(y, codes, pa, pb), 0.0)))
    d = pa[0] - pb[0]
    z = (0.0 if d == 0 else float(np.sign(d) * np.inf)) if sig == 0 else d / sig
    crit = M._z()
    return {"difference": M.value(unclustered["difference"]["estimate"], d - crit * sig, d + crit * sig, METHOD_PAIRED),
            "z": float(z) if np.isfinite(z) else None, "p_value": float(2 * norm.cdf(-abs(z)))}


def effective_counts(success, eligible, codes):
    """(x, n, x_eff, n_eff, groups with an eligible image) of the proportion success/eligible;
    n_eff is None when no group holds two eligible images (the image-level interval stands)."""
    success = np.asarray(success, dtype=bool)
    eligible = np.asarray(eligible, dtype=bool)
    n = int(eligible.sum())
    x = int((success & eligible).sum())
    groups = int(codes.max()) + 1 if len(codes) else 0
    per_x = np.bincount(codes[eligible], weights=success[eligible].astype(np.float64), minlength=groups)
    per_n = np.bincount(codes[eligible], minlength=groups).astype(np.float64)
    held = per_n > 0
    present = int(held.sum())
    if n == 0 or per_n.max() <= 1:
        return x, n, None, None, present
    p = x / n
    variance = 0.0 if present < 2 else present / (present - 1) * float(np.sum((per_x[held] - p * per_n[held]) ** 2)) / n ** 2
    n_eff = min(float(n), p * (1 - p) / variance) if variance > 0 else float(present)
    return x, n, p * n_eff, n_eff, present


def clopper_pearson(x, n, x_eff, n_eff):
    """(lower, upper): Clopper-Pearson's beta quantiles at the effective counts; 0 (1) when x is 0 (n)."""
    from scipy.stats import beta

    alpha = (1 - M.CONF_LEVEL) / 2
    lower = 0.0 if x == 0 else float(beta.ppf(alpha, x_eff, n_eff - x_eff + 1))
    upper = 1.0 if x == n else float(beta.ppf(1 - alpha, x_eff + 1, n_eff - x_eff))
    return lower, upper


def proportion(success, eligible, codes, unclustered, method=METHOD_PROPORTION):
    """`unclustered` (a Clopper-Pearson value) with the Korn-Graubard interval over groups when an
    eligible group holds two images."""
    x, n, x_eff, n_eff, present = effective_counts(success, eligible, codes)
    if n_eff is None:
        return unclustered
    out = M.value(x / n, *clopper_pearson(x, n, x_eff, n_eff), method, unclustered.get("note"))
    out.update(effective_n=n_eff, groups=present)
    return out


def f1(is_positive, called, codes, unclustered):
    """F1 = 2J/(1+J) with the interval of the Jaccard index J = tp / (tp + fp + fn) over groups."""
    x, n, x_eff, n_eff, present = effective_counts(is_positive & called, is_positive | called, codes)
    if n_eff is None:
        return unclustered
    lower, upper = clopper_pearson(x, n, x_eff, n_eff)
    out = M.value(unclustered["estimate"], 2 * lower / (1 + lower), 2 * upper / (1 + upper), METHOD_F1,
                  unclustered.get("note"))
    out.update(effective_n=n_eff, groups=present)
    return out


def balanced_accuracy(successes_eligibles, codes, unclustered):
    """MOVER-Wilson on the effective counts of each recall ((success, eligible) per class)."""
    counts = [effective_counts(s, e, codes) for s, e in successes_eligibles]
    if unclustered["estimate"] is None or all(c[3] is None for c in counts):
        return unclustered
    p = np.array([c[0] / c[1] for c in counts])
    bounds = np.array([M.wilson(c[0], c[1]) if c[3] is None else M.wilson(c[2], c[3]) for c in counts])
    k = len(counts)
    est = float(np.mean(p))
    lower = est - np.sqrt(np.sum((p - bounds[:, 0]) ** 2)) / k
    upper = est + np.sqrt(np.sum((bounds[:, 1] - p) ** 2)) / k
    return M.value(est, max(0.0, lower), min(1.0, upper), METHOD_BALANCED, unclustered.get("note"))


# ------------------------------------------------------------------ the group bootstrap
# A resample is a row of counts: how many times each image is drawn (its group's count). Every
# bootstrap statistic is computed for all resamples at once, each image weighted by its count;
# this equals computing it on the resample's list of images (the sums hold the same terms).

def resample_counts(codes, strata, boot_n=BOOT_N, seed=BOOT_SEED):
    """(boot_n, n) counts of each image in each resample: whole groups drawn with replacement
    within class strata (see the module docstring), strata in sorted order."""
    strata = np.asarray(strata, dtype=np.int64)
    groups = int(codes.max()) + 1
    group_stratum = np.empty(groups, dtype=np.int64)
    for g in range(groups):
        values, counts = np.unique(strata[codes == g], return_counts=True)
        group_stratum[g] = values[np.argmax(counts)]  # most frequent; the smallest on ties
    group_counts = np.zeros((boot_n, groups))
    for s, stratum in enumerate(np.unique(group_stratum)):
        in_stratum = np.flatnonzero(group_stratum == stratum)
        drawn = in_stratum[M.bootstrap_indices(len(in_stratum), boot_n, seed + s)]
        np.add.at(group_counts, (np.repeat(np.arange(boot_n), len(in_stratum)), drawn.ravel()), 1.0)
    return group_counts[:, codes]


def percentile(unclustered, draws):
    """`unclustered` with the 2.5 and 97.5 % percentiles (type 7) of the finite draws (NaN: the
    statistic is undefined in that resample)."""
    if unclustered["estimate"] is None:
        return unclustered
    draws = np.asarray(draws, dtype=np.float64)
    defined = draws[np.isfinite(draws)]
    if len(defined) == 0:
        return M.value(unclustered["estimate"], None, None, METHOD_BOOT, "undefined in every resample")
    alpha = (1 - M.CONF_LEVEL) / 2
    return M.value(unclustered["estimate"], float(np.quantile(defined, alpha)), float(np.quantile(defined, 1 - alpha)),
                   METHOD_BOOT)


def _tie_runs(scores, descending):
    """(order, start of each run of equal scores in that order)."""
    s = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-s if descending else s, kind="stable")
    ordered = s[order]
    return order, np.flatnonzero(np.append(True, ordered[1:] != ordered[:-1]))


def weighted_average_precision(y, scores, counts):
    """metrics.average_precision's estimate per resample (NaN without a positive)."""
    order, starts = _tie_runs(scores, descending=True)
    tp = np.cumsum(np.add.reduceat(counts[:, order] * y[order], starts, axis=1), axis=1)
    fp = np.cumsum(np.add.reduceat(counts[:, order] * (1 - y[order]), starts, axis=1), axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = tp / tp[:, -1:]
        gain = np.diff(recall, axis=1, prepend=0.0)
        terms = np.where(gain > 0, gain * tp / (tp + fp), 0.0)  # a score absent from a resample adds nothing
    return np.where(tp[:, -1] > 0, terms.sum(axis=1), np.nan)


def weighted_auc(y, scores, counts):
    """metrics.roc_auc per resample (Mann-Whitney, ties one half; NaN with one class absent)."""
    order, starts = _tie_runs(scores, descending=False)
    positives = np.add.reduceat(counts[:, order] * y[order], starts, axis=1)
    negatives = np.add.reduceat(counts[:, order] * (1 - y[order]), starts, axis=1)
    below = np.cumsum(negatives, axis=1) - negatives
    n_pos, n_neg = positives.sum(axis=1), negatives.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        auc = (positives * (below + 0.5 * negatives)).sum(axis=1) / (n_pos * n_neg)
    return np.where((n_pos > 0) & (n_neg > 0), auc, np.nan)


def weighted_ece(y, p, counts, bins=M.ECE_BINS):
    """metrics.ece_estimate per resample."""
    gaps = np.zeros((len(y), bins))
    gaps[np.arange(len(y)), np.clip(np.ceil(p * bins), 1, bins).astype(np.int64) - 1] = y - p
    return np.abs(counts @ gaps).sum(axis=1) / counts.sum(axis=1)


def weighted_kappa(labels, decided, n_classes, counts):
    """Cohen's kappa estimate (metrics.kappa) per resample; NaN where chance agreement is 1."""
    cells = np.zeros((len(labels), n_classes * n_classes))
    cells[np.arange(len(labels)), np.asarray(labels) * n_classes + np.asarray(decided)] = 1.0
    p = (counts @ cells).reshape(-1, n_classes, n_classes) / counts.sum(axis=1)[:, None, None]
    po = np.trace(p, axis1=1, axis2=2)
    pe = (p.sum(axis=2) * p.sum(axis=1)).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(pe == 1, np.nan, (po - pe) / (1 - pe))


def _logits(probability):
    p = np.clip(np.asarray(probability, dtype=np.float64), M.LOGIT_CLIP, 1 - M.LOGIT_CLIP)
    return np.log(p / (1 - p))


def weighted_logistic_fits(y, x, counts, slope, start):
    """metrics.logistic_fit for every resample at once (logit P = a + b x, or a + x), Newton from
    `start` (the full sample's coefficients; zeros when None), each resample until its step is
    under 1e-10; returns (resamples, 2) coefficients (a, b), NaN where it does not converge."""
    rows = counts.shape[0]
    beta = np.zeros((rows, 2)) if start is None else np.tile(np.append(start, 0.0)[:2], (rows, 1))
    out = np.full((rows, 2), np.nan)
    active = np.arange(rows)
    for _ in range(100):
        w, b = counts[active], beta[active]
        eta = b[:, :1] + (b[:, 1:] * x if slope else x)
        with np.errstate(over="ignore"):  # exp overflow -> mu = 0, as in R
            mu = 1 / (1 + np.exp(-eta))
        v, r = w * mu * (1 - mu), w * (y - mu)
        i00, g0 = v.sum(axis=1), r.sum(axis=1)
        if slope:
            i01, i11, g1 = v @ x, v @ (x * x), r @ x
            det = i00 * i11 - i01 * i01
            with np.errstate(divide="ignore", invalid="ignore"):
                step = np.column_stack([(i11 * g0 - i01 * g1) / det, (i00 * g1 - i01 * g0) / det])
        else:
            with np.errstate(divide="ignore", invalid="ignore"):
                step = np.column_stack([g0 / i00, np.zeros(len(active))])
        singular = ~np.isfinite(step).all(axis=1)
        beta[active] = b + np.where(singular[:, None], 0.0, step)
        done = ~singular & (np.abs(step).max(axis=1) < 1e-10)
        out[active[done]] = beta[active[done]]
        active = active[~done & ~singular]
        if len(active) == 0:
            break
    return out


def calibration_starts(y, s):
    """The full sample's (slope fit, intercept fit) coefficients, where each resample's Newton
    iterations start (the same optimum as from 0, in fewer steps), or None for a fit that fails."""
    x = _logits(s)
    return tuple(None if fit is None else fit[0] for fit in (M.logistic_fit(y, x, x, True), M.logistic_fit(y, x, x, False)))


def weighted_calibration(y, s, counts, starts):
    """(slopes, intercepts) per resample as metrics.calibration_slope_intercept estimates them
    (NaN where it gives None: one class absent, perfect separation for the slope, no convergence)."""
    x = _logits(s)
    drawn = counts > 0
    positives = counts @ y
    defined = (positives > 0) & (positives < counts.sum(axis=1))
    pos, neg = drawn & (y == 1), drawn & (y == 0)
    separated = ((np.where(pos, x, np.inf).min(axis=1) > np.where(neg, x, -np.inf).max(axis=1))
                 | (np.where(pos, x, -np.inf).max(axis=1) < np.where(neg, x, np.inf).min(axis=1)))
    slopes, intercepts = np.full(len(counts), np.nan), np.full(len(counts), np.nan)
    fit_slope, fit_intercept = defined & ~separated, defined
    slopes[fit_slope] = weighted_logistic_fits(y, x, counts[fit_slope], True, starts[0])[:, 1]
    intercepts[fit_intercept] = weighted_logistic_fits(y, x, counts[fit_intercept], False, starts[1])[:, 0]
    return slopes, intercepts


def _column_draws(y, s, counts):
    """Bootstrap statistics of one probability column (binary, or one class against the rest), per
    resample."""
    slopes, intercepts = weighted_calibration(y, s, counts, calibration_starts(y, s))
    return {"average_precision": weighted_average_precision(y, s, counts),
            "brier_score": counts @ ((s - y) ** 2) / counts.sum(axis=1), "ece": weighted_ece(y, s, counts),
            "calibration_slope": slopes, "calibration_intercept": intercepts}


def _count_intervals(metrics, y, called, codes):
    out = dict(metrics)
    eligible = {"sensitivity": (called, y), "specificity": (~called, ~y), "ppv": (y, called),
                "npv": (~y, ~called), "accuracy": (called == y, np.ones(len(y), dtype=bool))}
    for name, (success, among) in eligible.items():
        if name in metrics:
            out[name] = proportion(success, among, codes, metrics[name])
    out["f1"] = f1(y, called, codes, metrics["f1"])
    return out


def per_class_metrics(per_class, labels, decided, probabilities, codes, counts):
    """per_class_metrics' entries (one class against the rest) with intervals over groups;
    `counts` the resamples (resample_counts, drawn within the label strata)."""
    labels, decided = np.asarray(labels), np.asarray(decided)
    p = np.asarray(probabilities, dtype=np.float64)
    out = {}
    for k, (name, entry) in enumerate(per_class.items()):
        y = labels == k
        m = _count_intervals(entry["metrics"], y, decided == k, codes)
        m["roc_auc"] = auc(y, p[:, k], codes, entry["metrics"]["roc_auc"])
        draws = _column_draws(y.astype(np.float64), p[:, k], counts)
        for stat in BOOTSTRAPPED:
            if stat in m:
                m[stat] = percentile(entry["metrics"][stat], draws[stat])
        out[name] = dict(entry, metrics=m)
    return out


def binary_metrics(metrics, is_positive, scores, threshold, codes, counts):
    """metrics.binary_metrics' metrics with their intervals over groups (a new dict); `counts` the
    resamples (resample_counts, drawn within the truth strata)."""
    y = np.asarray(is_positive, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    called = s >= threshold
    out = _count_intervals(metrics, y, called, codes)
    out["balanced_accuracy"] = balanced_accuracy([(called, y), (~called, ~y)], codes, metrics["balanced_accuracy"])
    out["roc_auc"] = auc(y, s, codes, metrics["roc_auc"])
    draws = _column_draws(y.astype(np.float64), s, counts)
    draws["cohen_kappa"] = weighted_kappa(y.astype(np.int64), called.astype(np.int64), 2, counts)
    for name in BOOTSTRAPPED:
        out[name] = percentile(metrics[name], draws[name])
    return out


def multiclass_metrics(result, labels, probabilities, codes, counts):
    """metrics.multiclass_metrics' result with every interval over groups: per class and overall
    (accuracy, balanced accuracy, kappa, macro AUC, Brier, top-label ECE); `counts` the resamples
    (resample_counts, drawn within the label strata)."""
    labels = np.asarray(labels)
    p = np.asarray(probabilities, dtype=np.float64)
    decided = np.asarray(result["decided"])
    k = p.shape[1]
    onehot = (labels[:, None] == np.arange(k)[None, :]).astype(np.float64)
    aucs = np.column_stack([weighted_auc((labels == j).astype(np.float64), p[:, j], counts) for j in range(k)])
    n_defined = np.isfinite(aucs).sum(axis=1)
    with np.errstate(invalid="ignore"):
        macro_auc = np.where(n_defined > 0, np.nansum(aucs, axis=1) / n_defined, np.nan)
    draws = {"cohen_kappa": weighted_kappa(labels, decided, k, counts), "macro_auc": macro_auc,
             "brier_score": counts @ np.sum((p - onehot) ** 2, axis=1) / counts.sum(axis=1),
             "ece": weighted_ece((decided == labels).astype(np.float64), p.max(axis=1), counts)}
    metrics = dict(result["metrics"])
    metrics["accuracy"] = proportion(decided == labels, np.ones(len(labels), dtype=bool), codes, metrics["accuracy"])
    present = [j for j in range(k) if (labels == j).any()]
    metrics["balanced_accuracy"] = balanced_accuracy([(decided == j, labels == j) for j in present], codes,
                                                     metrics["balanced_accuracy"])
    for stat in ("cohen_kappa", "macro_auc", "brier_score", "ece"):
        metrics[stat] = percentile(metrics[stat], draws[stat])
    per_class = per_class_metrics(result["per_class"], labels, decided, p, codes, counts)
    return dict(result, metrics=metrics, per_class=per_class)
