"""The shipped HAM10000 studies end to end on the real development subset (1,983 images), made tiny
with --set overrides: 32 px, ResNet-18 from scratch, 1 epoch on CPU. They check what issue 5 asks
of the studies: per-class metrics, macro AUC, balanced accuracy and kappa in the report, no lesion
in two splits, one prediction per test image, and that rerunning the study skips every finished
stage."""

import json

import pandas as pd
import pytest

from medclf.commands import registry
from medclf.workflows.study import run_study

pytestmark = pytest.mark.slow

TINY = ["train.epochs=1", "train.patience=1", "train.img-size=32", "train.batch-size=64", "train.threads=1",
        "train.no-progress=true", "test.no-progress=true", "partition.quiet=true"]


def _run(repo_root, ham_root, tmp_path, monkeypatch, study):
    monkeypatch.delenv("MEDCLF_HAM10000_IMAGES", raising=False)
    return run_study(repo_root / "studies" / f"{study}.yaml", data_root=ham_root, out_root=tmp_path, overrides=TINY,
                     **registry.stage_commands())


def _check_split_and_predictions(out, run):
    splits = pd.read_csv(out / "partition" / "splits.csv", dtype=str, keep_default_na=False)
    assert len(splits) == 1983
    splits_per_lesion = splits.groupby("lesion_id")["split"].nunique()
    assert splits_per_lesion.max() == 1, "a lesion appears in two splits"
    partition = json.loads((out / "partition" / "partition.json").read_text())
    test_rows = splits[splits["split"] == "test"]
    predictions = json.loads((out / run / "predictions_test.json").read_text())
    assert sorted(predictions["paths"]) == sorted(test_rows["path"])
    return splits, partition, predictions


def _check_interval(metric):
    assert metric["estimate"] is not None and metric["lower"] <= metric["estimate"] <= metric["upper"]


def _check_study_record(out, runs):
    resolved = json.loads((out / "study_resolved.json").read_text())
    assert resolved["schema"] == "medclf.study/1" and resolved["finished"]
    assert [c["status"] for c in resolved["calls"]] == ["ran"] * len(resolved["calls"])
    assert all(c["argv"][c["argv"].index("--epochs") + 1] == "1" for c in resolved["calls"] if c["stage"] == "train")
    summary = (out / "summary.md").read_text()
    for run in runs:
        assert f"| {run} | " in summary and "not reported" not in summary
    return resolved


def test_ham10000_7class_study(repo_root, ham_root, tmp_path, monkeypatch):
    plan = _run(repo_root, ham_root, tmp_path, monkeypatch, "ham10000_7class")
    out = tmp_path / "ham10000_7class"
    splits, partition, predictions = _check_split_and_predictions(out, "resnet18")
    assert sorted(partition["classes"]) == ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]

    results = json.loads((out / "resnet18" / "results_test.json").read_text())
    assert results["task"] == "multiclass" and results["n"] == int((splits["split"] == "test").sum())
    assert sorted(results["per_class"]) == sorted(partition["classes"])
    for per_class in results["per_class"].values():
        for name in ("sensitivity", "specificity", "ppv", "f1", "roc_auc"):
            assert name in per_class["metrics"]
    _check_interval(results["metrics"]["balanced_accuracy"])
    _check_interval(results["metrics"]["cohen_kappa"])
    assert 0 <= results["metrics"]["macro_auc"]["estimate"] <= 1
    report = (out / "resnet18" / "report_test.md").read_text().lower()
    assert "balanced" in report and "kappa" in report and "vasc" in report

    resolved = _check_study_record(out, plan.runs)
    assert "macro AUC" in (out / "summary.md").read_text()
    assert resolved["data"]["metadata"] == str(ham_root / "HAM10000_metadata.csv")

    # Rerunning the same command finds every output and runs nothing.
    run_study(repo_root / "studies" / "ham10000_7class.yaml", data_root=ham_root, out_root=tmp_path, overrides=TINY,
                     **registry.stage_commands())
    resolved = json.loads((out / "study_resolved.json").read_text())
    assert {c["status"] for c in resolved["calls"]} == {"skipped (outputs exist)"}


def test_ham10000_malignant_study(repo_root, ham_root, tmp_path, monkeypatch):
    plan = _run(repo_root, ham_root, tmp_path, monkeypatch, "ham10000_malignant")
    out = tmp_path / "ham10000_malignant"
    splits, partition, predictions = _check_split_and_predictions(out, "resnet18")
    assert partition["classes"] == ["benign", "malignant"] and partition["positive_class"] == "malignant"
    malignant = splits["label_original"].isin(["mel", "bcc", "akiec"])
    assert (splits.loc[malignant, "label"] == "malignant").all() and (splits.loc[~malignant, "label"] == "benign").all()
    assert predictions["positive_class"] == "malignant"

    results = json.loads((out / "resnet18" / "results_test.json").read_text())
    assert results["task"] == "binary" and results["positive_class"] == "malignant"
    cm = results["confusion_matrix"]
    assert cm["tp"] + cm["fn"] == int(((splits["split"] == "test") & malignant).sum())
    assert sorted(results["per_class"]) == ["benign", "malignant"]
    for name in ("sensitivity", "specificity", "roc_auc", "balanced_accuracy", "cohen_kappa"):
        _check_interval(results["metrics"][name])
    assert "roc_auc" in results["macro"]
    report = (out / "resnet18" / "report_test.md").read_text().lower()
    assert "malignant" in report and "kappa" in report
    _check_study_record(out, plan.runs)
