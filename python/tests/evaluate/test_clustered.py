"""Intervals over groups (medclf.evaluate.clustered): hand-computed cases, the unclustered path
unchanged, and a simulation in which near-copies make image-level intervals undercover."""

import json
from fractions import Fraction as F

import numpy as np
import pytest
from prediction_files import binary_probs, python_results, write_predictions
from scipy.stats import beta, norm

from medclf.evaluate import clustered
from medclf.evaluate import metrics as M
from medclf.evaluate import report as R

# Four groups: G1 two positives, G2 one negative, G3 a positive and a negative, G4 two negatives.
SCORES = np.array([0.9, 0.8, 0.3, 0.4, 0.6, 0.2, 0.1])
TRUTH = np.array([1, 1, 0, 1, 0, 0, 0], dtype=bool)
GROUPS = ["G1", "G1", "G2", "G3", "G3", "G4", "G4"]


def test_obuchowski_auc_by_hand():
    # placements: positives 1, 1, 3/4 (A = 11/12); negatives 1, 2/3, 1, 1. Per group, V10 - m A:
    # 1/6, 0, -1/6, 0 and V01 - n A: 0, 1/12, -1/4, 1/6; I = 4 groups, M = 3, N = 4.
    variance = F(4, 3) * (F(1, 18) / 9 + F(7, 72) / 16 + 2 * F(1, 24) / 12)
    codes = clustered.group_codes(GROUPS)
    got = clustered.auc(TRUTH, SCORES, codes, M.auc_delong(TRUTH, SCORES))
    assert got["estimate"] == pytest.approx(11 / 12, abs=1e-12)
    assert got["lower"] == pytest.approx(11 / 12 - norm.ppf(0.975) * float(variance) ** 0.5, abs=1e-12)
    assert got["upper"] == 1.0 and got["method"] == clustered.METHOD_AUC


def test_korn_graubard_effective_sample_size_by_hand():
    # sensitivity at 0.5: G1 2 of 2, G3 0 of 1 -> p = 2/3, v = 2 ((2 - 4/3)^2 + (2/3)^2) / 9 = 16/81,
    # n_eff = p (1 - p) / v = 9/8, x_eff = 3/4.
    codes = clustered.group_codes(GROUPS)
    called = SCORES >= 0.5
    got = clustered.proportion(called, TRUTH, codes, M.proportion(2, 3, "none"))
    assert got["effective_n"] == pytest.approx(9 / 8, abs=1e-12) and got["groups"] == 2
    assert got["lower"] == pytest.approx(beta.ppf(0.025, 3 / 4, 9 / 8 - 3 / 4 + 1), abs=1e-12)
    assert got["upper"] == pytest.approx(beta.ppf(0.975, 3 / 4 + 1, 9 / 8 - 3 / 4), abs=1e-12)
    # specificity: G2 1 of 1, G3 0 of 1 (0.6 is called positive), G4 2 of 2; G4's two images make it clustered
    spec = clustered.proportion(~called, ~TRUTH, codes, M.proportion(3, 4, "none"))
    assert spec["estimate"] == 3 / 4 and spec["method"] == clustered.METHOD_PROPORTION


def test_one_image_per_group_gives_exactly_todays_numbers(tmp_path):
    rng = np.random.default_rng(5)
    y = rng.random(60) < 0.4
    p = np.clip(0.3 + 0.3 * y + rng.normal(0, 0.2, 60), 0.01, 0.99)
    path = write_predictions(tmp_path / "p_test.json", y.astype(int), binary_probs(p), ["no", "yes"], "yes")
    plain = python_results(R.build_request(path))
    singles = python_results(R.build_request(path, clusters=[f"case{i}" for i in range(60)]))
    assert singles == plain and "clusters" not in singles


def _simulate(rng, lesions=60, copies=3):
    """Lesions with `copies` near-identical images; latent N(+-1/2, 1); called when latent >= 0."""
    y = rng.random(lesions) < 0.4
    latent = rng.normal(np.where(y, 0.5, -0.5), 1.0)
    groups = np.repeat(np.arange(lesions), copies)
    scores = 1 / (1 + np.exp(-(latent[groups] + rng.normal(0, 0.01, lesions * copies))))
    return y[groups], scores, groups


def test_near_copies_make_image_intervals_undercover_and_group_intervals_do_not():
    true_sens = norm.cdf(0.5 / np.sqrt(1 + 1e-4))
    true_auc = norm.cdf(1 / np.sqrt(2 + 2e-4))
    rng = np.random.default_rng(2024)
    covered = {"sens image": 0, "sens group": 0, "auc image": 0, "auc group": 0}
    sims = 300
    for _ in range(sims):
        y, s, groups = _simulate(rng)
        codes = clustered.group_codes(groups)
        called = s >= 0.5
        plain = M.proportion(int((called & y).sum()), int(y.sum()), "none")
        grouped = clustered.proportion(called, y, codes, plain)
        plain_auc = M.auc_delong(y, s)
        grouped_auc = clustered.auc(y, s, codes, plain_auc)
        covered["sens image"] += plain["lower"] <= true_sens <= plain["upper"]
        covered["sens group"] += grouped["lower"] <= true_sens <= grouped["upper"]
        covered["auc image"] += plain_auc["lower"] <= true_auc <= plain_auc["upper"]
        covered["auc group"] += grouped_auc["lower"] <= true_auc <= grouped_auc["upper"]
    rate = {k: v / sims for k, v in covered.items()}
    # three copies of each case: the image-level interval is about 1/sqrt(3) as wide as it should be
    assert rate["sens image"] < 0.85 and rate["auc image"] < 0.85, rate
    assert 0.90 <= rate["sens group"] <= 0.99 and 0.90 <= rate["auc group"] <= 0.99, rate


def test_report_says_images_in_groups_and_names_each_method(tmp_path):
    path = write_predictions(tmp_path / "p_test.json", TRUTH.astype(int), binary_probs(SCORES), ["no", "yes"], "yes")
    result = python_results(R.build_request(path, clusters=GROUPS))
    assert result["clusters"]["n_images"] == 7 and result["clusters"]["n_groups"] == 4
    assert result["metrics"]["roc_auc"]["method"] == clustered.METHOD_AUC
    assert result["metrics"]["cohen_kappa"]["method"] == clustered.METHOD_BOOT
    text = R.markdown_report(json.loads(json.dumps(result)))
    assert "7 images in 4 groups; intervals over groups" in text
    with pytest.raises(Exception, match="3 group names for 7 predictions"):
        python_results(R.build_request(path, clusters=GROUPS[:3]))


def test_group_bootstrap_draws_whole_groups_within_class_strata():
    codes = clustered.group_codes(GROUPS)
    strata = TRUTH.astype(np.int64)  # G1 positive by majority; G2, G3 (ties: the smaller class 0), G4 negative
    counts = clustered.resample_counts(codes, strata, boot_n=50)
    assert counts.shape == (50, len(GROUPS))
    for row in counts:
        for group in set(GROUPS):
            assert len({row[i] for i, g in enumerate(GROUPS) if g == group}) == 1  # a group comes with all its images
        assert row[0] == row[1] == 1  # stratum 1 holds G1 only: drawn once per resample
        assert row[2] + row[3] + row[5] == 3  # stratum 0: three draws among G2, G3 and G4
    assert len({tuple(row) for row in counts}) > 5


def _none_as_nan(value):
    return np.nan if value is None else value


def test_weighted_statistics_equal_the_statistic_on_each_resamples_images():
    """A resample is a row of counts; each statistic weighted by it must equal metrics' own function
    on the list of images the row stands for (ties, absent images, one class absent, separation)."""
    rng = np.random.default_rng(5)
    n = 24
    y = (rng.random(n) < 0.4).astype(np.float64)
    s = np.round(np.clip(0.3 + 0.4 * y + rng.normal(0, 0.2, n), 0.01, 0.99), 1)  # rounded: many ties
    decided = (s >= 0.5).astype(np.int64)
    counts = rng.integers(0, 3, (40, n)).astype(np.float64)
    counts[0] = np.where(y == 0, 1, 0)  # no positive
    counts[1] = 0
    counts[1, [np.argmax(np.where(y == 1, s, -1)), np.argmin(np.where(y == 0, s, 2))]] = 2  # separated
    starts = clustered.calibration_starts(y, s)
    ap = clustered.weighted_average_precision(y, s, counts)
    auc = clustered.weighted_auc(y, s, counts)
    ece = clustered.weighted_ece(y, s, counts)
    kappa = clustered.weighted_kappa(y.astype(np.int64), decided, 2, counts)
    slopes, intercepts = clustered.weighted_calibration(y, s, counts, starts)
    for b, row in enumerate(counts):
        i = np.repeat(np.arange(n), row.astype(np.int64))
        slope, intercept = M.calibration_slope_intercept(y[i], s[i])
        expected = {"ap": M.average_precision(y[i] == 1, s[i])["estimate"], "auc": M.roc_auc(y[i], s[i]),
                    "ece": M.ece_estimate(y[i], s[i]), "slope": slope["estimate"], "intercept": intercept["estimate"],
                    "kappa": M.kappa(M.confusion_table(y[i].astype(np.int64), decided[i], 2))["estimate"]}
        got = {"ap": ap[b], "auc": auc[b], "ece": ece[b], "slope": slopes[b], "intercept": intercepts[b],
               "kappa": kappa[b]}
        for name, value in expected.items():
            np.testing.assert_allclose(got[name], _none_as_nan(value), rtol=0, atol=1e-9, err_msg=f"{name}, row {b}")
    assert np.isnan(ap[0]) and np.isnan(auc[0]) and np.isnan(slopes[0]) and np.isnan(slopes[1])
    assert np.isfinite(intercepts[1])