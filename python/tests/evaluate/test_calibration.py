"""`medclf calibrate` (medclf.evaluate.calibration): fitted on validation only, standard contract out."""

import json

import numpy as np
import pytest

from medclf.cli import main
from medclf.core.errors import MedclfError
from medclf.evaluate import calibration as K
from medclf.evaluate import metrics as M
from medclf.evaluate.report import validate_predictions


def _overconfident(rng, n, k=3, factor=3.0):
    """Labels drawn from softmax(z); the file holds logits factor * z (too confident)."""
    z = rng.normal(0, 1.2, (n, k))
    true = K.softmax(z)
    labels = (rng.uniform(size=(n, 1)) > np.cumsum(true, axis=1)).sum(axis=1)
    logits = factor * z
    return logits, K.softmax(logits), labels


def _write(path, labels, probs, classes, logits=None):
    obj = {"schema": "medclf.predictions/1", "split": path.stem.split("_")[-1], "classes": classes,
           "positive_class": classes[-1] if len(classes) == 2 else None, "model": {"architecture": "fixture"},
           "labels": [int(v) for v in labels], "paths": [f"i{i}.png" for i in range(len(labels))],
           "predictions": [int(v) for v in np.argmax(probs, axis=1)], "probabilities": np.asarray(probs).tolist()}
    if logits is not None:
        obj["logits"] = np.asarray(logits).tolist()
    path.write_text(json.dumps(obj))


def test_temperature_recovers_the_overconfidence_factor():
    rng = np.random.default_rng(0)
    logits, _, labels = _overconfident(rng, 6000)
    t = K.fit_temperature(logits, labels)["temperature"]
    assert t == pytest.approx(3.0, rel=0.1)
    assert np.array_equal(K.apply_temperature({"temperature": t}, logits).argmax(1), logits.argmax(1))


def test_temperature_from_probabilities_equals_from_logits():
    rng = np.random.default_rng(1)
    logits, p, labels = _overconfident(rng, 500, factor=2.0)
    from_logits = K.fit_temperature(logits, labels)["temperature"]
    from_probs = K.fit_temperature(np.log(p), labels)["temperature"]
    assert from_probs == pytest.approx(from_logits, rel=1e-6)


@pytest.mark.parametrize("method", ["temperature", "platt", "isotonic"])
def test_calibration_lowers_test_ece_and_writes_the_contract(tmp_path, method, capsys):
    rng = np.random.default_rng(2)
    classes = ["akiec", "mel", "nv"]
    lv, pv, yv = _overconfident(rng, 1500)
    lt, pt, yt = _overconfident(rng, 1500)
    _write(tmp_path / "predictions_val.json", yv, pv, classes, lv)
    _write(tmp_path / "predictions_test.json", yt, pt, classes, lt)
    assert main(["calibrate", "--run", str(tmp_path), "--method", method]) == 0
    out = tmp_path / f"calibrated_{method}"
    record = json.loads((out / "predictions_test.json").read_text())
    data = validate_predictions(record, "calibrated")  # the standard contract, strictly read
    assert record["calibration"]["method"] == method
    assert record["calibration"]["fitted_on"].endswith("predictions_val.json")
    before = M.multiclass_metrics(yt, pt, classes)["metrics"]["ece"]["estimate"]
    after = M.multiclass_metrics(yt, data["probabilities"], classes)["metrics"]["ece"]["estimate"]
    assert after < before / 2
    entropy = -(data["probabilities"] * np.log(np.clip(data["probabilities"], 1e-300, 1))).sum(axis=1)
    assert record["uncertainty"]["predictive_entropy"] == pytest.approx(entropy.tolist())  # of the new probabilities
    summary = json.loads((out / "calibration.json").read_text())
    assert summary["schema"] == "medclf.calibration/1" and len(summary["fitted_on_sha256"]) == 64


def test_fit_never_sees_the_test_labels(tmp_path):
    rng = np.random.default_rng(3)
    classes = ["no", "yes"]
    lv, pv, yv = _overconfident(rng, 300, k=2)
    lt, pt, yt = _overconfident(rng, 300, k=2)
    _write(tmp_path / "predictions_val.json", yv, pv, classes, lv)
    _write(tmp_path / "predictions_test.json", yt, pt, classes, lt)
    first = K.run_calibrate(tmp_path, "platt")
    params = json.loads(first[-1].read_text())["parameters"]
    _write(tmp_path / "predictions_test.json", 1 - yt, pt, classes, lt)  # flip every test label
    K.run_calibrate(tmp_path, "platt")
    assert json.loads(first[-1].read_text())["parameters"] == params


def test_isotonic_binary_is_monotone_in_the_score():
    rng = np.random.default_rng(4)
    _, p, y = _overconfident(rng, 800, k=2)
    params = K.fit_isotonic(p, y)
    grid = np.column_stack([1 - np.linspace(0, 1, 101), np.linspace(0, 1, 101)])
    out = K.apply_isotonic(params, grid)[:, 1]
    assert np.all(np.diff(out) >= 0)


def test_legacy_and_missing_files_are_refused(tmp_path):
    with pytest.raises(MedclfError, match="predictions_val.json: not found"):
        K.run_calibrate(tmp_path, "temperature")
    (tmp_path / "predictions_val.json").write_text(json.dumps(
        {"labels": [0, 1], "predictions": [0, 1], "predictive probabilities": [[1, 0], [0, 1]],
         "label probabilities": [[1, 0], [0, 1]]}))
    _write(tmp_path / "predictions_test.json", [0, 1], [[0.9, 0.1], [0.2, 0.8]], ["a", "b"])
    with pytest.raises(MedclfError, match="four-key format"):
        K.run_calibrate(tmp_path, "temperature")
