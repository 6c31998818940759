"""Decision curves (medclf.evaluate.decision_curve): net benefit by hand in fractions, against the
definition counted case by case in exact fractions, bands over groups, and the report's section and
options. (The dcurves package cannot be the oracle here: its lifelines dependency needs pandas < 3.)"""

import json
from fractions import Fraction as F

import numpy as np
import pytest
from prediction_files import binary_probs, python_results, write_predictions

from medclf.core.errors import MedclfError
from medclf.evaluate import decision_curve as D
from medclf.evaluate import report as R

# Two positives (0.9, 0.4) and three negatives (0.6, 0.2, 0.1).
TRUTH = np.array([1, 1, 0, 0, 0])
SCORES = np.array([0.9, 0.4, 0.6, 0.2, 0.1])


def _at(curve, threshold, series="model"):
    values = curve[series]["estimate"] if series == "model" else curve[series]
    return values[curve["thresholds"].index(threshold)]


def test_net_benefit_by_hand():
    curve = D.decision_curve(TRUTH, SCORES)
    assert curve["prevalence"] == {"value": 2 / 5, "source": "test split"}
    # pt 0.3: 0.9, 0.6, 0.4 called positive: TP 2, FP 1 of 5; odds 3/7
    assert _at(curve, 0.3) == pytest.approx(float(F(2, 5) - F(1, 5) * F(3, 7)), abs=1e-12)  # 11/35
    assert _at(curve, 0.3, "treat_all") == pytest.approx(float(F(2, 5) - F(3, 5) * F(3, 7)), abs=1e-12)  # 1/7
    # pt 0.1: everyone called positive, so the model is treat all: 2/5 - 3/5 * 1/9 = 1/3
    assert _at(curve, 0.1) == _at(curve, 0.1, "treat_all") == pytest.approx(1 / 3, abs=1e-12)
    # pt 0.5: TP 1, FP 1: 1/5 - 1/5 * 1 = 0
    assert _at(curve, 0.5) == pytest.approx(0, abs=1e-12)
    assert curve["treat_none"] == 0 and len(curve["thresholds"]) == 100 and curve["thresholds"][-1] == 0.99
    # beats treat all and treat none while it calls fewer negatives and the net benefit stays above 0:
    # (0.1, 0.5) (at 0.5: 1/5 - 1/5 = 0) and (0.6, 0.9] (0.9 alone: 1/5); nothing called above 0.9
    assert curve["useful_ranges"] == [[0.11, 0.49], [0.61, 0.9]]


def test_a_given_prevalence_reweights_sensitivity_and_specificity():
    curve = D.decision_curve(TRUTH, SCORES, prevalence=0.1)
    assert curve["prevalence"] == {"value": 0.1, "source": "given"}
    # pt 0.3: sensitivity 1, 1 - specificity 1/3: 1 * 1/10 - 1/3 * 9/10 * 3/7 = -1/35
    assert _at(curve, 0.3) == pytest.approx(float(F(1, 10) - F(1, 3) * F(9, 10) * F(3, 7)), abs=1e-12)
    assert _at(curve, 0.3, "treat_all") == pytest.approx(float(F(1, 10) - F(9, 10) * F(3, 7)), abs=1e-12)


def test_one_class_absent_gives_no_curve():
    assert D.decision_curve(np.ones(4), np.linspace(0.2, 0.8, 4)) is None


def _by_definition(y, p, k, prevalence=None):
    """Net benefit at pt = k/100 from Vickers & Elkin's definition, counted case by case and summed
    in exact fractions (the implementation works on count matrices in floating point)."""
    pt = F(k, 100)
    called = [score >= k / 100 for score in p]
    tp = sum(1 for c, t in zip(called, y) if c and t)
    fp = sum(1 for c, t in zip(called, y) if c and not t)
    positives, n = int(sum(y)), len(y)
    if prevalence is None:
        return F(tp, n) - F(fp, n) * pt / (1 - pt)
    return F(tp, positives) * prevalence - F(fp, n - positives) * (1 - prevalence) * pt / (1 - pt)


def test_agrees_with_the_definition_at_every_threshold():
    rng = np.random.default_rng(3)
    y = (rng.random(300) < 0.3).astype(int)
    p = np.round(1 / (1 + np.exp(-(1.6 * y - 1.2 + rng.normal(0, 1, 300)))), 2)  # rounded: ties at thresholds
    for prevalence in (None, F(15, 100)):
        curve = D.decision_curve(y, p, prevalence=None if prevalence is None else float(prevalence))
        pi = F(int(y.sum()), len(y)) if prevalence is None else prevalence
        for k in range(100):
            odds = F(k, 100) / (1 - F(k, 100))
            assert curve["model"]["estimate"][k] == pytest.approx(float(_by_definition(y, p, k, prevalence)), abs=1e-12)
            assert curve["treat_all"][k] == pytest.approx(float(pi - (1 - pi) * odds), abs=1e-12)


def test_the_band_counts_groups_not_copies():
    """Each case photographed three times: the images add no information, and the band over groups
    is about sqrt(3) times wider than a band that counts the copies as cases."""
    rng = np.random.default_rng(8)
    y = (rng.random(80) < 0.4).astype(int)
    s = 1 / (1 + np.exp(-(1.5 * y - 0.8 + rng.normal(0, 1, 80))))
    copies_y, copies_s, groups = np.repeat(y, 3), np.repeat(s, 3), np.repeat(np.arange(80), 3)
    grouped = D.decision_curve(copies_y, copies_s, codes=groups)
    images = D.decision_curve(copies_y, copies_s)
    assert grouped["model"]["estimate"] == images["model"]["estimate"]
    assert grouped["bootstrap"]["over"] == "groups within class strata"
    assert images["bootstrap"]["over"] == "images within class strata"
    width = {name: np.mean(np.subtract(c["model"]["upper"], c["model"]["lower"])[5:60])
             for name, c in (("grouped", grouped), ("images", images))}
    assert 1.4 < width["grouped"] / width["images"] < 2.2
    lower, est, upper = (np.asarray(grouped["model"][k]) for k in ("lower", "estimate", "upper"))
    assert np.mean((lower <= est) & (est <= upper)) > 0.9


def test_report_has_the_section_and_refuses_a_bad_prevalence(tmp_path):
    path = write_predictions(tmp_path / "p_test.json", TRUTH, binary_probs(SCORES), ["no", "yes"], "yes")
    result = python_results(R.build_request(path))
    assert result["decision_curve"]["prevalence"]["source"] == "test split"
    text = R.markdown_report(json.loads(json.dumps(result)))
    assert "## Decision curve (clinical utility)" in text and "| 0.30 | 31.4 |" in text  # 100 * 11/35
    for bad in (0, 1, 1.5, "x"):
        with pytest.raises(MedclfError, match="prevalence"):
            python_results(R.build_request(path, prevalence=bad))
    one_class = write_predictions(tmp_path / "o_test.json", [1, 1], binary_probs([0.3, 0.8]), ["no", "yes"], "yes")
    assert python_results(R.build_request(one_class))["decision_curve"] is None
    with pytest.raises(MedclfError, match="prevalence"):  # refused also where no curve is drawn (R did not)
        python_results(R.build_request(one_class, prevalence=1.5))
    multi = write_predictions(tmp_path / "m_test.json", [0, 1, 2], np.eye(3) * 0.7 + 0.1, ["a", "b", "c"])
    assert "decision_curve" not in python_results(R.build_request(multi))
    with pytest.raises(MedclfError, match="needs a binary task"):
        python_results(R.build_request(multi, prevalence=0.2))
