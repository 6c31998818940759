"""Subgroup analysis (`medclf report --by COL[,COL...]`; TRIPOD+AI item 23a, STARD 2015 item 24):
does the model work as well for every sex, age band, body site or scanner?

The columns come from the run's splits.csv (partition copies every metadata column). A numeric
column is cut into bands (--bands age=0,30,50,70: below 0, 0-30, 30-50, 50-70, 70 and over); a
numeric column with more than MAX_LEVELS values and no bands is refused, naming the fix. Missing
values form their own subgroup ("missing"). Each subgroup is a report of its own images, by the
same engine (R or Python, which agree to 1e-9) at the run's threshold: n images and groups,
prevalence, ROC AUC, sensitivity, specificity and calibration-in-the-large (the calibration
intercept) with their intervals (over groups where a group has two images). A metric the subgroup
cannot estimate (no positives, no negatives, fewer than two of a class for an interval) says so.

Heterogeneity of the AUC across a column's subgroups: Cochran's Q = sum w_i (A_i - A_w)^2 with
w_i = 1 / SE_i^2 and A_w the weighted mean, against chi-square with k - 1 degrees of freedom.
SE_i is the subgroup interval's half-width / z (DeLong, or Obuchowski over groups), read on the
side not truncated at 0 or 1; a subgroup whose interval is undefined or truncated on both sides
takes no part (and is named). Mirrored in R (R/subgroups.R, mc_subgroup_heterogeneity) to 1e-9.
"""

import math
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from medclf.core.errors import MedclfError
from medclf.core.fileio import write_json
from medclf.core.predictions import subset_record
from medclf.evaluate import metrics as M

MAX_LEVELS = 8
MISSING = "missing"
METRICS = ("roc_auc", "sensitivity", "specificity", "calibration_intercept")
METHOD_Q = ("Cochran's Q on the subgroups' AUCs with inverse-variance weights (SE = interval half-width / z: DeLong, "
            "or Obuchowski over groups); chi-square with k - 1 degrees of freedom")


def parse_bands(specs):
    """['age=0,30,50,70', ...] -> {'age': [0.0, 30.0, 50.0, 70.0]} (edges strictly increasing)."""
    bands = {}
    for spec in specs or []:
        name, _, edges = str(spec).partition("=")
        try:
            values = [float(e) for e in edges.split(",")]
        except ValueError:
            values = []
        if not name.strip() or not values or any(b <= a for a, b in zip(values, values[1:])):
            raise MedclfError(f"--bands '{spec}': expected COLUMN=EDGE,EDGE,... in increasing order (e.g. age=0,30,50,70)")
        bands[name.strip()] = values
    return bands


def _band(value, edges):
    if value < edges[0]:
        return f"<{edges[0]:g}"
    for low, high in zip(edges, edges[1:]):
        if low <= value < high:
            return f"{low:g}-{high:g}"
    return f">={edges[-1]:g}"


def subgroup_labels(values, column, edges=None):
    """The subgroup of each value of a splits.csv column (strings as read): the value, its band, or
    MISSING."""
    values = pd.Series(values, dtype="object").astype(str).str.strip()
    missing = values.isin(["", "nan", "NaN", "None", "NA"])
    numbers = pd.to_numeric(values.where(~missing), errors="coerce")
    if edges is not None:
        bad = values[~missing & numbers.isna()]
        if len(bad):
            raise MedclfError(f"--bands {column}: the value {bad.iloc[0]!r} is not a number")
        return [MISSING if m else _band(v, edges) for m, v in zip(missing, numbers)]
    distinct = values[~missing].nunique()
    if distinct > MAX_LEVELS and numbers[~missing].notna().all():
        raise MedclfError(f"--by {column}: a numeric column with {distinct} values; cut it into bands, e.g. "
                          f"--bands {column}=0,30,50,70")
    return [MISSING if m else v for m, v in zip(missing, values)]


def ordered_levels(labels, edges=None):
    """The subgroups present, in reading order: bands from low to high (or values sorted), MISSING last."""
    present = set(labels)
    if edges is not None:
        order = [f"<{edges[0]:g}"] + [f"{a:g}-{b:g}" for a, b in zip(edges, edges[1:])] + [f">={edges[-1]:g}"]
    else:
        order = sorted(present - {MISSING})
    return [level for level in order + [MISSING] if level in present]


def se_from_interval(value):
    """The standard error behind a normal interval estimate +- z SE, read on an untruncated side."""
    est, lower, upper = value.get("estimate"), value.get("lower"), value.get("upper")
    if est is None or lower is None or upper is None:
        return None
    z = M._z()
    sides = [(est - lower) / z if lower > 0 else None, (upper - est) / z if upper < 1 else None]
    sides = [s for s in sides if s is not None]
    return max(sides) if sides else None


def heterogeneity(estimates, standard_errors):
    """Cochran's Q test over the subgroups with a positive standard error: {q, df, p, method,
    n_subgroups}; None with fewer than two."""
    from scipy.stats import chi2

    pairs = [(e, s) for e, s in zip(estimates, standard_errors) if e is not None and s is not None and s > 0]
    if len(pairs) < 2:
        return None
    weights = np.array([1 / (s * s) for _, s in pairs])
    values = np.array([e for e, _ in pairs])
    pooled = float(np.sum(weights * values) / np.sum(weights))
    q = float(np.sum(weights * (values - pooled) ** 2))
    df = len(pairs) - 1
    return {"q": q, "df": df, "p": float(chi2.sf(q, df)), "pooled_auc": pooled, "n_subgroups": len(pairs),
            "method": METHOD_Q}


def _level_record(level, result, clusters):
    metrics = {name: result["metrics"].get(name) for name in METRICS}
    n_groups = len(set(clusters)) if clusters is not None else result["n"]
    return {"level": level, "n": result["n"], "n_groups": n_groups, "n_positive": result["n_positive"],
            "n_negative": result["n_negative"], "prevalence": result["n_positive"] / result["n"] if result["n"] else None,
            "metrics": metrics}


def subgroup_analysis(raw, request, result, split_frame, columns, bands, run_engine):
    """The `subgroups` record of a binary report: per column of `columns`, each subgroup's report
    (run_engine on its images, at the report's threshold) and the AUC heterogeneity test.
    `raw` the predictions record, `request` the report's, `result` its result, `split_frame`
    the run's splits.csv rows."""
    if result["task"] != "binary":
        raise MedclfError("--by needs a binary report: name --positive CLASS or --group NAME=CLASS,...")
    rows = split_frame.set_index(split_frame["path"].astype(str))
    paths = [str(p) for p in raw.get("paths") or []]
    missing_paths = [p for p in paths if p not in rows.index]
    if not paths or missing_paths:
        raise MedclfError("--by: the run's splits.csv does not list every predicted image "
                          f"({missing_paths[0] if missing_paths else 'no paths in the predictions file'}); "
                          "subgroups are read from splits.csv's columns")
    unknown = [c for c in columns if c not in rows.columns]
    if unknown:
        raise MedclfError(f"--by {unknown[0]}: not a column of the run's splits.csv (columns: "
                          f"{', '.join(str(c) for c in rows.columns)})")
    out = []
    with tempfile.TemporaryDirectory(prefix="medclf-subgroups-") as tmp:
        for column in columns:
            labels = subgroup_labels(rows.loc[paths, column].tolist(), column, bands.get(column))
            levels = []
            for level in ordered_levels(labels, bands.get(column)):
                keep = [i for i, lab in enumerate(labels) if lab == level]
                path = Path(tmp) / f"subgroup_{len(out)}_{len(levels)}.json"
                write_json(path, subset_record(raw, keep))
                clusters = None if request.get("clusters") is None else [request["clusters"][i] for i in keep]
                sub_request = dict(request, predictions_path=str(path), predictions=None, clusters=clusters,
                                   threshold=result["threshold"], threshold_rule=None, val_predictions_path=None,
                                   boot_n=0)
                sub_result, _ = run_engine(sub_request)
                levels.append(_level_record(level, sub_result, clusters))
            aucs = [lv["metrics"]["roc_auc"] for lv in levels]
            out.append({"column": column, "bands": bands.get(column), "levels": levels,
                        "heterogeneity": heterogeneity([a["estimate"] if a else None for a in aucs],
                                                       [se_from_interval(a) if a else None for a in aucs])})
    return {"threshold": result["threshold"], "columns": out}


def _cell(value, level):
    from medclf.evaluate.formatting import estimate_with_interval

    if value is None or value.get("estimate") is None:
        return f"not estimable (n = {level['n_positive']} positive, {level['n_negative']} negative)"
    return estimate_with_interval(value)


def markdown_lines(result):
    record = result.get("subgroups")
    if not record:
        return []
    lines = ["", f"## Subgroups (at threshold {record['threshold']:.6g})", ""]
    for column in record["columns"]:
        lines += [f"### {column['column']}" + (f" (bands {column['bands']})" if column["bands"] else ""), "",
                  "| subgroup | n (groups) | prevalence | ROC AUC | sensitivity | specificity | calibration intercept |",
                  "|---|---|---|---|---|---|---|"]
        for level in column["levels"]:
            m = level["metrics"]
            prevalence = "" if level["prevalence"] is None else f"{level['prevalence']:.3f}"
            lines.append(f"| {level['level']} | {level['n']} ({level['n_groups']}) | {prevalence} | "
                         + " | ".join(_cell(m[name], level) for name in METRICS) + " |")
        test = column["heterogeneity"]
        lines += ["", "AUC heterogeneity: " + ("fewer than two subgroups with an AUC interval; not tested" if test is None
                                               else f"Q = {test['q']:.2f}, df = {test['df']}, p = {test['p']:.4f} "
                                                    f"({test['method']})"), ""]
    return lines


def plot(plt, result, save):
    """forest_<s>.png: each subgroup's AUC with its interval, one block per column, and the whole
    split's AUC as a line."""
    record = result["subgroups"]
    rows = [(c["column"], lv) for c in record["columns"] for lv in c["levels"]]
    fig, ax = plt.subplots(figsize=(6, 0.8 + 0.32 * len(rows)))
    for y, (column, level) in enumerate(reversed(rows)):
        auc = level["metrics"]["roc_auc"] or {}
        if auc.get("estimate") is not None:
            lower = auc["lower"] if auc.get("lower") is not None else auc["estimate"]
            upper = auc["upper"] if auc.get("upper") is not None else auc["estimate"]
            ax.plot([lower, upper], [y, y], color="C0")
            ax.plot(auc["estimate"], y, "s", color="C0", ms=4 + 4 * math.sqrt(level["n"] / max(lv["n"] for _, lv in rows)))
        else:
            ax.text(0.5, y, "not estimable", va="center", ha="center", fontsize=7, color="grey")
    overall = result["metrics"]["roc_auc"]["estimate"]
    if overall is not None:
        ax.axvline(overall, ls="--", color="grey", label=f"all: AUC {overall:.3f}")
        ax.legend(fontsize=7, loc="lower left")
    ax.set_yticks(range(len(rows)), [f"{c} = {lv['level']} (n {lv['n']})" for c, lv in reversed(rows)], fontsize=7)
    ax.set(xlabel="ROC AUC (95% interval)", xlim=(0, 1.01), title="Subgroups")
    save(fig, "forest")
