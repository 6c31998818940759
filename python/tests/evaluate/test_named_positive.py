"""Issue 8 item 2: a binary study's positive class is named, never guessed from the class order."""

import json

import numpy as np
import pytest
from PIL import Image

from medclf.cli import main
from medclf.core.errors import MedclfError
from medclf.core.fileio import read_json, write_json
from medclf.core.splits import named_positive

TRAIN = ["--img-size", "32", "--epochs", "1", "--threads", "1", "--weights", "none", "--batch-size", "8",
         "--device", "cpu", "--no-progress"]


def _lesions(root):
    """HAM-like labels in class folders: mel (6), nv (6), bkl (4) noise images."""
    seed = 0
    for name, n in (("mel", 6), ("nv", 6), ("bkl", 4)):
        (root / name).mkdir(parents=True)
        for i in range(n):
            seed += 1
            rng = np.random.default_rng(seed)
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(root / name / f"{name}{i}.png")
    return root


@pytest.fixture(scope="module")
def melanoma_run(tmp_path_factory):
    """The issue's reproduction: --label-map 'mel=melanoma,*=other' without --positive, trained and tested."""
    base = tmp_path_factory.mktemp("positive")
    data = _lesions(base / "data")
    assert main(["partition", "--data-root", str(data), "--out", str(base / "p"), "--label-map",
                 "mel=melanoma,*=other", "--val", "0.25", "--test", "0.25", "--quiet"]) == 0
    info = read_json(base / "p" / "partition.json")
    assert info["classes"] == ["melanoma", "other"] and info["positive_class"] is None
    assert main(["train", "--splits", str(base / "p" / "splits.csv"), "--out", str(base), "--run-name", "r",
                 *TRAIN]) == 0
    assert main(["test", "--run", str(base / "r"), "--no-progress"]) == 0
    return base


@pytest.mark.slow
def test_report_refuses_an_unnamed_positive_and_scores_the_named_one(melanoma_run, capsys):
    run = melanoma_run / "r"
    capsys.readouterr()
    assert main(["report", "--run", str(run), "--engine", "python", "--no-plots"]) == 1
    err = capsys.readouterr().err.strip()
    assert "predictions_test.json: binary study (melanoma vs other) without a named positive class" in err
    assert "--positive" in err and len(err.splitlines()) == 1
    assert not (run / "results_test.json").exists()
    assert main(["report", "--run", str(run), "--engine", "python", "--no-plots", "--positive", "melanoma"]) == 0
    result = read_json(run / "results_test.json")
    assert result["positive_class"] == "melanoma" and result["negative_class"] == "other"
    truth = json.loads((run / "predictions_test.json").read_text())["labels"]
    assert result["n_positive"] == truth.count(0)  # melanoma is class index 0


@pytest.mark.slow
def test_compare_refuses_an_unnamed_positive(melanoma_run, tmp_path, capsys):
    run = melanoma_run / "r"
    other = tmp_path / "copy.json"
    other.write_bytes((run / "predictions_test.json").read_bytes())
    capsys.readouterr()
    assert main(["compare", str(run / "predictions_test.json"), str(other), "--engine", "python"]) == 1
    assert "without a named positive class" in capsys.readouterr().err
    assert main(["compare", str(run / "predictions_test.json"), str(other), "--engine", "python",
                 "--positive", "melanoma", "--out", str(tmp_path)]) == 0
    assert read_json(tmp_path / "compare.json")["positive_class"] == "melanoma"


@pytest.mark.slow
def test_single_logit_training_refuses_an_unnamed_positive(melanoma_run, capsys):
    capsys.readouterr()
    assert main(["train", "--splits", str(melanoma_run / "p" / "splits.csv"), "--out", str(melanoma_run),
                 "--run-name", "single", "--head", "single-logit", *TRAIN]) == 1
    err = capsys.readouterr().err
    assert "binary study (melanoma vs other) without a named positive class" in err and "--positive" in err
    assert not (melanoma_run / "single" / "best.pt").exists()


def test_no_yes_convention_still_names_yes(tmp_path):
    assert named_positive(["no", "yes"], None, "x") == "yes"
    assert named_positive(["yes", "no"], None, "x") == "yes"  # by name, not by position
    assert named_positive(["melanoma", "other"], "melanoma", "x") == "melanoma"
    assert named_positive(["a", "b", "c"], None, "x") is None  # multi-class: scored per class
    with pytest.raises(MedclfError, match="x: positive class 'bird' is not one of the classes"):
        named_positive(["cat", "dog"], "bird", "x")


def test_report_on_no_yes_predictions_without_positive_class_uses_yes(tmp_path):
    """Predictions whose positive_class is null still report yes when the classes are no/yes, in
    either order: the convention is by name."""
    record = {"schema": "medclf.predictions/1", "split": "test", "classes": ["yes", "no"], "positive_class": None,
              "labels": [0, 0, 1, 1], "probabilities": [[3 / 4, 1 / 4], [1 / 4, 3 / 4], [1 / 4, 3 / 4], [1 / 2, 1 / 2]]}
    run = tmp_path / "run"
    write_json(run / "predictions_test.json", record)
    assert main(["report", "--run", str(run), "--engine", "python", "--no-plots"]) == 0
    result = read_json(run / "results_test.json")
    assert result["positive_class"] == "yes" and result["confusion_matrix"] == {"tp": 1, "fn": 1, "tn": 1, "fp": 1}
