"""Decision curves (Vickers & Elkin 2006, Med Decis Making 26:565): is acting on the model's calls
worth more than treating everyone or no one, at the threshold probability a clinician would use?

At threshold probability pt a case is called positive when its probability is >= pt (the rule of
the dcurves packages), and

    net benefit(pt) = sensitivity * prevalence - (1 - specificity) * (1 - prevalence) * pt / (1 - pt),

which with the test split's own prevalence is TP/n - FP/n * pt / (1 - pt). Treat all: prevalence -
(1 - prevalence) * pt / (1 - pt); treat none: 0. A given prevalence (--prevalence, the population's
where the test split is enriched or case-control) replaces the split's; sensitivity and specificity
still come from the split (dcurves' `prevalence=`).

The 95% band of the model's curve: percentile bootstrap, each threshold on its own, over the
resamples of medclf.evaluate.clustered (whole groups within class strata where the split has
groups; else images within class strata, as pROC's stratified bootstrap; BOOT_N resamples, the
portable generator). Mirrored in R/decision_curve.R to 1e-9.
"""

import numpy as np

from medclf.evaluate import clustered
from medclf.evaluate import metrics as M

THRESHOLDS = tuple(k / 100 for k in range(100))  # dcurves' default grid: 0, 0.01, ..., 0.99
METHOD = ("net benefit (Vickers & Elkin 2006) at threshold probabilities 0 to 0.99, positive when probability >= "
          "threshold; 95% band: percentile bootstrap")
SUMMARY_THRESHOLDS = (0.05, 0.1, 0.2, 0.3, 0.5)  # the rows of the report's table
ROUNDING = 1e-12  # a net-benefit difference below this is floating-point rounding, not benefit


def net_benefit(tp, fp, positives, negatives, threshold, prevalence=None):
    """Net benefit from counts (arrays broadcast); `prevalence` None: the counts' own."""
    n = positives + negatives
    if prevalence is None:
        prevalence = positives / n
    odds = threshold / (1 - threshold)
    return tp / positives * prevalence - fp / negatives * (1 - prevalence) * odds


def _counts(is_positive, scores, weights):
    """(TP, FP) at every threshold of THRESHOLDS, per row of `weights` (resamples x images)."""
    called = (scores[:, None] >= np.asarray(THRESHOLDS)[None, :]).astype(np.float64)
    return weights @ (called * is_positive[:, None]), weights @ (called * (1 - is_positive)[:, None])


def _useful_ranges(model, treat_all):
    """[[first, last], ...] runs of thresholds where the model's net benefit exceeds both defaults."""
    better = np.asarray(model) > np.maximum(np.asarray(treat_all), 0.0) + ROUNDING
    runs, start = [], None
    for i, flag in enumerate(list(better) + [False]):
        if flag and start is None:
            start = i
        elif not flag and start is not None:
            runs.append([THRESHOLDS[start], THRESHOLDS[i - 1]])
            start = None
    return runs


def resamples(is_positive, codes=None):
    """The band's resamples (clustered.resample_counts): whole groups within class strata where a
    group has two images, else images within class strata."""
    strata = np.asarray(is_positive).astype(np.int64)
    return clustered.resample_counts(codes if clustered.is_clustered(codes) else np.arange(len(strata)), strata)


def decision_curve(is_positive, scores, codes=None, prevalence=None, counts=None):
    """The decision-curve record of a binary report (None when a class is absent: net benefit
    needs both); `codes` the group of each image (clustered.group_codes) or None; `counts` the
    resamples when the caller has drawn them already (resamples(is_positive, codes))."""
    y = np.asarray(is_positive, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    n_pos, n_neg = float(y.sum()), float(len(y) - y.sum())
    if n_pos == 0 or n_neg == 0:
        return None
    grouped = clustered.is_clustered(codes)
    counts = resamples(is_positive, codes) if counts is None else counts
    thresholds = np.asarray(THRESHOLDS)
    tp, fp = _counts(y, s, np.ones((1, len(y))))
    model = net_benefit(tp[0], fp[0], n_pos, n_neg, thresholds, prevalence)
    boot_tp, boot_fp = _counts(y, s, counts)
    draws = net_benefit(boot_tp, boot_fp, (counts @ y)[:, None], (counts @ (1 - y))[:, None], thresholds[None, :],
                        prevalence)
    alpha = (1 - M.CONF_LEVEL) / 2
    pi = n_pos / (n_pos + n_neg) if prevalence is None else float(prevalence)
    treat_all = pi - (1 - pi) * thresholds / (1 - thresholds)
    return {"method": METHOD, "thresholds": list(THRESHOLDS),
            "prevalence": {"value": pi, "source": "test split" if prevalence is None else "given"},
            "model": {"estimate": model.tolist(), "lower": np.quantile(draws, alpha, axis=0).tolist(),
                      "upper": np.quantile(draws, 1 - alpha, axis=0).tolist()},
            "treat_all": treat_all.tolist(), "treat_none": 0.0, "useful_ranges": _useful_ranges(model, treat_all),
            "bootstrap": {"n": clustered.BOOT_N, "seed": clustered.BOOT_SEED,
                          "over": "groups within class strata" if grouped else "images within class strata"}}


def _at(curve, threshold):
    return curve["thresholds"].index(threshold)


def markdown_lines(result):
    """The report's decision-curve section (empty when the result has no curve)."""
    curve = result.get("decision_curve")
    if not curve:
        return []
    from medclf.evaluate.formatting import number

    def per_100(value):
        return f"{100 * value:.1f}"

    prevalence = curve["prevalence"]
    ranges = ", ".join(f"{a:.2f} to {b:.2f}" for a, b in curve["useful_ranges"]) or "none"
    lines = ["", "## Decision curve (clinical utility)", "",
             f"Net benefit per 100 patients = true positives found less false positives weighted by the odds of the "
             f"threshold probability pt, at the {prevalence['source']} prevalence {number(prevalence['value'])} "
             f"(Vickers & Elkin 2006). The model is worth acting on where its net benefit beats both treating "
             f"everyone and treating no one: thresholds {ranges}. Model band: {curve['bootstrap']['n']} resamples "
             f"of {curve['bootstrap']['over']}.", "",
             "| threshold pt | model | 95% band | treat all | treat none |", "|---|---|---|---|---|"]
    model = curve["model"]
    for pt in SUMMARY_THRESHOLDS:
        i = _at(curve, pt)
        lines.append(f"| {pt:.2f} | {per_100(model['estimate'][i])} | {per_100(model['lower'][i])} to "
                     f"{per_100(model['upper'][i])} | {per_100(curve['treat_all'][i])} | 0 |")
    return lines


def plot(plt, curve, save):
    """decision_curve_<split>.png: the model's net benefit with its band, treat all and treat none."""
    fig, ax = plt.subplots(figsize=(6, 4))
    pt, model = np.asarray(curve["thresholds"]), curve["model"]
    ax.fill_between(pt, model["lower"], model["upper"], alpha=0.25, label="model, 95% bootstrap band")
    ax.plot(pt, model["estimate"], label="model")
    ax.plot(pt, curve["treat_all"], ls="--", color="grey", label="treat all")
    ax.axhline(0, ls=":", color="black", label="treat none")
    prevalence = curve["prevalence"]["value"]
    ax.set(xlabel="threshold probability", ylabel="net benefit", xlim=(0, 1),
           ylim=(min(-0.05, float(np.min(model["lower"]))), max(prevalence, float(np.max(model["upper"]))) * 1.1 + 0.01),
           title=f"Decision curve (prevalence {prevalence:.3g}, {curve['prevalence']['source']})")
    ax.legend(fontsize=7, loc="upper right")
    save(fig, "decision_curve")
