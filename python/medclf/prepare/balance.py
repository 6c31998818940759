"""The balance table of a split ("Table 1" of a clinical paper): what each split holds, against train.

Per split: images, groups, images per group (mean, SD, median, maximum; share of groups with more
than one image; groups per size band), class shares, and every metadata column of splits.csv:
a categorical column as the share of each value (an empty cell is the value "(missing)"), a numeric
one as mean, SD and the share missing. Each share and mean of val and test carries its standardized
difference against train (Austin 2009, Stat Med 28:3083):
    numeric:  (mean_s - mean_train) / sqrt((sd_s^2 + sd_train^2) / 2)
    a share:  (p_s - p_train) / sqrt((p_s (1 - p_s) + p_train (1 - p_train)) / 2)
A difference above 0.1 in absolute value is the customary sign of imbalance; partition warns for each,
except for a value too rare to be balanced: fewer than MIN_EXPECTED images of it expected in the
split (its share over all splits times the split's size); such a share is marked "sparse".
A column is numeric when every non-empty cell is a number and it has more than MAX_CATEGORY_LEVELS
values; a text column whose values are nearly all distinct (an identifier) is listed as skipped.
"""

import math

import numpy as np
import pandas as pd

from medclf.prepare.assignment import size_band, size_band_label

THRESHOLD = 0.1
MAX_CATEGORY_LEVELS = 10
IDENTIFIER_SHARE = 0.5  # a text column with more distinct values than this share of its rows
MISSING = "(missing)"
MIN_EXPECTED = 5


def standardized_difference(a, b):
    """(mean_a - mean_b) / pooled SD of two samples (population SDs); 0 when both are constant
    and equal, None when both are constant and differ (no scale to measure it on)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) == 0 or len(b) == 0:
        return None
    pooled = math.sqrt((a.var() + b.var()) / 2)
    if pooled == 0:
        return 0.0 if a.mean() == b.mean() else None
    return float((a.mean() - b.mean()) / pooled)


def _rounded(value, digits=4):
    return None if value is None else round(float(value), digits)


def column_kind(values):
    """"numeric", "categorical" or "identifier" for a column of splits.csv (as text)."""
    present = [v for v in values if v != ""]
    if not present:
        return "categorical"
    numbers = pd.to_numeric(pd.Series(present), errors="coerce")
    distinct = len(set(present))
    if numbers.notna().all() and distinct > MAX_CATEGORY_LEVELS:
        return "numeric"
    if distinct > MAX_CATEGORY_LEVELS and distinct > IDENTIFIER_SHARE * len(present):
        return "identifier"
    return "categorical"


def _group_sizes(frame):
    return frame.groupby("group", sort=True).size().to_numpy()


def _size_summary(sizes):
    bands = pd.Series([size_band_label(size_band(n)) for n in sizes]).value_counts()
    return {"mean": _rounded(sizes.mean()), "sd": _rounded(sizes.std(ddof=0)), "median": float(np.median(sizes)),
            "max": int(sizes.max()), "multi_image_groups": _rounded(np.mean(sizes > 1)),
            "groups_per_size_band": {band: int(n) for band, n in sorted(bands.items(), key=lambda kv: _band_key(kv[0]))}}


def _band_key(label):
    return int(label.split("-")[0])


def _categorical(name, values_by_split, splits):
    levels = sorted({v for values in values_by_split.values() for v in values})
    n_all = sum(len(v) for v in values_by_split.values())
    rows = []
    for level in levels:
        indicator = {s: (np.asarray(values_by_split[s]) == level).astype(float) for s in splits}
        pooled = sum(indicator[s].sum() for s in splits) / n_all
        row = {"variable": name, "level": level,
               "share": {s: _rounded(indicator[s].mean()) if len(indicator[s]) else None for s in splits},
               "smd": {s: _rounded(standardized_difference(indicator[s], indicator["train"])) for s in splits[1:]},
               "sparse": {s: bool(pooled * len(indicator[s]) < MIN_EXPECTED) for s in splits[1:]}}
        rows.append(row)
    return rows


def _numeric(name, values_by_split, splits):
    numbers = {s: pd.to_numeric(pd.Series(values_by_split[s], dtype=object).replace("", np.nan), errors="coerce")
               for s in splits}
    present = {s: numbers[s].dropna().to_numpy(dtype=np.float64) for s in splits}
    return [{"variable": name, "level": None,
             "mean": {s: _rounded(present[s].mean()) if len(present[s]) else None for s in splits},
             "sd": {s: _rounded(present[s].std(ddof=0)) if len(present[s]) else None for s in splits},
             "missing": {s: _rounded(numbers[s].isna().mean()) if len(numbers[s]) else None for s in splits},
             "smd": {s: _rounded(standardized_difference(present[s], present["train"])) for s in splits[1:]}}]


def balance_table(frame, columns, splits=("train", "val", "test")):
    """The balance record of a splits frame (path, label, split, group and the metadata `columns`,
    values as text); splits without images are left out."""
    splits = [s for s in splits if (frame["split"] == s).any()]
    if "train" not in splits:
        return None
    parts = {s: frame[frame["split"] == s] for s in splits}
    sizes = {s: _group_sizes(parts[s]) for s in splits}
    record = {"reference": "train", "threshold": THRESHOLD,
              "method": "standardized difference against train (Austin 2009)",
              "splits": {s: {"images": int(len(parts[s])), "groups": int(len(sizes[s])),
                             "images_per_group": _size_summary(sizes[s])} for s in splits},
              "rows": [], "skipped_columns": {}}
    record["rows"] += _numeric("images per group", {s: [str(n) for n in sizes[s]] for s in splits}, splits)
    record["rows"] += _categorical("multi-image group", {s: ["yes" if n > 1 else "no" for n in sizes[s]]
                                                         for s in splits}, splits)[1:]
    record["rows"] += _categorical("class", {s: parts[s]["label"].astype(str).tolist() for s in splits}, splits)
    for column in columns:
        values = frame[column].fillna("").astype(str).str.strip().tolist()
        kind = column_kind(values)
        by_split = {s: parts[s][column].fillna("").astype(str).str.strip().tolist() for s in splits}
        if kind == "identifier":
            record["skipped_columns"][column] = "identifier-like (nearly every value distinct)"
        elif kind == "numeric":
            record["rows"] += _numeric(column, by_split, splits)
        else:
            record["rows"] += _categorical(column, {s: [v or MISSING for v in by_split[s]] for s in splits}, splits)
    record["imbalanced"] = [
        {"variable": row["variable"], "level": row["level"], "split": s, "smd": d}
        for row in record["rows"] for s, d in row["smd"].items()
        if d is not None and abs(d) > THRESHOLD and not row.get("sparse", {}).get(s)]
    return record


def imbalance_warnings(record):
    """One line per standardized difference above the threshold, naming the column (and value)."""
    return [f"{item['split']} differs from train in {item['variable']}"
            + (f" = {item['level']}" if item["level"] is not None else "")
            + f": standardized difference {item['smd']:+.2f} (over {record['threshold']})"
            for item in (record or {}).get("imbalanced", [])]


def format_balance(record):
    """The balance table as printed by partition: one line per row, a column per split."""
    if record is None:
        return ""
    splits = list(record["splits"])
    width, column = 26, 24

    def cell(text, smd=None, sparse=False):
        flag = "" if smd is None or abs(smd) <= record["threshold"] else "~" if sparse else "*"
        mark = "" if smd is None else f" ({smd:+.2f}{flag})"
        return f"{text + mark:>{column}}"

    lines = [f"balance against train (standardized difference; * above {record['threshold']}, "
             f"~ above it for a value with under {MIN_EXPECTED} images expected in the split):",
             f"{'':<{width}}" + "".join(f"{s:>{column}}" for s in splits)]
    lines.append(f"{'images / groups':<{width}}" + "".join(
        cell(f"{record['splits'][s]['images']} / {record['splits'][s]['groups']}") for s in splits))
    lines.append(f"{'images per group: max':<{width}}" + "".join(
        cell(str(record["splits"][s]["images_per_group"]["max"])) for s in splits))
    for row in record["rows"]:
        label = row["variable"] if row["level"] is None else f"{row['variable']} = {row['level']}"
        cells = []
        for s in splits:
            smd = row["smd"].get(s)
            if "mean" in row:
                mean, sd = row["mean"][s], row["sd"][s]
                text = "-" if mean is None else f"{mean:.3g} ± {sd:.2g}"
            else:
                share = row["share"][s]
                text = "-" if share is None else f"{share:.1%}"
            cells.append(cell(text, smd, row.get("sparse", {}).get(s, False)))
        lines.append(f"{label[:width - 1]:<{width}}" + "".join(cells))
        if "missing" in row and any(row["missing"].values()):
            lines.append(f"{(row['variable'] + ': missing')[:width - 1]:<{width}}" + "".join(
                cell("-" if row["missing"][s] is None else f"{row['missing'][s]:.1%}") for s in splits))
    for column, why in record["skipped_columns"].items():
        lines.append(f"not compared: {column} ({why})")
    return "\n".join(lines)
