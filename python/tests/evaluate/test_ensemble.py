"""medclf ensemble: mean, weighted (fitted on validation only) and rank ensembles of hand-made
predictions files, joined by path; the output is a predictions file report, compare and R read."""

import json
import shutil

import numpy as np
import pytest

from medclf import cli
from medclf.core.errors import MedclfError
from medclf.evaluate import ensemble
from medclf.evaluate.report import report_run

PATHS = ["no/n1.png", "no/n2.png", "yes/y1.png", "yes/y2.png"]
LABELS = [0, 0, 1, 1]


def write_predictions(folder, split, positive_probs, paths=PATHS, labels=LABELS, classes=("no", "yes")):
    """A medclf.predictions/1 file of a binary run: P(yes) per image."""
    folder.mkdir(parents=True, exist_ok=True)
    probs = [[1 - p, p] for p in positive_probs]
    record = {"schema": "medclf.predictions/1", "split": split, "classes": list(classes), "positive_class": "yes",
              "model": {"architecture": "resnet18", "checkpoint": "best.pt", "epoch": 3},
              "paths": list(paths), "labels": list(labels), "predictions": [int(p >= 0.5) for p in positive_probs],
              "probabilities": probs, "predictive probabilities": probs,
              "label probabilities": [[1.0 - y, float(y)] for y in labels]}
    path = folder / f"predictions_{split}.json"
    path.write_text(json.dumps(record))
    return path


def read(path):
    return json.loads(path.read_text())


def test_mean_joins_members_by_path_and_averages_probabilities(tmp_path):
    write_predictions(tmp_path / "a", "test", [1 / 4, 1 / 2, 3 / 4, 1])
    # b lists the same images in another order
    write_predictions(tmp_path / "b", "test", [1 / 2, 0, 1 / 4, 1 / 2], paths=PATHS[::-1], labels=LABELS[::-1])
    ensemble.run_ensemble([tmp_path / "a", tmp_path / "b"], "mean", out_dir=tmp_path / "ens")
    out = read(tmp_path / "ens" / "predictions_test.json")
    assert out["paths"] == PATHS and out["labels"] == LABELS
    # b in PATHS order: 1/2, 1/4, 0, 1/2
    assert np.allclose([p[1] for p in out["probabilities"]], [3 / 8, 3 / 8, 3 / 8, 3 / 4])
    assert out["predictions"] == [0, 0, 0, 1]
    assert [m["weight"] for m in out["model"]["members"]] == [1 / 2, 1 / 2]
    assert out["model"]["calibrated"] is True and out["uncertainty"]["method"] == "ensemble"
    provenance = read(tmp_path / "ens" / "ensemble.json")
    assert provenance["schema"] == "medclf.ensemble/1" and len(provenance["members"][0]["sha256"]) == 64


@pytest.mark.parametrize("method", ["mean", "weighted"])
def test_ensemble_of_one_member_equals_that_member(tmp_path, method):
    member = write_predictions(tmp_path / "run", "test", [0.2, 0.7, 0.6, 0.9])
    write_predictions(tmp_path / "run", "val", [0.1, 0.4, 0.8, 0.7])
    ensemble.run_ensemble([tmp_path / "run"], method, out_dir=tmp_path / "ens")
    alone, combined = read(member), read(tmp_path / "ens" / "predictions_test.json")
    for key in ("paths", "labels", "predictions", "probabilities", "classes", "positive_class", "split"):
        assert combined[key] == alone[key], key
    scores = [report_run(folder, engine="python", plots=False)["result"]["metrics"]
              for folder in (tmp_path / "run", tmp_path / "ens")]
    assert scores[0] == scores[1]


def test_weighted_fit_reads_validation_predictions_only(tmp_path, monkeypatch):
    # member a is right on validation, b is a coin: the weights go to a
    for name, val in (("a", [0.1, 0.1, 0.9, 0.9]), ("b", [0.5, 0.5, 0.5, 0.5])):
        write_predictions(tmp_path / name, "val", val)
        write_predictions(tmp_path / name, "test", [0.3, 0.6, 0.4, 0.8])
    seen = []
    real_fit = ensemble.fit_weights

    def spy(stack, labels):
        seen.append((np.array(stack), np.array(labels)))
        return real_fit(stack, labels)

    monkeypatch.setattr(ensemble, "fit_weights", spy)
    ensemble.run_ensemble([tmp_path / "a", tmp_path / "b"], "weighted", out_dir=tmp_path / "ens")
    (stack, labels), = seen
    assert labels.tolist() == LABELS and np.allclose(stack[:, :, 1], [[0.1, 0.1, 0.9, 0.9], [0.5] * 4])  # val, not test
    weights = [m["weight"] for m in read(tmp_path / "ens" / "predictions_test.json")["model"]["members"]]
    assert weights[0] > 0.99 and abs(sum(weights) - 1) < 1e-12
    # test labels changed: the same weights
    for name in ("a", "b"):
        path = tmp_path / name / "predictions_test.json"
        record = read(path)
        record["labels"] = [1, 1, 0, 0]
        path.write_text(json.dumps(record))
    ensemble.run_ensemble([tmp_path / "a", tmp_path / "b"], "weighted", out_dir=tmp_path / "ens2")
    again = [m["weight"] for m in read(tmp_path / "ens2" / "predictions_test.json")["model"]["members"]]
    assert again == weights
    # the ensemble's own validation predictions are written too, for threshold rules
    assert read(tmp_path / "ens" / "predictions_val.json")["split"] == "val"


def test_given_weights_are_normalised(tmp_path):
    write_predictions(tmp_path / "a", "test", [0, 0, 1, 1])
    write_predictions(tmp_path / "b", "test", [1, 1, 0, 0])
    assert cli.main(["ensemble", str(tmp_path / "a"), str(tmp_path / "b"), "--method", "weighted",
                     "--weights", "3", "1", "--out", str(tmp_path / "ens")]) == 0
    out = read(tmp_path / "ens" / "predictions_test.json")
    assert np.allclose([p[1] for p in out["probabilities"]], [1 / 4, 1 / 4, 3 / 4, 3 / 4])


def test_rank_average_of_hand_scores_is_marked_uncalibrated_and_refused_by_report(tmp_path):
    write_predictions(tmp_path / "a", "test", [0.1, 0.4, 0.35, 0.8])   # ranks 1 3 2 4
    write_predictions(tmp_path / "b", "test", [0.2, 0.1, 0.9, 0.7])    # ranks 2 1 4 3
    ensemble.run_ensemble([tmp_path / "a", tmp_path / "b"], "rank", out_dir=tmp_path / "ens")
    out = read(tmp_path / "ens" / "predictions_test.json")
    assert np.allclose([p[1] for p in out["probabilities"]], [1 / 4, 3 / 8, 5 / 8, 3 / 4])  # mean of (rank - 1/2) / 4
    assert out["model"]["calibrated"] is False and "not calibrated" in out["model"]["note"]
    with pytest.raises(MedclfError, match="--allow-uncalibrated"):
        report_run(tmp_path / "ens", engine="python", plots=False)
    assert not (tmp_path / "ens" / "results_test.json").exists()
    result = report_run(tmp_path / "ens", engine="python", plots=False, allow_uncalibrated=True)["result"]
    assert result["metrics"]["roc_auc"]["estimate"] == 1.0 and "not calibrated" in result["uncalibrated_scores"]


def test_rank_of_one_member_keeps_its_auc(tmp_path):
    write_predictions(tmp_path / "a", "test", [0.1, 0.6, 0.35, 0.8])
    ensemble.run_ensemble([tmp_path / "a"], "rank", out_dir=tmp_path / "ens")
    aucs = [report_run(d, engine="python", plots=False, allow_uncalibrated=True)["result"]["metrics"]["roc_auc"]
            for d in (tmp_path / "a", tmp_path / "ens")]
    assert aucs[0]["estimate"] == aucs[1]["estimate"] == 3 / 4


def test_members_of_other_images_are_refused_naming_the_paths(tmp_path, capsys):
    write_predictions(tmp_path / "a", "test", [0.1, 0.2, 0.8, 0.9])
    write_predictions(tmp_path / "b", "test", [0.1, 0.2, 0.8], paths=PATHS[:3], labels=LABELS[:3])
    assert cli.main(["ensemble", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "ens")]) == 1
    err = capsys.readouterr().err
    assert "lacks 1 image(s)" in err and "'yes/y2.png'" in err and "Traceback" not in err
    assert not (tmp_path / "ens").exists()


@pytest.mark.parametrize("argv, message", [
    (["--weights", "1", "1"], "--weights only goes with --method weighted"),
    (["--method", "weighted", "--weights", "1"], "1 weight(s) for 2 members"),
    (["--method", "weighted"], "predictions_val.json: not found"),
    (["--split", "val"], "predictions_val.json: not found"),
])
def test_bad_ensemble_requests_are_refused(tmp_path, capsys, argv, message):
    write_predictions(tmp_path / "a", "test", [0.1, 0.2, 0.8, 0.9])
    write_predictions(tmp_path / "b", "test", [0.3, 0.2, 0.6, 0.9])
    assert cli.main(["ensemble", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "e"), *argv]) == 1
    assert message in capsys.readouterr().err


def test_rank_needs_two_classes(tmp_path):
    three = dict(classes=("a", "b", "c"))
    for name in ("x", "y"):
        folder = tmp_path / name
        folder.mkdir()
        probs = [[0.5, 0.25, 0.25]] * 4
        (folder / "predictions_test.json").write_text(json.dumps({
            "schema": "medclf.predictions/1", "split": "test", "classes": list(three["classes"]),
            "positive_class": None, "paths": PATHS, "labels": [0, 1, 2, 0], "probabilities": probs}))
    with pytest.raises(MedclfError, match="rank averaging keeps an order for two classes only"):
        ensemble.run_ensemble([tmp_path / "x", tmp_path / "y"], "rank", out_dir=tmp_path / "e")


@pytest.mark.skipif(shutil.which("Rscript") is None, reason="Rscript not installed")
def test_the_r_report_reads_an_ensemble_unchanged(tmp_path):
    write_predictions(tmp_path / "a", "test", [0.1, 0.6, 0.35, 0.8])
    write_predictions(tmp_path / "b", "test", [0.3, 0.2, 0.6, 0.9])
    ensemble.run_ensemble([tmp_path / "a", tmp_path / "b"], "mean", out_dir=tmp_path / "ens")
    r = report_run(tmp_path / "ens", engine="rscript", plots=False)["result"]
    python = report_run(tmp_path / "ens", engine="python", plots=False)["result"]
    assert r["engine"]["route"] == "Rscript" and r["model"]["method"] == "mean"
    for name in ("roc_auc", "sensitivity", "specificity", "cohen_kappa"):
        assert r["metrics"][name]["estimate"] == pytest.approx(python["metrics"][name]["estimate"], abs=1e-9)
