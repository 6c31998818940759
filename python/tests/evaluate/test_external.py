"""Internal against external validation (medclf.evaluate.external): the AUC difference of two
independent test sets by hand, and the recalibration hint."""

import math

import pytest
from scipy.stats import norm

from medclf.evaluate import external as E

Z = norm.ppf(0.975)


def auc(estimate, lower, upper):
    return {"estimate": estimate, "lower": lower, "upper": upper, "method": "DeLong"}


def test_the_difference_of_two_independent_aucs_by_hand():
    # internal 0.8 (0.7 to 0.9): SE 1/10 / z; external 0.7 (0.55 to 0.85): SE 3/20 / z
    test = E.auc_difference(auc(0.8, 0.7, 0.9), auc(0.7, 0.55, 0.85))
    half = math.sqrt(13) / 20  # z * sqrt((1/10)^2 + (3/20)^2) / z
    d = test["difference"]
    assert (d["estimate"], d["lower"], d["upper"]) == pytest.approx((-0.1, -0.1 - half, -0.1 + half), abs=1e-12)
    assert test["z"] == pytest.approx(-0.1 / (half / Z), abs=1e-12)
    assert test["p_value"] == pytest.approx(2 * norm.sf(0.1 / (half / Z)), abs=1e-12)
    undefined = E.auc_difference(auc(0.8, 0.7, 0.9), auc(None, None, None))
    assert undefined["difference"]["estimate"] is None and undefined["p_value"] is None


def test_recalibration_hint_only_when_an_interval_excludes_perfect_calibration():
    fine = {"calibration_slope": auc(0.9, 0.7, 1.1), "calibration_intercept": auc(0.1, -0.2, 0.4)}
    assert E.recalibration_hint(fine) is None
    steep = {"calibration_slope": auc(0.6, 0.4, 0.8), "calibration_intercept": auc(0.1, -0.2, 0.4)}
    assert E.recalibration_hint(steep).startswith("calibration slope 0.60 (0.40 to 0.80) excludes 1: the risks are "
                                                  "too extreme there. Recalibrate")
    shifted = {"calibration_slope": auc(1.0, 0.8, 1.2), "calibration_intercept": auc(-0.7, -1.0, -0.4)}
    assert "intercept -0.70 excludes 0: the risks are too high on average" in E.recalibration_hint(shifted)
