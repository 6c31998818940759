"""The pure-Python metrics (R/metrics.R's mirror): hand-computed fixtures as fractions and
cross-checks against scikit-learn."""

from fractions import Fraction

import numpy as np
import pytest
from scipy.stats import binom
from sklearn.metrics import average_precision_score, cohen_kappa_score, roc_auc_score

from medclf.core.errors import MedclfError
from medclf.evaluate import metrics as M

# The original README's test set: 10 negatives, 16 positives, one error each way.
LOGIT_NEG = [-3.0, -2.5, -2.0, -1.5, -1.0, -0.8, -0.6, -0.4, -0.2, 0.3]
LOGIT_POS = [-0.1] + [0.5 + 0.25 * i for i in range(15)]
README_Y = np.array([0] * 10 + [1] * 16, dtype=bool)
README_S = 1 / (1 + np.exp(-np.array(LOGIT_NEG + LOGIT_POS)))


def test_readme_set_gives_15_16_and_9_10():
    b = M.binary_metrics(README_Y, README_S, 0.5)
    assert b["confusion_matrix"] == {"tp": 15, "fn": 1, "tn": 9, "fp": 1}
    m = b["metrics"]
    assert m["sensitivity"]["estimate"] == pytest.approx(15 / 16)
    assert m["specificity"]["estimate"] == pytest.approx(9 / 10)
    assert m["accuracy"]["estimate"] == pytest.approx(24 / 26)
    assert m["f1"]["estimate"] == pytest.approx(30 / 32)
    assert m["roc_auc"]["estimate"] == pytest.approx(159 / 160)
    assert m["average_precision"]["estimate"] == pytest.approx(15 / 16 + (1 / 16) * (16 / 17))
    assert m["cohen_kappa"]["estimate"] == pytest.approx(268 / 320)


def test_clopper_pearson_bounds_solve_the_binomial_tails():
    v = M.proportion(15, 16, "")
    assert binom.sf(14, 16, v["lower"]) == pytest.approx(0.025, abs=1e-10)
    assert binom.cdf(15, 16, v["upper"]) == pytest.approx(0.025, abs=1e-10)
    edge = M.proportion(0, 7, "")
    assert (edge["estimate"], edge["lower"]) == (0.0, 0.0)
    assert edge["upper"] == pytest.approx(1 - 0.025 ** (1 / 7))


def test_zero_denominators_give_none_with_a_note():
    m = M.count_metrics({"tp": 0, "fn": 0, "tn": 5, "fp": 0})
    assert m["sensitivity"]["estimate"] is None and "0/0" in m["sensitivity"]["note"]
    assert m["ppv"]["estimate"] is None and m["f1"]["estimate"] is None
    assert m["specificity"]["estimate"] == 5 / 5
    k = M.kappa([[5, 0], [0, 0]])
    assert k["estimate"] is None and "chance agreement is 1" in k["note"]
    a = M.auc_delong([True] * 4, [0.1, 0.2, 0.3, 0.4])
    assert a["estimate"] is None and "one class" in a["note"]


def test_delong_interval_by_hand():
    y = [True, True, True, False, False, False]
    s = [0.9, 0.6, 0.3, 0.5, 0.2, 0.1]
    theta = 8 / 9
    v10, v01 = np.array([1, 1, 2 / 3]), np.array([2 / 3, 1, 1])
    se = np.sqrt(np.sum((v10 - theta) ** 2) / 2 / 3 + np.sum((v01 - theta) ** 2) / 2 / 3)
    a = M.auc_delong(y, s)
    assert a["estimate"] == pytest.approx(theta)
    assert a["lower"] == pytest.approx(theta - 1.959963984540054 * se)


def test_against_sklearn_on_random_data_with_ties():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 500).astype(bool)
    s = np.round(rng.uniform(0, 1, 500) * 0.6 + 0.4 * y, 2)
    assert M.auc_delong(y, s)["estimate"] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert M.average_precision(y, s)["estimate"] == pytest.approx(average_precision_score(y, s), abs=1e-12)
    truth, decided = rng.integers(0, 4, 300), rng.integers(0, 4, 300)
    counts = M.confusion_table(truth, decided, 4)
    assert M.kappa(counts)["estimate"] == pytest.approx(cohen_kappa_score(truth, decided), abs=1e-12)


def test_kappa_se_is_the_delta_method_variance():
    counts = np.array([[20, 4, 1], [3, 15, 2], [2, 1, 12]], dtype=float)
    n = counts.sum()
    p = counts.ravel() / n

    def kappa_of(q):
        q = q.reshape(3, 3)
        pe = np.sum(q.sum(1) * q.sum(0))
        return (np.trace(q) - pe) / (1 - pe)

    h = 1e-6
    grad = np.array([(kappa_of(p + h * e) - kappa_of(p - h * e)) / (2 * h) for e in np.eye(9)])
    variance = grad @ (np.diag(p) - np.outer(p, p)) @ grad / n
    k = M.kappa(counts)
    assert (k["upper"] - k["estimate"]) / 1.959963984540054 == pytest.approx(np.sqrt(variance), rel=1e-5)


def test_multiclass_balanced_accuracy_and_kappa_by_hand():
    labels = [0, 0, 1, 1, 2, 2]
    probs = [[.7, .2, .1], [.2, .7, .1], [.1, .8, .1], [.3, .6, .1], [.1, .1, .8], [.5, .2, .3]]
    m = M.multiclass_metrics(labels, probs, ["a", "b", "c"])
    assert m["confusion_matrix"]["matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert m["metrics"]["balanced_accuracy"]["estimate"] == pytest.approx((1 / 2 + 1 + 1 / 2) / 3)
    assert m["metrics"]["accuracy"]["estimate"] == pytest.approx(4 / 6)
    assert m["metrics"]["cohen_kappa"]["estimate"] == pytest.approx(1 / 2)
    assert m["per_class"]["b"]["metrics"]["ppv"]["estimate"] == pytest.approx(2 / 3)
    assert M.balanced_accuracy(labels, m["decided"]) == pytest.approx(2 / 3)


def test_threshold_rules_on_validation():
    y = [False] * 4 + [True] * 4
    s = [0.1, 0.2, 0.3, 0.6, 0.4, 0.7, 0.8, 0.9]
    assert M.choose_threshold(y, s, "youden")["threshold"] == 0.7
    assert M.choose_threshold(y, s, "sensitivity:0.95")["threshold"] == 0.4
    assert M.choose_threshold(y, s, "specificity:0.9")["threshold"] == 0.7
    with pytest.raises(MedclfError, match="threshold rule"):
        M.choose_threshold(y, s, "sensitivity:1.5")


def test_precision_at_recall_takes_the_best_point_at_or_above_the_target():
    ops = M.operating_points(README_Y, README_S)
    pr = [o for o in ops if o["kind"] == "precision_at_recall" and o["target"] == 0.999][0]
    assert pr["precision"] == pytest.approx(16 / 17)
    assert pr["threshold"] == pytest.approx(1 / (1 + np.exp(0.1)))
    assert pr["sensitivity"] == 1.0


def test_mid_ranks_share_tied_ranks_exactly_as_scipy_ranks_them():
    from scipy.stats import rankdata

    assert M.mid_ranks([3, 1, 3, 2]).tolist() == [Fraction(7, 2), 1, Fraction(7, 2), 2]
    rng = np.random.default_rng(5)
    values = rng.integers(0, 7, 500) / 4  # many ties
    assert np.array_equal(M.mid_ranks(values), rankdata(values))
