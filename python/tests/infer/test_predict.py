"""medclf test: safe checkpoint loading and the predictions JSON contract."""

import json
import math
import shutil

import pytest
import torch

from medclf import cli
from medclf.core.errors import MedclfError
from medclf.infer.predict import predictions_record, run_test

from splits_files import subset_splits

CONFIG = {"classes": ["no", "yes"], "positive_class": "yes", "architecture": "resnet18"}


@pytest.fixture(scope="module")
def trained_run(brain_partition, tmp_path_factory):
    from medclf.train.training import run_training

    base = tmp_path_factory.mktemp("predict")
    splits = subset_splits(brain_partition, base / "tiny")
    run_training({"splits": str(splits), "img_size": 32, "epochs": 1, "batch_size": 8, "out": str(base),
                  "run_name": "run", "progress": False, "device": "cpu", "threads": 1})
    return base / "run"


def test_softmax_record_hand_values():
    logits = torch.tensor([[0.0, 0.0], [0.0, math.log(3)]])
    record = predictions_record("test", CONFIG, {"epoch": 4}, "best.pt", ["a.jpg", "b.jpg"], [0, 1], logits)
    assert record["probabilities"] == [[1 / 2, 1 / 2], pytest.approx([1 / 4, 3 / 4])]
    assert record["predictions"] == [0, 1]
    assert record["logits"] == [[0.0, 0.0], [0.0, pytest.approx(math.log(3))]]
    assert record["label probabilities"] == [[1.0, 0.0], [0.0, 1.0]]
    assert record["model"] == {"architecture": "resnet18", "checkpoint": "best.pt", "epoch": 4}
    assert record["paths"] == ["a.jpg", "b.jpg"] and record["schema"] == "medclf.predictions/1"


def test_single_logit_is_written_as_two_sigmoid_columns():
    record = predictions_record("val", CONFIG, {"epoch": 1}, "best.pt", ["a", "b"], [1, 0],
                                torch.tensor([[math.log(3)], [-math.log(3)]]))
    assert record["probabilities"] == [pytest.approx([1 / 4, 3 / 4]), pytest.approx([3 / 4, 1 / 4])]
    assert record["predictions"] == [1, 0] and len(record["logits"][0]) == 1


@pytest.mark.slow
def test_best_pt_with_a_pickled_object_is_refused(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    from medclf.models.architectures import build_model

    model, _ = build_model("resnet18", 2, "none")
    torch.save({"state_dict": model.state_dict(), "model": model}, run / "best.pt")
    with pytest.raises(MedclfError) as err:
        run_test(run, progress=False)
    message = str(err.value)
    assert "best.pt" in message and "pickled object" in message and "weights_only=True" in message
    assert cli.main(["test", "--run", str(run), "--no-progress"]) == 1


@pytest.mark.slow
def test_test_writes_test_and_val_with_one_row_per_image(trained_run, tmp_path):
    from medclf.core.splits import read_splits

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    written = run_test(run, "test", progress=False)
    assert [p.name for p in written] == ["predictions_test.json", "predictions_val.json"]
    table = read_splits(json.loads((run / "config.json").read_text())["splits_file"])
    for path in written:
        record = json.loads(path.read_text())
        assert record["paths"] == list(table.rows(record["split"])["path"])
    only_val = run_test(run, "val", progress=False)
    assert [p.name for p in only_val] == ["predictions_val.json"]


@pytest.mark.slow
def test_missing_run_folder_is_a_clear_error(tmp_path):
    with pytest.raises(MedclfError, match="config.json"):
        run_test(tmp_path / "nothing", progress=False)
