"""medclf report --level group: one prediction per group (mean or max of its images), by hand."""

import json
import shutil
from fractions import Fraction as F

import pytest

from medclf.cli import main

CLASSES = ["benign", "malignant"]
# (path, group, label, P(malignant)); splits.csv's group column, as partition writes it
IMAGES = [("a1.png", "L1", 1, 0.9), ("a2.png", "L1", 1, 0.5), ("b1.png", "L2", 0, 0.2),
          ("c1.png", "L3", 0, 0.1), ("c2.png", "L3", 0, 0.62), ("c3.png", "L3", 0, 0.08),
          ("d1.png", "L4", 1, 0.6), ("e1.png", "L5", 0, 0.55)]


def make_run(folder, images=IMAGES):
    folder.mkdir()
    rows = ["path,label,label_index,split,group"] + [f"{p},{CLASSES[y]},{y},test,{g}" for p, g, y, _ in images]
    (folder / "splits.csv").write_text("\n".join(rows) + "\n")
    (folder / "config.json").write_text(json.dumps({"arguments": {"splits": str(folder / "splits.csv")},
                                                    "splits_file": str(folder / "splits.csv")}))
    probabilities = [[1 - p, p] for *_, p in images]
    record = {"schema": "medclf.predictions/1", "split": "test", "classes": CLASSES, "positive_class": "malignant",
              "model": {"architecture": "fixture"}, "paths": [p for p, *_ in images], "labels": [y for _, _, y, _ in images],
              "predictions": [int(p > 0.5) for *_, p in images], "probabilities": probabilities, "logits": probabilities}
    (folder / "predictions_test.json").write_text(json.dumps(record))
    return folder


def report(run, *extra):
    return main(["report", "--run", str(run), "--engine", "python", "--no-plots", *extra])


def test_groups_are_scored_on_the_mean_or_the_most_suspicious_image(tmp_path, capsys):
    run = make_run(tmp_path / "run")
    image_level = (run / "predictions_test.json").read_bytes()
    assert report(run) == 0  # per image: 12 of 15 positive-negative pairs ordered
    assert json.loads((run / "results_test.json").read_text())["metrics"]["roc_auc"]["estimate"] == pytest.approx(
        float(F(12, 15)), abs=1e-12)
    assert report(run, "--level", "group") == 0
    derived = json.loads((run / "predictions_test_group-mean.json").read_text())
    assert derived["paths"] == ["L1", "L2", "L3", "L4", "L5"] and derived["labels"] == [1, 0, 0, 1, 0]
    assert derived["probabilities"][2][1] == pytest.approx(float(F(8, 100) + F(62, 100) + F(10, 100)) / 3, abs=1e-12)
    assert derived["level"] == {"unit": "group", "reduce": "mean", "n_images": 8, "n_groups": 5,
                                "derived_from": "predictions_test.json", "quality_gate": None}
    mean = json.loads((run / "results_test_group-mean.json").read_text())
    # groups: positives 0.7, 0.6; negatives 0.2, 4/15, 0.55 -> every pair ordered
    assert mean["n"] == 5 and mean["metrics"]["roc_auc"]["estimate"] == 1.0
    assert mean["level"]["n_groups"] == 5
    assert "8 images in 5 groups" in (run / "report_test_group-mean.md").read_text()
    assert report(run, "--level", "group", "--group-reduce", "max") == 0
    most = json.loads((run / "results_test_group-max.json").read_text())
    # max: positives 0.9, 0.6; negatives 0.2, 0.62, 0.55 -> 5 of 6 pairs
    assert most["metrics"]["roc_auc"]["estimate"] == pytest.approx(float(F(5, 6)), abs=1e-12)
    assert (run / "predictions_test.json").read_bytes() == image_level  # the image level is kept as it was


def test_a_group_with_two_labels_is_refused_by_name(tmp_path, capsys):
    mixed = [*IMAGES[:-1], ("e1.png", "L4", 0, 0.55)]  # L4 now holds a malignant and a benign image
    run = make_run(tmp_path / "run", mixed)
    before = sorted(p.name for p in run.iterdir())
    assert report(run, "--level", "group") == 1
    err = capsys.readouterr().err
    assert "group L4 holds images labelled benign and malignant" in err and "d1.png" in err
    assert sorted(p.name for p in run.iterdir()) == before


def test_group_level_needs_the_runs_split(tmp_path, capsys):
    run = make_run(tmp_path / "run")
    (run / "config.json").unlink()
    assert report(run, "--level", "group") == 1
    assert "no config.json" in capsys.readouterr().err


@pytest.mark.skipif(shutil.which("Rscript") is None, reason="Rscript not installed")
def test_r_scores_the_derived_groups_as_python_does(tmp_path):
    run = make_run(tmp_path / "run")
    assert main(["report", "--run", str(run), "--engine", "rscript", "--no-plots", "--level", "group"]) == 0
    r = json.loads((run / "results_test_group-mean.json").read_text())
    assert report(run, "--level", "group", "--tag", "py") == 0
    py = json.loads((run / "results_test_py.json").read_text())
    assert r["engine"]["name"] == "R"
    for name in ("roc_auc", "sensitivity", "specificity"):
        assert r["metrics"][name]["estimate"] == pytest.approx(py["metrics"][name]["estimate"], abs=1e-9)
