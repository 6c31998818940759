"""How many test images does a 95% interval of a given width need, and how wide will the interval
of a test split of a given size be? (`medclf plan`; mirrored in R/sample_size.R to 1e-9.)

- accuracy, and sensitivity or specificity without a prevalence: the Wilson score interval of the
  expected proportion p with n cases (sensitivity: n positives; specificity: n negatives), width
      2 z / (1 + z^2/n) * sqrt(p (1 - p) / n + z^2 / (4 n^2));
  the plan is the smallest n whose width is at most the target.
- sensitivity or specificity with a prevalence: Buderer (1996, Acad Emerg Med 3:895): the cases of
  the class, z^2 p (1 - p) / d^2 with d half the width (the Wald interval), and the images to
  enrol, that divided by the prevalence (sensitivity) or by 1 - prevalence (specificity).
- ROC AUC: Hanley & McNeil (1982, Radiology 143:29), SE^2 = [A(1 - A) + (n1 - 1)(Q1 - A^2) +
  (n0 - 1)(Q2 - A^2)] / (n1 n0), Q1 = A / (2 - A), Q2 = 2 A^2 / (1 + A); width 2 z SE; n0/n1 fixed
  by the prevalence (default 1/2); the plan is the smallest n1 (and n0 = ceil(n1 (1 - prev) / prev)).
- Cohen's kappa of a binary decision: the large-sample SE of Cohen (1960),
  SE^2 = p_o (1 - p_o) / (n (1 - p_e)^2), with truth and decisions both positive at the prevalence
  (p_e = prev^2 + (1 - prev)^2) and p_o = kappa (1 - p_e) + p_e.
Images of one patient or lesion are not independent: plan in groups, and read a split's widths at
its number of groups (medclf plan --splits prints both).
"""

import math

from medclf.core.errors import MedclfError
from medclf.evaluate import metrics as M

METRICS = ("sensitivity", "specificity", "accuracy", "auc", "kappa")
METHODS = {"wilson": "Wilson score interval", "buderer": "Buderer (1996), Wald interval of the class's cases",
           "hanley-mcneil": "Hanley & McNeil (1982) standard error", "cohen": "Cohen (1960) large-sample standard error"}
LARGEST_N = 10_000_000


def wilson_width(p, n):
    z = M._z()
    return 2 * z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))


def auc_width(auc, n_pos, n_neg):
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    variance = (auc * (1 - auc) + (n_pos - 1) * (q1 - auc * auc) + (n_neg - 1) * (q2 - auc * auc)) / (n_pos * n_neg)
    return 2 * M._z() * math.sqrt(variance)


def kappa_width(kappa, prevalence, n):
    chance = prevalence * prevalence + (1 - prevalence) * (1 - prevalence)
    observed = kappa * (1 - chance) + chance
    return 2 * M._z() * math.sqrt(observed * (1 - observed) / n) / (1 - chance)


def _smallest(width_of, target):
    """The smallest n >= 1 with width_of(n) <= target (width_of falls as n grows)."""
    high = 1
    while width_of(high) > target:
        high *= 2
        if high > LARGEST_N:
            raise MedclfError(f"--width {target}: more than {LARGEST_N:,} cases would be needed; ask for a wider interval")
    low = high // 2
    while low + 1 < high:  # width_of(low) > target >= width_of(high), low = 0 standing for "too few"
        middle = (low + high) // 2
        low, high = (low, middle) if width_of(middle) <= target else (middle, high)
    return high


def _check(name, value, low=0.0, high=1.0):
    if value is None or not (low < value < high):
        raise MedclfError(f"--{name} {value}: give a number strictly between {low:g} and {high:g}")


def plan(metric, expected, width, prevalence=None):
    """{metric, expected, width, prevalence, method, n_images, n_positive, n_negative}: the test
    images (and of them the positives and negatives) for a 95% interval at most `width` wide."""
    if metric not in METRICS:
        raise MedclfError(f"--metric {metric}: choose one of {', '.join(METRICS)}")
    _check("expected", expected, 0.0 if metric != "kappa" else -1.0)
    _check("width", width, 0.0, 2.0 if metric == "kappa" else 1.0)
    if prevalence is not None:
        _check("prevalence", prevalence)
    out = {"metric": metric, "expected": expected, "width": width, "prevalence": prevalence}
    if metric in ("sensitivity", "specificity") and prevalence is not None:
        share = prevalence if metric == "sensitivity" else 1 - prevalence
        cases = M._z() ** 2 * expected * (1 - expected) / (width / 2) ** 2
        n_class, n_images = math.ceil(cases), math.ceil(cases / share)
        counts = (n_class, None) if metric == "sensitivity" else (None, n_class)
        return dict(out, method=METHODS["buderer"], n_images=n_images, n_positive=counts[0], n_negative=counts[1])
    if metric in ("sensitivity", "specificity", "accuracy"):
        n = _smallest(lambda k: wilson_width(expected, k), width)
        counts = {"sensitivity": (n, None), "specificity": (None, n), "accuracy": (None, None)}[metric]
        return dict(out, method=METHODS["wilson"], n_images=None if metric != "accuracy" else n,
                    n_positive=counts[0], n_negative=counts[1])
    share = 0.5 if prevalence is None else prevalence
    if metric == "auc":
        ratio = (1 - share) / share

        def negatives(n_pos):
            return max(1, math.ceil(n_pos * ratio))

        n_pos = _smallest(lambda k: auc_width(expected, k, negatives(k)), width)
        return dict(out, method=METHODS["hanley-mcneil"], n_images=n_pos + negatives(n_pos), n_positive=n_pos,
                    n_negative=negatives(n_pos))
    n = _smallest(lambda k: kappa_width(expected, share, k), width)
    return dict(out, method=METHODS["cohen"], n_images=n, n_positive=None, n_negative=None)


def widths(n_positive, n_negative, expected=0.85):
    """The 95% interval widths a test split with these counts will have, each metric at the expected
    value `expected`: {metric: (width or None, method)} (kappa is left out: it needs an expected
    kappa, not an expected proportion)."""
    n = n_positive + n_negative
    out = {"accuracy": (wilson_width(expected, n), METHODS["wilson"]) if n else (None, METHODS["wilson"])}
    out["sensitivity"] = (wilson_width(expected, n_positive) if n_positive else None, METHODS["wilson"])
    out["specificity"] = (wilson_width(expected, n_negative) if n_negative else None, METHODS["wilson"])
    out["auc"] = (auc_width(expected, n_positive, n_negative) if n_positive and n_negative else None,
                  METHODS["hanley-mcneil"])
    return out


def split_counts(table, split="test"):
    """{"images": (n_positive, n_negative), "groups": (...)} of a split of a SplitTable: images of
    the positive class and the rest, and the distinct groups holding them (a group with both kinds
    counts on both sides). Without a positive class both counts are (n, None)."""
    rows = table.rows(split)
    if table.positive_class is None:
        return {"images": (len(rows), None), "groups": (rows["group"].nunique(), None)}
    positive = rows["label"].astype(str) == str(table.positive_class)
    return {"images": (int(positive.sum()), int((~positive).sum())),
            "groups": (int(rows.loc[positive, "group"].nunique()), int(rows.loc[~positive, "group"].nunique()))}


def split_width_lines(table, split="test", expected=0.85):
    """Text lines: the interval widths the split's test metrics will have at the expected value,
    counted in images and in groups (groups are the independent units)."""
    counts = split_counts(table, split)
    lines = []
    for unit in ("images", "groups"):
        n_pos, n_neg = counts[unit]
        if n_neg is None:
            lines.append(f"{split}: {n_pos} {unit}: accuracy interval about {wilson_width(expected, n_pos):.2f} wide "
                         f"at an expected {expected:g}" if n_pos else f"{split}: no {unit}")
            continue
        parts = [f"{metric} {width:.2f}" for metric, (width, _) in widths(n_pos, n_neg, expected).items()
                 if width is not None]
        lines.append(f"{split}: {n_pos} positive and {n_neg} negative {unit}: 95% intervals about "
                     + ", ".join(parts) + f" wide at an expected {expected:g} (Wilson; AUC Hanley-McNeil)")
    return lines
