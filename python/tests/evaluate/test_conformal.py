"""Split conformal prediction sets (medclf.evaluate.conformal, `medclf conformal`)."""

import json

import numpy as np
import pytest
from scipy.stats import binom

from medclf.cli import main
from medclf.core.errors import MedclfError
from medclf.evaluate import conformal as C


def test_scores_by_hand():
    p = np.array([[0.5, 0.3, 0.2]])
    assert C.class_scores(p, "lac")[0] == pytest.approx([1 / 2, 7 / 10, 4 / 5])
    assert C.class_scores(p, "aps")[0] == pytest.approx([1 / 2, 4 / 5, 1])
    assert C.class_scores(p, "raps")[0] == pytest.approx([1 / 2, 4 / 5 + 1 / 100, 1 + 2 / 100])
    # Order does not depend on the column order.
    assert C.class_scores(p[:, ::-1], "aps")[0] == pytest.approx([1, 4 / 5, 1 / 2])


def test_quantile_is_the_finite_sample_rank():
    scores = np.arange(1, 10) / 10  # n = 9
    assert C.conformal_quantile(scores, 0.1) == pytest.approx(9 / 10)  # ceil(10 * 0.9) = 9th
    assert C.conformal_quantile(scores, 0.3) == pytest.approx(7 / 10)  # ceil(10 * 0.7) = 7th
    assert C.conformal_quantile(scores, 0.05) == np.inf  # rank 10 > n: every class in every set


def _exchangeable(rng, n, k=4):
    """Model probabilities and labels drawn from a (different) true distribution: exchangeable."""
    logits = rng.normal(0, 1.5, (n, k))
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    true = np.exp(0.7 * logits) / np.exp(0.7 * logits).sum(axis=1, keepdims=True)
    labels = (rng.uniform(size=(n, 1)) > np.cumsum(true, axis=1)).sum(axis=1)
    return p, labels


@pytest.mark.parametrize("method,mondrian", [("lac", False), ("aps", False), ("raps", False), ("lac", True)])
def test_coverage_over_many_seeds_is_within_the_binomial_interval_of_1_minus_alpha(method, mondrian):
    # One test image per seed, so the covered count over seeds is Binomial(S, P) with
    # 1 - alpha <= P <= 1 - alpha + 1/(n_cal + 1) (per class with mondrian).
    alpha, seeds, n_cal = 0.1, 1500, 199
    covered = 0
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        p, y = _exchangeable(rng, n_cal + 1)
        q = C.calibrate_thresholds(p[:-1], y[:-1], alpha, method, mondrian)
        member, _ = C.prediction_sets(p[-1:], q, method, allow_empty=True)
        covered += bool(member[0, y[-1]])
    n_class_min = 20 if mondrian else n_cal  # the smallest class of 200 still has >= 20 images here
    low = binom.ppf(0.0005, seeds, 1 - alpha)
    high = binom.ppf(0.9995, seeds, 1 - alpha + 1 / (n_class_min + 1))
    assert low <= covered <= high


def test_mondrian_covers_every_class_on_average_over_seeds():
    per_class = np.zeros(4)
    for seed in range(30):
        rng = np.random.default_rng(seed)
        p, y = _exchangeable(rng, 2000)
        q = C.calibrate_thresholds(p[:1000], y[:1000], 0.1, "lac", mondrian=True)
        member, _ = C.prediction_sets(p[1000:], q, "lac")
        summary = C.coverage_summary(member, y[1000:], ["a", "b", "c", "d"])
        per_class += [pc["coverage"]["estimate"] for pc in summary["per_class"].values()]
    assert np.all(per_class / 30 >= 0.885)


def test_sets_are_never_empty_unless_asked():
    p = np.array([[0.4, 0.35, 0.25], [0.9, 0.05, 0.05]])
    q = np.full(3, 0.5)  # lac: class in set when p >= 1/2
    filled, n_empty = C.prediction_sets(p, q, "lac")
    assert n_empty == 1 and filled[0].tolist() == [True, False, False] and filled[1].tolist() == [True, False, False]
    raw, n_empty = C.prediction_sets(p, q, "lac", allow_empty=True)
    assert n_empty == 1 and not raw[0].any()


def _write(path, labels, probs, classes):
    path.write_text(json.dumps({"schema": "medclf.predictions/1", "split": path.stem.split("_")[-1], "classes": classes,
                                "positive_class": None, "labels": [int(v) for v in labels],
                                "paths": [f"i{i}.png" for i in range(len(labels))],
                                "probabilities": np.asarray(probs).tolist()}))


def test_command_writes_sets_and_coverage(tmp_path, capsys):
    rng = np.random.default_rng(3)
    p, y = _exchangeable(rng, 400)
    classes = ["mel", "nv", "bcc", "bkl"]
    _write(tmp_path / "predictions_val.json", y[:200], p[:200], classes)
    _write(tmp_path / "predictions_test.json", y[200:], p[200:], classes)
    assert main(["conformal", "--run", str(tmp_path), "--alpha", "0.1", "--method", "aps", "--mondrian", "class"]) == 0
    out = tmp_path / "conformal_aps_a0.1_mondrian"
    record = json.loads((out / "predictions_test.json").read_text())
    assert len(record["prediction_sets"]) == 200 and all(record["prediction_sets"])
    assert set(record["prediction_sets"][0]) <= set(classes) and record["conformal"]["mondrian"] == "class"
    summary = json.loads((out / "conformal.json").read_text())["summary"]
    covered = sum(classes[t] in s for t, s in zip(record["labels"], record["prediction_sets"]))
    assert summary["coverage"]["estimate"] == pytest.approx(covered / 200)
    assert summary["mean_set_size"] == pytest.approx(np.mean([len(s) for s in record["prediction_sets"]]))


@pytest.mark.parametrize("alpha", [0.0, 1.0, -0.1])
def test_bad_alpha_is_one_clear_error(tmp_path, alpha):
    with pytest.raises(MedclfError, match="strictly between 0 and 1"):
        C.run_conformal(tmp_path, alpha=alpha)


def test_missing_validation_predictions_named(tmp_path):
    with pytest.raises(MedclfError, match="predictions_val.json: not found"):
        C.run_conformal(tmp_path, alpha=0.1)
