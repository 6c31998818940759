"""Internal against external validation, side by side (`medclf compare RUN RUN/external_NAME`).

The two test sets hold different images (the external one another site's, checked by content
when it was scored), so the AUCs are compared as independent estimates: difference = external -
internal, SE = sqrt(SE_int^2 + SE_ext^2), each SE read from its interval (half-width / z on a side
not truncated at 0 or 1: DeLong, or Obuchowski over groups; medclf.evaluate.subgroups), a normal
interval and a two-sided p. Calibration: each set's calibration slope and intercept with their
intervals; a recalibration hint when the external slope's interval excludes 1 or its intercept's
excludes 0 (the risks are too extreme, too modest, or shifted there). Mirrored in R/external.R.
"""

import math

from medclf.core.errors import MedclfError
from medclf.evaluate import metrics as M
from medclf.evaluate.subgroups import se_from_interval

METHOD = ("difference of two independent AUCs (external - internal): SE = sqrt(SE_int^2 + SE_ext^2), each from its "
          "interval (DeLong, or Obuchowski over groups); normal interval, two-sided p")
ROWS = ("roc_auc", "sensitivity", "specificity", "calibration_slope", "calibration_intercept")


def auc_difference(internal, external):
    """{difference: value, z, p_value} of two independent AUC values (metric records)."""
    se = [se_from_interval(v) for v in (internal, external)]
    if internal.get("estimate") is None or external.get("estimate") is None or None in se:
        return {"difference": M.value(None, None, None, METHOD, "an AUC or its interval is undefined"),
                "z": None, "p_value": None}
    d = external["estimate"] - internal["estimate"]
    sd = math.sqrt(se[0] ** 2 + se[1] ** 2)
    z = M._z()
    if sd == 0:
        return {"difference": M.value(d, d, d, METHOD, "both intervals have zero width"), "z": None, "p_value": None}
    from scipy.stats import norm

    return {"difference": M.value(d, d - z * sd, d + z * sd, METHOD), "z": d / sd,
            "p_value": float(2 * norm.sf(abs(d / sd)))}


def _excludes(value, target):
    return value is not None and value.get("lower") is not None and not value["lower"] <= target <= value["upper"]


def recalibration_hint(external_metrics):
    """A sentence when the external calibration slope's interval excludes 1 or the intercept's
    excludes 0, else None."""
    slope, intercept = external_metrics.get("calibration_slope"), external_metrics.get("calibration_intercept")
    problems = []
    if _excludes(slope, 1.0):
        problems.append(f"calibration slope {slope['estimate']:.2f} ({slope['lower']:.2f} to {slope['upper']:.2f}) "
                        f"excludes 1: the risks are {'too extreme' if slope['estimate'] < 1 else 'too modest'} there")
    if _excludes(intercept, 0.0):
        problems.append(f"calibration intercept {intercept['estimate']:.2f} excludes 0: the risks are "
                        f"{'too high' if intercept['estimate'] < 0 else 'too low'} on average")
    if not problems:
        return None
    return ("; ".join(problems) + ". Recalibrate on a sample of the external site before using the probabilities "
            "(`medclf calibrate`), and report the recalibrated result as such.")


def comparison(internal, external, internal_name, external_name):
    """The medclf.comparison/1 record of an internal and an external binary result."""
    for result in (internal, external):
        if result["task"] != "binary":
            raise MedclfError("internal against external needs binary results: name --positive CLASS or --group")
    rows = []
    for name, result in ((internal_name, internal), (external_name, external)):
        rows.append({"name": name, "n": result["n"], "n_positive": result["n_positive"],
                     "groups": (result.get("clusters") or {}).get("n_groups", result["n"]),
                     "metrics": {k: result["metrics"].get(k) for k in ROWS}})
    return {"kind": "internal-external", "external": external.get("external"), "runs": rows,
            "auc_difference": auc_difference(internal["metrics"]["roc_auc"], external["metrics"]["roc_auc"]),
            "recalibration_hint": recalibration_hint(external["metrics"])}


def markdown_lines(record):
    from medclf.evaluate.formatting import estimate_with_interval, number

    lines = [f"Internal against external validation ({(record.get('external') or {}).get('name', 'external')}).", "",
             "| run | n (groups) | " + " | ".join(ROWS) + " |", "|---|---|" + "---|" * len(ROWS)]
    for row in record["runs"]:
        lines.append(f"| {row['name']} | {row['n']} ({row['groups']}) | "
                     + " | ".join(estimate_with_interval(row["metrics"][k]) if row["metrics"][k] else "" for k in ROWS)
                     + " |")
    test = record["auc_difference"]
    p = "" if test["p_value"] is None else f", z = {number(test['z'])}, p = {test['p_value']:.4f}"
    lines += ["", f"AUC difference (external - internal): {estimate_with_interval(test['difference'])}{p} "
                  f"({test['difference']['method']})."]
    if record["recalibration_hint"]:
        lines += ["", f"**Recalibration hint:** {record['recalibration_hint']}"]
    return lines
