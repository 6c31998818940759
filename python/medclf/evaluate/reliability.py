"""Report sections computed in Python from the predictions files themselves (no R side: they
read fields the engines do not see): calibration per class as a table, the threshold's own
variability, conformal prediction sets, and uncertainty (risk-coverage). `report_run` adds
`reliability_sections(...)` to results_<split>[_<tag>].json under "reliability"."""

import numpy as np

from medclf.core.errors import MedclfError
from medclf.evaluate import metrics as M
from medclf.evaluate import uncertainty as U
from medclf.evaluate.formatting import estimate_with_interval, number

CALIBRATION_COLUMNS = ("brier_score", "ece", "calibration_slope", "calibration_intercept")
THRESHOLD_BOOT_N = 500
THRESHOLD_BOOT_SEED = 20240618


def threshold_variability(val_view, test_view, rule, boot_n=THRESHOLD_BOOT_N, seed=THRESHOLD_BOOT_SEED):
    """Bootstrap over the validation images (portable Park-Miller draws, M.bootstrap_indices):
    re-choose the threshold by `rule` on each resample and score the test split at it. Percentile
    intervals of the threshold and of the test sensitivity and specificity; resamples where the
    rule cannot choose (one class, target unreachable) are counted and left out."""
    yv, sv = val_view["is_positive"], val_view["score"]
    yt, st = test_view["is_positive"], test_view["score"]
    draws, skipped = [], 0
    for idx in M.bootstrap_indices(len(yv), boot_n, seed):
        try:
            t = M.choose_threshold(yv[idx], sv[idx], rule)["threshold"]
        except MedclfError:
            skipped += 1
            continue
        called = st >= t
        sens = float(called[yt].mean()) if yt.any() else np.nan
        spec = float((~called[~yt]).mean()) if (~yt).any() else np.nan
        draws.append((t, sens, spec))
    out = {"rule": rule, "n_resamples": boot_n, "seed": seed, "n_undecided": skipped,
           "method": "percentile bootstrap over validation images (Park-Miller draws); test scored at each threshold"}
    if not draws:
        return dict(out, note="the rule chose no threshold on any resample")
    arr = np.asarray(draws, dtype=np.float64)
    for j, name in enumerate(("threshold", "test_sensitivity", "test_specificity")):
        col = arr[:, j][~np.isnan(arr[:, j])]
        out[name] = {"median": float(np.median(col)), "lower": float(np.quantile(col, 0.025)),
                     "upper": float(np.quantile(col, 0.975))} if len(col) else None
    return out


def macro_auc_stratified_bootstrap(labels, probabilities, boot_n, seed):
    """Percentile interval of the macro one-vs-rest AUC, images resampled within each true class
    (class counts fixed, so every class keeps its AUC defined); Park-Miller draws per class."""
    labels = np.asarray(labels)
    p = np.asarray(probabilities, dtype=np.float64)
    groups = [np.flatnonzero(labels == k) for k in np.unique(labels)]
    draws = [M.bootstrap_indices(len(g), boot_n, seed + j) for j, g in enumerate(groups)]
    values = np.array([M.roc_auc_ovr_macro(labels[idx], p[idx]) for idx in
                       (np.concatenate([g[d[b]] for g, d in zip(groups, draws)]) for b in range(boot_n))])
    values = values[~np.isnan(values)]
    out = {"n_resamples": boot_n, "seed": seed,
           "method": "percentile bootstrap, images resampled within each true class (stratified)"}
    if not len(values):
        return dict(out, lower=None, upper=None)
    return dict(out, lower=float(np.quantile(values, 0.025)), upper=float(np.quantile(values, 0.975)))


def conformal_section(obj, data):
    """Coverage and set sizes of a predictions file that carries `prediction_sets`."""
    from medclf.evaluate.conformal import coverage_summary

    sets = obj.get("prediction_sets")
    if sets is None:
        return None
    classes = data["classes"]
    member = np.array([[c in s for c in classes] for s in sets], dtype=bool)
    return dict(coverage_summary(member, data["labels"], classes), settings=obj.get("conformal"))


def uncertainty_section(obj, data):
    """Risk-coverage by each per-image measure the file carries (entropy, mutual information)."""
    block = obj.get("uncertainty")
    if not isinstance(block, dict):
        return None
    correct = data["probabilities"].argmax(axis=1) == data["labels"]
    out = {"method": block.get("method"), "samples": block.get("samples"), "members": block.get("members"),
           "by": {}}
    for measure in ("predictive_entropy", "mutual_information"):
        values = block.get(measure)
        if values is None or len(values) != len(correct):
            continue
        rc = U.risk_coverage(correct, values)
        out["by"][measure] = {"aurc": rc["aurc"], "curve": {"coverage": rc["coverage"], "risk": rc["risk"]},
                              "rejection": U.rejection_table(data["labels"], data["probabilities"], values)}
    return out if out["by"] else None


def reliability_sections(obj, data, threshold=None, boot_n=0, seed=1):
    stratified = (macro_auc_stratified_bootstrap(data["labels"], data["probabilities"], boot_n, seed)
                  if boot_n and len(data["classes"]) > 2 else None)
    return {"threshold_variability": threshold, "macro_auc_stratified_bootstrap": stratified,
            "conformal": conformal_section(obj, data),
            "uncertainty": uncertainty_section(obj, data),
            "calibration_applied": obj.get("calibration") if isinstance(obj, dict) else None}


def _calibration_lines(result):
    per_class = result.get("per_class") or {}
    if not per_class or not all(c in next(iter(per_class.values()))["metrics"] for c in CALIBRATION_COLUMNS):
        return []
    lines = ["", "## Calibration (one-vs-rest, 95% intervals)", "",
             "ECE: 15 equal-width bins, bootstrap interval; Brier: mean squared error; slope and intercept of "
             "logistic recalibration on logit(p) (perfect: slope 1, intercept 0). See docs/report.md.", "",
             "| class | n | " + " | ".join(CALIBRATION_COLUMNS) + " |", "|---" * (len(CALIBRATION_COLUMNS) + 2) + "|"]
    for name, pc in per_class.items():
        lines.append(f"| {name} | {pc['n']} | " + " | ".join(estimate_with_interval(pc["metrics"][c])
                                                              for c in CALIBRATION_COLUMNS) + " |")
    return lines


def _threshold_lines(tv):
    if not tv or tv.get("threshold") is None:
        return []
    rows = [("threshold", tv["threshold"]), ("test sensitivity", tv["test_sensitivity"]),
            ("test specificity", tv["test_specificity"])]
    lines = ["", f"## Threshold variability ({tv['rule']} re-chosen on {tv['n_resamples']} validation resamples)", "",
             "| | median | 95% interval |", "|---|---|---|"]
    lines += [f"| {name} | {number(v['median'])} | {number(v['lower'])} to {number(v['upper'])} |" for name, v in rows if v]
    return lines + ["", f"{tv['method']}; {tv['n_undecided']} resamples chose no threshold."]


def _conformal_lines(conf):
    if not conf:
        return []
    s = conf.get("settings") or {}
    lines = ["", f"## Conformal prediction sets ({s.get('method')}, alpha {s.get('alpha')}"
             f"{', Mondrian by class' if s.get('mondrian') else ''})", "",
             f"Coverage {estimate_with_interval(conf['coverage'])} (target >= {1 - s['alpha']:.3g}); mean set size "
             f"{number(conf['mean_set_size'], 2)}; set sizes {conf['set_size_counts']}; empty sets "
             f"{s.get('empty_sets')}{' (filled with the top class)' if s.get('empty_sets_filled_with_top_class') else ''}.",
             "", "| class | n | coverage | mean set size |", "|---|---|---|---|"]
    for name, pc in conf["per_class"].items():
        lines.append(f"| {name} | {pc['n']} | {estimate_with_interval(pc['coverage'])} | {number(pc['mean_set_size'], 2)} |")
    return lines


def _uncertainty_lines(unc):
    if not unc:
        return []
    lines = ["", f"## Uncertainty and selective prediction ({unc['method']}"
             f"{', ' + str(unc['samples']) + ' samples' if unc.get('samples') else ''})", ""]
    for measure, block in unc["by"].items():
        lines += [f"Rejecting the most uncertain images by {measure}: AURC (area under the risk-coverage curve, "
                  f"lower is better) {number(block['aurc'], 4)}.", "", "| rejected | kept | accuracy | AUC |",
                  "|---|---|---|---|"]
        lines += [f"| {r['rejected']:.0%} | {r['n_kept']} | {number(r['accuracy'])} | {number(r['auc'])} |"
                  for r in block["rejection"]]
        lines.append("")
    return lines


def markdown_lines(result):
    rel = result.get("reliability") or {}
    lines = _calibration_lines(result) + _threshold_lines(rel.get("threshold_variability"))
    strat = rel.get("macro_auc_stratified_bootstrap")
    if strat and strat.get("lower") is not None:
        lines += ["", f"Macro AUC, stratified bootstrap ({strat['n_resamples']} resamples, seed {strat['seed']}, "
                      f"{strat['method']}): {number(strat['lower'])} to {number(strat['upper'])}."]
    lines += _conformal_lines(rel.get("conformal")) + _uncertainty_lines(rel.get("uncertainty"))
    applied = rel.get("calibration_applied")
    if applied:
        lines += ["", f"Probabilities recalibrated by {applied['method']} fitted on {applied['fitted_on']} "
                      f"(n = {applied['n_fitted']}); parameters in calibration.json."]
    return lines
