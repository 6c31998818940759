"""Issue 16 intervals and calibration measures (medclf.evaluate.metrics): hand fractions, published
constants, and coverage/variance checks by simulation."""

import numpy as np
import pytest
from scipy.stats import norm

from medclf.evaluate import metrics as M

Z = norm.ppf(0.975)


def test_wilson_bounds_solve_the_score_equation():
    for x, n in [(15, 16), (9, 10), (0, 7), (3, 3)]:
        lower, upper = M.wilson(x, n)
        for bound in (lower, upper):
            assert abs(x / n - bound) == pytest.approx(Z * np.sqrt(bound * (1 - bound) / n), abs=1e-12)


def test_balanced_accuracy_is_mover_wilson_of_the_recalls():
    b = M.balanced_accuracy_interval([15, 9], [16, 10], "n/a")
    (l1, u1), (l2, u2) = M.wilson(15, 16), M.wilson(9, 10)
    assert b["estimate"] == pytest.approx((15 / 16 + 9 / 10) / 2)
    assert b["lower"] == pytest.approx((15 / 16 + 9 / 10) / 2 - np.hypot(15 / 16 - l1, 9 / 10 - l2) / 2)
    assert b["upper"] == pytest.approx((15 / 16 + 9 / 10) / 2 + np.hypot(u1 - 15 / 16, u2 - 9 / 10) / 2)
    assert "MOVER-Wilson" in b["method"]
    # One class: the Wilson interval itself; every recall 1: a real interval, not [1, 1].
    assert (M.balanced_accuracy_interval([15], [16], "")["lower"], M.balanced_accuracy_interval([15], [16], "")["upper"]) \
        == pytest.approx(M.wilson(15, 16))
    assert M.balanced_accuracy_interval([5, 5], [5, 5], "")["lower"] < 1
    assert M.balanced_accuracy_interval([1, 0], [1, 0], "absent")["note"] == "absent"


def test_binary_count_metrics_use_the_new_balanced_accuracy_interval():
    m = M.count_metrics({"tp": 15, "fn": 1, "tn": 9, "fp": 1})
    assert m["balanced_accuracy"] == M.balanced_accuracy_interval([15, 9], [16, 10], "")


def test_balanced_accuracy_interval_covers_about_95_percent():
    rng = np.random.default_rng(7)
    truth, n = np.array([0.9, 0.6, 0.75]), np.array([12, 40, 25])
    hits = 0
    for _ in range(2000):
        x = rng.binomial(n, truth)
        b = M.balanced_accuracy_interval(x.tolist(), n.tolist(), "")
        hits += b["lower"] <= truth.mean() <= b["upper"]
    assert 0.93 <= hits / 2000 <= 0.975


def _brute_placements(y, s):
    pos, neg = s[y], s[~y]
    v10 = np.array([np.mean((p > neg) + 0.5 * (p == neg)) for p in pos])
    v01 = np.array([np.mean((pos > q) + 0.5 * (pos == q)) for q in neg])
    return v10, v01


def test_macro_auc_variance_is_the_delong_covariance_of_the_ovr_aucs():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, 60)
    p = rng.dirichlet([1, 1, 1], 60)
    p[np.arange(60), y] += 0.3
    p = np.round(p / p.sum(axis=1, keepdims=True), 1)  # ties on purpose
    total = np.zeros(60)
    for k in range(3):
        yk = y == k
        v10, v01 = _brute_placements(yk, p[:, k])
        theta = v10.mean()
        psi = np.zeros(60)
        psi[yk] = (v10 - theta) / np.sqrt(yk.sum() * (yk.sum() - 1))
        psi[~yk] = (v01 - theta) / np.sqrt((~yk).sum() * ((~yk).sum() - 1))
        total += psi
    sd = np.sqrt(np.sum(total ** 2)) / 3
    m = M.macro_auc_delong(y, p)
    assert m["estimate"] == pytest.approx(np.mean([M.roc_auc(y == k, p[:, k]) for k in range(3)]))
    assert m["upper"] - m["estimate"] == pytest.approx(Z * sd)


def test_macro_auc_of_two_classes_is_pROC_delong():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 50)
    s = rng.uniform(0, 1, 50) + 0.4 * y
    p = np.column_stack([1 - s / 1.4, s / 1.4])
    m, d = M.macro_auc_delong(y, p), M.auc_delong(y == 1, p[:, 1])
    assert (m["estimate"], m["lower"], m["upper"]) == pytest.approx((d["estimate"], d["lower"], d["upper"]), abs=1e-12)


def test_macro_auc_standard_error_matches_the_spread_over_samples():
    rng = np.random.default_rng(11)

    def sample():
        y = rng.choice(4, 400, p=[0.4, 0.3, 0.2, 0.1])
        logits = rng.normal(0, 1, (400, 4))
        logits[np.arange(400), y] += 1.2
        e = np.exp(logits)
        return y, e / e.sum(axis=1, keepdims=True)

    results = [M.macro_auc_delong(*sample()) for _ in range(300)]
    spread = np.std([r["estimate"] for r in results], ddof=1)
    mean_se = np.mean([(r["upper"] - r["lower"]) / (2 * Z) for r in results])
    assert mean_se == pytest.approx(spread, rel=0.15)


def test_macro_auc_interval_needs_two_cases_per_side():
    y = np.array([0, 0, 0, 1, 1, 1, 2])
    p = np.full((7, 3), 1 / 3)
    m = M.macro_auc_delong(y, p)
    assert m["estimate"] == pytest.approx(0.5) and m["lower"] is None and "fewer than 2" in m["note"]


def test_average_precision_logit_interval_by_hand():
    ap = M.average_precision_logit(np.array([1, 0, 1, 0], bool), np.array([0.9, 0.8, 0.7, 0.1]))
    assert ap["estimate"] == pytest.approx(5 / 6)
    half = Z / np.sqrt(2 * (5 / 6) * (1 / 6))
    assert ap["lower"] == pytest.approx(1 / (1 + np.exp(-(np.log(5) - half))))
    assert ap["upper"] == pytest.approx(1 / (1 + np.exp(-(np.log(5) + half))))
    perfect = M.average_precision_logit(np.array([1, 0], bool), np.array([0.9, 0.1]))
    assert perfect["estimate"] == 1 and perfect["lower"] is None and "logit interval undefined" in perfect["note"]


def test_brier_by_hand():
    b = M.brier([1, 0], [0.75, 0.5])
    assert b["estimate"] == pytest.approx(5 / 32)
    assert b["upper"] - b["estimate"] == pytest.approx(Z * 3 / 32)
    multi = M.brier(np.array([[1, 0, 0], [0, 1, 0]]), np.array([[0.5, 0.25, 0.25], [0.5, 0.5, 0.0]]))
    assert multi["estimate"] == pytest.approx((3 / 8 + 1 / 2) / 2)


def test_ece_by_hand_including_the_bin_edges():
    assert M.ece_estimate([0, 1, 1, 1], [0.2, 0.2, 0.8, 0.8]) == pytest.approx(1 / 4)
    # 0 lies in the first bin, 1 in the last, 1/15 closes the first bin.
    assert M.ece_estimate([0, 1, 1], [0.0, 1 / 15, 1.0]) == pytest.approx(abs(0 - 0 + 1 - 1 / 15) / 3)
    e = M.ece([0, 1, 1, 1], [0.2, 0.2, 0.8, 0.8])
    assert e["lower"] <= e["estimate"] <= e["upper"] and "bootstrap" in e["method"]


def test_bootstrap_indices_are_the_park_miller_minimal_standard_sequence():
    # Park & Miller (1988): from seed 1, the 10,000th value is 1043618065.
    idx = M.bootstrap_indices(10000, boot_n=1, seed=1)
    assert idx[0, -1] == int(np.floor(1043618065 / 2147483647 * 10000))
    x, flat = 42, []
    for _ in range(15):
        x = x * 16807 % 2147483647
        flat.append(int(np.floor(x / 2147483647 * 5)))
    assert M.bootstrap_indices(5, boot_n=3, seed=42).ravel().tolist() == flat


def test_calibration_slope_and_intercept_match_a_logistic_fit():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(2)
    p = rng.uniform(0.02, 0.98, 500)
    y = rng.uniform(size=500) < 1 / (1 + np.exp(-0.5 * np.log(p / (1 - p)) - 0.3))
    slope, intercept = M.calibration_slope_intercept(y, p)
    x = np.log(p / (1 - p))
    fit = LogisticRegression(C=np.inf, tol=1e-12, max_iter=1000).fit(x[:, None], y)
    assert slope["estimate"] == pytest.approx(fit.coef_[0, 0], abs=1e-5)
    assert slope["lower"] < 0.5 < slope["upper"]
    # Recalibrated by the fitted line, the probabilities have slope 1 (the MLE's own fixed point).
    recal = 1 / (1 + np.exp(-(fit.intercept_[0] + fit.coef_[0, 0] * x)))
    assert M.calibration_slope_intercept(y, recal)[0]["estimate"] == pytest.approx(1, abs=1e-5)
    assert M.calibration_slope_intercept(y, recal)[1]["estimate"] == pytest.approx(0, abs=1e-3)


def test_calibration_slope_undefined_under_separation_or_one_class():
    slope, intercept = M.calibration_slope_intercept([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9])
    assert slope["estimate"] is None and "separation" in slope["note"]
    assert intercept["estimate"] is not None
    assert M.calibration_slope_intercept([1, 1], [0.4, 0.6])[0]["note"].startswith("only one class")


def test_multiclass_results_carry_calibration_per_class_and_the_new_summaries():
    rng = np.random.default_rng(4)
    y = rng.integers(0, 3, 90)
    p = rng.dirichlet([1, 1, 1], 90)
    m = M.multiclass_metrics(y, p, ["a", "b", "c"])
    for name in ("brier_score", "ece", "calibration_slope", "calibration_intercept"):
        assert name in m["per_class"]["b"]["metrics"]
    assert m["metrics"]["macro_auc"]["lower"] is not None and "DeLong covariance" in m["metrics"]["macro_auc"]["method"]
    assert "top-label" in m["metrics"]["ece"]["method"]
    assert m["per_class"]["a"]["metrics"]["average_precision"]["lower"] is not None
