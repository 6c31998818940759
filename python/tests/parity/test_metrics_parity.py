"""Parity: Rscript, rpy2 and the pure-Python engine agree to 1e-9 on every number of the
results (estimates, interval bounds, operating points, thresholds, counts)."""

import shutil

import numpy as np
import pytest

from medclf.core import predictions
from medclf.evaluate import r_bridge
from medclf.evaluate import report as R

from prediction_files import (assert_same, binary_probs, four_key_float32_probabilities, normalise_rows, python_results,
                              write_predictions)


def make_cases(tmp_path):
    rng = np.random.default_rng(20261122)
    cases = {}
    # Random binary with informative scores.
    y = rng.integers(0, 2, 150)
    p1 = 1 / (1 + np.exp(-(1.4 * y - 0.7 + rng.normal(0, 1, 150))))
    yv = rng.integers(0, 2, 80)
    pv = 1 / (1 + np.exp(-(1.4 * yv - 0.7 + rng.normal(0, 1, 80))))
    test = write_predictions(tmp_path / "bin_test.json", y, binary_probs(p1), ["no", "yes"], "yes")
    val = write_predictions(tmp_path / "bin_val.json", yv, binary_probs(pv), ["no", "yes"], "yes")
    cases["binary"] = R.build_request(test)
    cases["binary_threshold"] = R.build_request(test, threshold=0.37)
    cases["binary_youden"] = R.build_request(test, val, threshold_rule="youden")
    cases["binary_sens95"] = R.build_request(test, val, threshold_rule="sensitivity:0.95")
    cases["binary_spec90"] = R.build_request(test, val, threshold_rule="specificity:0.9")
    cases["binary_negative_positive"] = R.build_request(test, positive="no")
    # Heavy ties: scores on a 0.1 grid.
    pt = np.round(p1, 1)
    ties = write_predictions(tmp_path / "ties_test.json", y, binary_probs(pt), ["no", "yes"], "yes")
    cases["ties"] = R.build_request(ties)
    # Perfect separation.
    ys = np.array([0] * 12 + [1] * 9)
    sep = write_predictions(tmp_path / "sep_test.json", ys, binary_probs(np.where(ys == 1, 0.8, 0.2) + rng.uniform(-0.1, 0.1, 21)),
                            ["benign", "malignant"], "malignant")
    cases["perfect_separation"] = R.build_request(sep)
    # All one class (every case positive).
    one = write_predictions(tmp_path / "one_test.json", [1] * 15, binary_probs(rng.uniform(0, 1, 15)), ["no", "yes"], "yes")
    cases["all_one_class"] = R.build_request(one)
    # A single positive case (DeLong interval undefined).
    single = write_predictions(tmp_path / "single_test.json", [0] * 10 + [1], binary_probs(rng.uniform(0, 1, 11)),
                               ["no", "yes"], "yes")
    cases["single_positive"] = R.build_request(single)
    # The original four-key file: logits, softmax applied.
    logits = rng.normal(0, 2, (40, 2))
    legacy = write_predictions(tmp_path / "legacy_test.json", rng.integers(0, 2, 40), logits, ["0", "1"], legacy=True)
    cases["legacy_file"] = R.build_request(legacy)
    cases["legacy_output"] = R.build_request(legacy, legacy=True)
    # The four-key file of medclf's python/test_torchvision.py: float32 softmax probabilities (rows sum to 1
    # only to ~1e-7), two and three classes; a threshold rule chosen on it.
    p32 = four_key_float32_probabilities(rng.normal(0, 2, (40, 2)))
    seed002 = write_predictions(tmp_path / "seed002_test.json", rng.integers(0, 2, 40), p32, ["0", "1"], legacy=True)
    cases["four_key_probabilities"] = R.build_request(seed002, threshold=0.3)
    cases["four_key_probabilities_youden"] = R.build_request(seed002, seed002, threshold_rule="youden")
    p3 = four_key_float32_probabilities(rng.normal(0, 2, (45, 3)))
    seed002_3 = write_predictions(tmp_path / "seed002_3_test.json", rng.integers(0, 3, 45), p3, ["0", "1", "2"],
                                  legacy=True)
    cases["four_key_probabilities_3_classes"] = R.build_request(seed002_3)
    # Constant scores: zero-width AUC and kappa intervals, each with its reason.
    const = write_predictions(tmp_path / "const_test.json", [0] * 7 + [1] * 5, binary_probs([0.4] * 12),
                              ["no", "yes"], "yes")
    cases["constant_scores"] = R.build_request(const)
    # A threshold rule applied to the predictions it is then scored on: marked optimistic.
    cases["rule_on_scored_split"] = R.build_request(val, val, threshold_rule="youden")
    # Multi-class, 7 classes like HAM10000, one class absent from the labels.
    classes = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
    ym = rng.choice([0, 1, 2, 4, 5, 6], 220, p=[0.05, 0.1, 0.15, 0.15, 0.45, 0.1])
    raw = rng.gamma(1.0, 1.0, (220, 7))
    raw[np.arange(220), ym] += 2.0
    multi = write_predictions(tmp_path / "multi_test.json", ym, normalise_rows(raw), classes)
    yvm = rng.choice(7, 90)
    rawv = rng.gamma(1.0, 1.0, (90, 7))
    rawv[np.arange(90), yvm] += 2.0
    multi_val = write_predictions(tmp_path / "multi_val.json", yvm, normalise_rows(rawv), classes)
    cases["multiclass"] = R.build_request(multi)
    cases["multiclass_group"] = R.build_request(multi, group="malignant=mel,bcc,akiec")
    cases["multiclass_group_youden"] = R.build_request(multi, multi_val, threshold_rule="youden",
                                                       group="malignant=mel,bcc,akiec")
    cases["multiclass_one_vs_rest"] = R.build_request(multi, positive="mel")
    cases["multiclass_group_of_one"] = R.build_request(multi, group="melanoma=mel")
    cases["multiclass_boot_free"] = R.build_request(multi, positive="df")  # df absent: AUC NA + note
    return cases


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    return make_cases(tmp_path_factory.mktemp("parity"))


@pytest.mark.slow  # one Rscript process per case; the rpy2 test below checks the same R code in-process
@pytest.mark.skipif(shutil.which("Rscript") is None, reason="Rscript not installed")
def test_rscript_matches_python_on_every_number(cases):
    for name, request in cases.items():
        assert_same(r_bridge.run_rscript(R.REPORT_TASK, request), python_results(request), f"{name} (Rscript vs Python)")


def test_rpy2_matches_python_on_every_number(cases):
    with r_bridge.keep_library_path():  # rpy2 would leak R's LD_LIBRARY_PATH into later subprocesses
        pytest.importorskip("rpy2.robjects")
    try:
        first = r_bridge.run_rpy2(R.REPORT_TASK, cases["binary"])
    except r_bridge.EngineUnavailable as exc:
        pytest.skip(f"rpy2 cannot run R here: {exc}")
    assert first["engine"]["name"] == "R"
    for name, request in cases.items():
        assert_same(r_bridge.run_rpy2(R.REPORT_TASK, request), python_results(request), f"{name} (rpy2 vs Python)")


def test_edge_case_conventions_are_reported_not_raised(cases):
    one = python_results(cases["all_one_class"])
    assert one["metrics"]["roc_auc"]["estimate"] is None
    assert "one class" in one["metrics"]["roc_auc"]["note"]
    assert one["metrics"]["specificity"]["estimate"] is None and "0/0" in one["metrics"]["specificity"]["note"]
    assert one["operating_points"] == []
    sep = python_results(cases["perfect_separation"])
    assert sep["metrics"]["roc_auc"]["estimate"] == 1.0
    assert sep["metrics"]["roc_auc"]["lower"] == 1.0 and "perfect" in sep["metrics"]["roc_auc"]["note"]
    single = python_results(cases["single_positive"])
    assert single["metrics"]["roc_auc"]["estimate"] is not None and single["metrics"]["roc_auc"]["lower"] is None
    df = python_results(cases["multiclass_boot_free"])
    assert df["metrics"]["roc_auc"]["estimate"] is None and df["n_positive"] == 0


def test_four_key_files_are_read_by_content_logits_get_softmax_probabilities_do_not(cases):
    """Seed 002 wrote logits under "predictive probabilities", medclf's test_torchvision.py writes
    probabilities there: each kind must end up as the same probabilities (no softmax applied twice)."""
    seed002 = predictions.read_predictions_file(cases["four_key_probabilities"]["predictions_path"])
    data = predictions.validate_predictions(seed002, "seed002")
    assert data["format"] == predictions.FOUR_KEY_PROBABILITIES
    np.testing.assert_array_equal(data["probabilities"], np.asarray(seed002["predictive probabilities"]))
    result = python_results(cases["four_key_probabilities"])
    thresholds = sorted({op["threshold"] for op in result["operating_points"] if op["threshold"] is not None})
    assert set(thresholds) <= {row[1] for row in seed002["predictive probabilities"]}  # observed scores, untouched
    logits_file = predictions.read_predictions_file(cases["legacy_file"]["predictions_path"])
    logits = np.asarray(logits_file["predictive probabilities"])
    data = predictions.validate_predictions(logits_file, "seed002 original")
    assert data["format"] == predictions.FOUR_KEY_LOGITS
    expected = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(data["probabilities"], expected, rtol=0, atol=1e-15)


def test_zero_width_intervals_carry_their_reason(cases):
    const = python_results(cases["constant_scores"])
    auc, kappa = const["metrics"]["roc_auc"], const["metrics"]["cohen_kappa"]
    assert (auc["estimate"], auc["lower"], auc["upper"]) == (1 / 2, 1 / 2, 1 / 2)
    assert auc["note"] == "constant scores: DeLong variance is 0, interval has zero width"
    assert (kappa["estimate"], kappa["lower"], kappa["upper"]) == (0, 0, 0)
    assert kappa["note"] == "a single class in the decisions: kappa variance is 0, interval has zero width"
    one = python_results(cases["all_one_class"])
    assert one["metrics"]["cohen_kappa"]["note"].startswith("a single class in the truth")
    for name, request in cases.items():  # no zero-width interval anywhere without a note
        result = python_results(request)
        if not isinstance(result, dict):  # the --legacy two-array output
            continue
        values = [v for v in result["metrics"].values()]
        values += [v for pc in (result.get("per_class") or {}).values() for v in pc["metrics"].values()]
        for v in values:
            if v["lower"] is not None and v["upper"] is not None and v["upper"] - v["lower"] < 1e-12:
                assert v.get("note"), f"{name}: zero-width interval without a note: {v}"


def test_a_threshold_rule_scored_on_its_own_predictions_is_marked_optimistic(cases):
    assert python_results(cases["rule_on_scored_split"])["threshold_optimistic"] == R.OPTIMISTIC
    assert "optimistic" in R.OPTIMISTIC
    assert python_results(cases["binary_youden"])["threshold_optimistic"] is None
    assert python_results(cases["binary"])["threshold_optimistic"] is None
