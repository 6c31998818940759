"""Planning a test set (medclf.evaluate.sample_size, `medclf plan`): Buderer and Hanley-McNeil by
hand in fractions, the smallest Wilson n, simulated widths of the planned sizes, a split's widths
in images and groups, and the command line."""

import math
from fractions import Fraction as F

import numpy as np
import pytest
from scipy.stats import norm

from medclf import cli
from medclf.core.errors import MedclfError
from medclf.core.splits import read_splits
from medclf.evaluate import metrics as M
from medclf.evaluate import sample_size as S

Z2 = norm.ppf(0.975) ** 2


def test_buderer_by_hand():
    # sensitivity 0.9 within +-0.05 at prevalence 1/5: z^2 (9/10)(1/10) / (1/20)^2 positives, / (1/5) images
    sens = S.plan("sensitivity", 0.9, 0.1, prevalence=0.2)
    cases = Z2 * float(F(9, 10) * F(1, 10) / F(1, 20) ** 2)
    assert (sens["n_positive"], sens["n_images"]) == (math.ceil(cases), math.ceil(cases * 5)) == (139, 692)
    spec = S.plan("specificity", 0.85, 0.1, prevalence=0.2)
    cases = Z2 * float(F(85, 100) * F(15, 100) / F(1, 20) ** 2)
    assert (spec["n_negative"], spec["n_images"]) == (math.ceil(cases), math.ceil(cases / 0.8)) == (196, 245)
    assert spec["n_positive"] is None and "Buderer" in spec["method"]


def test_hanley_mcneil_standard_error_by_hand():
    # A = 4/5 with 50 positives and 50 negatives: Q1 = 2/3, Q2 = 32/45
    a = F(4, 5)
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    assert (q1, q2) == (F(2, 3), F(32, 45))
    variance = (a * (1 - a) + 49 * (q1 - a * a) + 49 * (q2 - a * a)) / 2500
    assert variance == F(1114, 562500)
    assert S.auc_width(0.8, 50, 50) == pytest.approx(2 * math.sqrt(Z2 * float(variance)), abs=1e-12)


def test_the_plan_is_the_smallest_n_that_reaches_the_width():
    for metric, expected, width, prevalence in [("accuracy", 0.8, 0.05, None), ("sensitivity", 0.95, 0.1, None),
                                                ("auc", 0.85, 0.1, None), ("auc", 0.7, 0.2, 0.1), ("kappa", 0.6, 0.2, 0.3)]:
        p = S.plan(metric, expected, width, prevalence)
        share = 0.5 if prevalence is None else prevalence
        if metric == "auc":
            def width_of(n):
                return S.auc_width(expected, n, max(1, math.ceil(n * (1 - share) / share)))
            n = p["n_positive"]
        elif metric == "kappa":
            def width_of(n):
                return S.kappa_width(expected, share, n)
            n = p["n_images"]
        else:
            def width_of(n):
                return S.wilson_width(expected, n)
            n = p["n_images"] if metric == "accuracy" else p["n_positive"]
        assert width_of(n) <= width < width_of(n - 1), (metric, n)


def test_planned_sizes_give_intervals_of_about_the_planned_width_by_simulation():
    rng = np.random.default_rng(23)
    n = S.plan("accuracy", 0.8, 0.1)["n_images"]
    successes = rng.binomial(n, 0.8, 2000)
    bounds = np.array([M.wilson(x, n) for x in successes])
    assert np.mean(bounds[:, 1] - bounds[:, 0]) == pytest.approx(0.1, rel=0.03)
    assert 0.93 < np.mean((bounds[:, 0] <= 0.8) & (0.8 <= bounds[:, 1])) < 0.97
    plan = S.plan("auc", 0.85, 0.1)
    shift = math.sqrt(2) * norm.ppf(0.85)  # binormal scores with AUC 0.85
    widths, covered = [], []
    for _ in range(300):
        y = np.r_[np.ones(plan["n_positive"], bool), np.zeros(plan["n_negative"], bool)]
        s = rng.normal(0, 1, len(y)) + shift * y
        auc = M.auc_delong(y, s)
        widths.append(auc["upper"] - auc["lower"])
        covered.append(auc["lower"] <= 0.85 <= auc["upper"])
    assert np.mean(widths) == pytest.approx(0.1, rel=0.1)  # Hanley-McNeil assumes another score model
    assert 0.92 < np.mean(covered) < 0.98


def test_bad_inputs_are_refused():
    for args, message in [(("auc", 1.2, 0.1), "--expected"), (("auc", 0.8, 0), "--width"),
                          (("sensitivity", 0.9, 0.1, 1.0), "--prevalence"), (("dice", 0.8, 0.1), "--metric"),
                          (("accuracy", 0.5, 1e-5), "more than")]:
        with pytest.raises(MedclfError, match=message):
            S.plan(*args)


def test_a_split_is_read_in_images_and_in_groups(brain_partition):
    table = read_splits(brain_partition)
    counts = S.split_counts(table)
    test = table.rows("test")
    positive = test["label"] == "yes"
    assert counts["images"] == (int(positive.sum()), int((~positive).sum()))
    assert counts["groups"] == (test.loc[positive, "group"].nunique(), test.loc[~positive, "group"].nunique())
    assert counts["groups"][0] < counts["images"][0]  # the brain set's duplicate clusters
    images, groups = S.split_width_lines(table)
    wide = S.widths(*counts["groups"])["auc"][0]
    assert "images" in images and "groups" in groups and f"auc {wide:.2f}" in groups


def test_plan_command(capsys, brain_partition):
    assert cli.main(["plan", "--metric", "auc", "--expected", "0.85", "--width", "0.1"]) == 0
    assert "234 test images, 117 positive, 117 negative (Hanley & McNeil" in capsys.readouterr().out
    assert cli.main(["plan", "--splits", str(brain_partition)]) == 0
    assert capsys.readouterr().out.count("\n") == 2
    assert cli.main(["plan", "--metric", "auc"]) == 1
    assert "give --metric and --width" in capsys.readouterr().err
