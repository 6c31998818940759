"""Per-image uncertainty, MC dropout (`medclf test --mc-dropout K`) and risk-coverage."""

import json
import math

import numpy as np
import pytest
import torch

from medclf import cli
from medclf.core.errors import MedclfError
from medclf.engine.steps import FP32_CPU
from medclf.evaluate import uncertainty as U
from medclf.infer.predict import mc_dropout_samples, run_test

from splits_files import subset_splits
from test_predict import trained_run  # noqa: F401  (a resnet18 run: no dropout)


def test_entropy_and_mutual_information_by_hand():
    samples = np.array([[[1.0, 0.0]], [[0.0, 1.0]]])  # two passes that disagree completely
    mean, m = U.sample_uncertainty(samples)
    assert mean.tolist() == [[0.5, 0.5]]
    assert m["predictive_entropy"] == [pytest.approx(math.log(2))]
    assert m["expected_entropy"] == [0.0] and m["mutual_information"] == [pytest.approx(math.log(2))]
    agree = U.sample_uncertainty(np.array([[[0.5, 0.5]], [[0.5, 0.5]]]))[1]
    assert agree["mutual_information"] == [pytest.approx(0.0)]  # aleatoric only


def test_risk_coverage_by_hand_with_ties():
    rc = U.risk_coverage([1, 1, 0, 1], [0.1, 0.2, 0.3, 0.4])
    assert rc["coverage"] == [1 / 4, 2 / 4, 3 / 4, 1] and rc["risk"] == pytest.approx([0, 0, 1 / 3, 1 / 4])
    assert rc["aurc"] == pytest.approx((0 + 0 + 1 / 3 + 1 / 4) / 4)
    tied = U.risk_coverage([0, 1, 1, 1], [0.1, 0.1, 0.3, 0.4])  # the first two are kept together
    assert tied["coverage"] == [2 / 4, 3 / 4, 1] and tied["risk"] == pytest.approx([1 / 2, 1 / 3, 1 / 4])


def test_rejection_table_keeps_the_most_certain():
    labels = np.array([0, 1, 0, 1])
    p = np.array([[0.9, 0.1], [0.2, 0.8], [0.4, 0.6], [0.45, 0.55]])
    rows = U.rejection_table(labels, p, U.entropy(p), fractions=(0.0, 0.5))
    assert rows[0]["accuracy"] == 3 / 4 and rows[1] == {"rejected": 0.5, "n_kept": 2, "accuracy": 1.0, "auc": 1.0}


def test_mc_dropout_varies_passes_and_keeps_batch_norm_in_eval():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 16), torch.nn.BatchNorm1d(16),
                                torch.nn.Dropout(0.5), torch.nn.Linear(16, 3))
    model.eval()
    before = model[2].running_mean.clone()
    loader = [(torch.randn(5, 3, 2, 2), torch.zeros(5, dtype=torch.long))]
    samples = mc_dropout_samples(model, loader, FP32_CPU, passes=6)
    assert samples.shape == (6, 5, 3) and np.allclose(samples.sum(axis=2), 1)
    assert not np.allclose(samples[0], samples[1])  # dropout was on
    assert torch.equal(model[2].running_mean, before) and not model.training and not model[3].training
    again = mc_dropout_samples(model, loader, FP32_CPU, passes=6)
    assert np.array_equal(samples, again)  # seeded


@pytest.mark.slow
def test_mc_dropout_on_an_architecture_without_dropout_is_one_clear_error(trained_run):  # noqa: F811
    with pytest.raises(MedclfError, match="resnet18 has none with p > 0"):
        run_test(trained_run, progress=False, device="cpu", mc_dropout=4)
    assert cli.main(["test", "--run", str(trained_run), "--mc-dropout", "4", "--no-progress", "--device", "cpu"]) == 1


@pytest.mark.slow
def test_every_predictions_file_has_the_uncertainty_block(trained_run, tmp_path):  # noqa: F811
    record = json.loads(run_test(trained_run, progress=False, device="cpu", out_dir=tmp_path)[0].read_text())
    unc = record["uncertainty"]
    assert unc["method"] == "softmax" and unc["mutual_information"] is None and unc["members"] is None
    assert unc["predictive_entropy"] == pytest.approx(U.entropy(np.asarray(record["probabilities"])).tolist())


@pytest.mark.slow
def test_mc_dropout_end_to_end_on_a_mobilenet_run(brain_partition, tmp_path):
    from medclf.train.training import run_training

    splits = subset_splits(brain_partition, tmp_path / "tiny")
    run_training({"splits": str(splits), "img_size": 32, "epochs": 1, "batch_size": 8, "out": str(tmp_path),
                  "run_name": "mnv3", "arch": "mobilenet_v3_small", "progress": False, "device": "cpu", "threads": 1})
    assert cli.main(["test", "--run", str(tmp_path / "mnv3"), "--mc-dropout", "5", "--no-progress", "--device", "cpu"]) == 0
    record = json.loads((tmp_path / "mnv3" / "mc_dropout_5" / "predictions_test.json").read_text())
    unc = record["uncertainty"]
    assert unc["method"] == "mc_dropout" and unc["samples"] == 5
    n = len(record["labels"])
    assert len(unc["mutual_information"]) == n and min(unc["mutual_information"]) >= 0
    assert np.allclose(np.asarray(unc["predictive_entropy"]) - np.asarray(unc["expected_entropy"]),
                       unc["mutual_information"])
    assert np.allclose(np.sum(record["probabilities"], axis=1), 1)
