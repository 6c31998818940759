"""Report sections from the predictions files: calibration table, threshold variability,
conformal sets and uncertainty (medclf.evaluate.reliability, wired into `medclf report`)."""

import json

import numpy as np
import pytest

from medclf.cli import main
from medclf.evaluate import reliability as Rel


def _write(path, labels, probs, classes, **extra):
    obj = {"schema": "medclf.predictions/1", "split": path.stem.split("_")[-1], "classes": classes,
           "positive_class": classes[-1] if len(classes) == 2 else None, "labels": [int(v) for v in labels],
           "paths": [f"i{i}.png" for i in range(len(labels))], "probabilities": np.asarray(probs).tolist(), **extra}
    path.write_text(json.dumps(obj))


def _binary(rng, n, shift=1.5):
    y = rng.integers(0, 2, n)
    s = 1 / (1 + np.exp(-(shift * (2 * y - 1) + rng.normal(0, 1, n))))
    return y, np.column_stack([1 - s, s])


def test_threshold_variability_shrinks_with_more_validation_images():
    rng = np.random.default_rng(0)
    yt, pt = _binary(rng, 300)
    test = {"is_positive": yt == 1, "score": pt[:, 1]}
    widths = []
    for n in (40, 1000):
        yv, pv = _binary(rng, n)
        tv = Rel.threshold_variability({"is_positive": yv == 1, "score": pv[:, 1]}, test, "sensitivity:0.9", boot_n=200)
        assert tv["threshold"]["lower"] <= tv["threshold"]["median"] <= tv["threshold"]["upper"]
        widths.append(tv["threshold"]["upper"] - tv["threshold"]["lower"])
    assert widths[1] < widths[0] / 2


def test_threshold_variability_counts_undecided_resamples():
    val = {"is_positive": np.array([True] + [False] * 9), "score": np.linspace(0, 1, 10)}
    test = {"is_positive": np.array([True, False]), "score": np.array([0.9, 0.1])}
    tv = Rel.threshold_variability(val, test, "youden", boot_n=100)
    # A resample misses the single positive with probability (9/10)^10 = 0.35.
    assert 15 <= tv["n_undecided"] <= 55


def test_report_shows_calibration_conformal_uncertainty_and_threshold_variability(tmp_path):
    rng = np.random.default_rng(1)
    yv, pv = _binary(rng, 120)
    yt, pt = _binary(rng, 150)
    entropy = (-(pt * np.log(pt)).sum(axis=1)).tolist()
    sets = [["no", "yes"] if abs(p - 0.5) < 0.2 else [["no", "yes"][int(p >= 0.5)]] for p in pt[:, 1]]
    _write(tmp_path / "predictions_val.json", yv, pv, ["no", "yes"])
    _write(tmp_path / "predictions_test.json", yt, pt, ["no", "yes"], prediction_sets=sets,
           conformal={"method": "lac", "alpha": 0.1, "mondrian": None, "empty_sets": 0,
                      "empty_sets_filled_with_top_class": False},
           uncertainty={"method": "softmax", "samples": None, "members": None, "predictive_entropy": entropy,
                        "expected_entropy": None, "mutual_information": None})
    assert main(["report", "--run", str(tmp_path), "--threshold-rule", "youden", "--engine", "python", "--no-plots"]) == 0
    result = json.loads((tmp_path / "results_test.json").read_text())
    rel = result["reliability"]
    covered = np.mean([["no", "yes"][t] in s for t, s in zip(yt, sets)])
    assert rel["conformal"]["coverage"]["estimate"] == pytest.approx(covered)
    assert rel["uncertainty"]["by"]["predictive_entropy"]["rejection"][0]["n_kept"] == 150
    assert rel["threshold_variability"]["rule"] == "youden"
    text = (tmp_path / "report_test.md").read_text()
    for heading in ("## Calibration (one-vs-rest", "## Threshold variability", "## Conformal prediction sets",
                    "## Uncertainty and selective prediction"):
        assert heading in text
    assert "calibration_slope" in result["metrics"] and "ece" in result["per_class"]["yes"]["metrics"]


def test_macro_auc_stratified_bootstrap_agrees_with_the_delong_interval():
    from medclf.evaluate import metrics as M

    rng = np.random.default_rng(5)
    y = rng.choice(4, 600, p=[0.5, 0.3, 0.15, 0.05])
    logits = rng.normal(0, 1, (600, 4))
    logits[np.arange(600), y] += 1.0
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    boot = Rel.macro_auc_stratified_bootstrap(y, p, 400, 3)
    delong = M.macro_auc_delong(y, p)
    assert boot["lower"] < delong["estimate"] < boot["upper"]
    assert (boot["upper"] - boot["lower"]) == pytest.approx(delong["upper"] - delong["lower"], rel=0.25)
    assert "stratified" in boot["method"]
