"""`medclf report`: outputs, engines and fallback, clinical grouping, multi-class, bad input."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from medclf import cli
from medclf.core import predictions
from medclf.core.errors import MedclfError
from medclf.evaluate import r_bridge
from medclf.evaluate import report as R

from prediction_files import binary_probs, normalise_rows, write_predictions

HAM_CLASSES = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]


@pytest.fixture()
def binary_run(tmp_path):
    rng = np.random.default_rng(5)
    for split, n in (("test", 80), ("val", 60)):
        y = rng.integers(0, 2, n)
        p1 = 1 / (1 + np.exp(-(2 * y - 1 + rng.normal(0, 1, n))))
        write_predictions(tmp_path / f"predictions_{split}.json", y, binary_probs(p1), ["no", "yes"], "yes")
    (tmp_path / "config.json").write_text(json.dumps({"architecture": "resnet18", "weights": "none", "seed": 3,
                                                      "arguments": {"epochs": 2, "img_size": 64}}))
    return tmp_path


@pytest.fixture()
def ham_run(tmp_path):
    rng = np.random.default_rng(6)
    y = rng.choice(7, 150, p=[0.05, 0.1, 0.15, 0.05, 0.15, 0.4, 0.1])
    raw = rng.gamma(1.0, 1.0, (150, 7))
    raw[np.arange(150), y] += 1.5
    write_predictions(tmp_path / "predictions_test.json", y, normalise_rows(raw), HAM_CLASSES)
    return tmp_path


def test_report_writes_results_markdown_and_plots(binary_run):
    out = R.report_run(binary_run, threshold_rule="sensitivity:0.9", engine="rscript")
    result = json.loads(out["results"].read_text())
    assert result["schema"] == "medclf.results/1" and result["engine"]["name"] == "R"
    assert result["threshold_source"] == "validation:sensitivity:0.9"
    assert result["threshold_selection"]["sensitivity"] >= 0.9
    cm = result["confusion_matrix"]
    assert cm["tp"] + cm["fn"] == result["n_positive"] and cm["tn"] + cm["fp"] == result["n_negative"]
    for name in ("roc_test.png", "pr_test.png", "pr_zoom_test.png", "confusion_test.png", "calibration_test.png"):
        assert (binary_run / name).stat().st_size > 1000
    md = out["report"].read_text()
    assert "| sensitivity |" in md and "DeLong" in md and "resnet18" in md and "precision_at_recall | 0.999" in md


def _unavailable(task, request):
    raise r_bridge.EngineUnavailable("simulated: no embedded R")


def test_auto_falls_back_to_rscript_then_python(binary_run, monkeypatch):
    monkeypatch.setattr(r_bridge, "run_rpy2", _unavailable)
    with pytest.warns(UserWarning, match="rpy2 unavailable"):
        result, notes = R.run_engine(R.build_request(binary_run / "predictions_test.json"))
    assert result["engine"]["name"] == "R" and "rpy2 unavailable" in notes[0]
    monkeypatch.setattr(r_bridge, "run_rscript", _unavailable)
    with pytest.warns(UserWarning):
        result, notes = R.run_engine(R.build_request(binary_run / "predictions_test.json"))
    assert result["engine"]["name"] == "python" and len(notes) == 2
    with pytest.raises(MedclfError, match="--engine rpy2 is unavailable"):
        R.run_engine(R.build_request(binary_run / "predictions_test.json"), "rpy2")


def test_rscript_missing_falls_back_to_python(binary_run, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setattr(r_bridge, "run_rpy2", _unavailable)
    with pytest.warns(UserWarning):
        out = R.report_run(binary_run, engine="auto", plots=False)
    assert out["result"]["engine"]["name"] == "python"
    assert "Rscript is not on PATH" in " ".join(out["result"]["engine_notes"])


def test_multiclass_report_has_per_class_macro_auc_balanced_accuracy_and_kappa(ham_run):
    out = R.report_run(ham_run, engine="python")
    result = out["result"]
    assert result["task"] == "multiclass"
    assert set(result["per_class"]) == set(HAM_CLASSES)
    for name in ("accuracy", "balanced_accuracy", "cohen_kappa", "macro_auc"):
        assert result["metrics"][name]["estimate"] is not None
    assert "one-vs-rest" in result["metrics"]["macro_auc"]["method"]
    recalls = [pc["metrics"]["sensitivity"]["estimate"] for pc in result["per_class"].values()]
    assert result["metrics"]["balanced_accuracy"]["estimate"] == pytest.approx(np.mean(recalls))
    assert "| mel |" in out["report"].read_text()


def test_clinical_grouping_sums_member_probabilities(ham_run):
    out = R.report_run(ham_run, group="malignant=mel,bcc,akiec", engine="python", plots=False)
    result = out["result"]
    data = predictions.validate_predictions(json.loads((ham_run / "predictions_test.json").read_text()), "x")
    members = [HAM_CLASSES.index(c) for c in ("mel", "bcc", "akiec")]
    p = data["probabilities"][:, members].sum(axis=1)
    truth = np.isin(data["labels"], members)
    assert result["positive_class"] == "malignant" and result["grouping"]["classes"] == ["mel", "bcc", "akiec"]
    assert result["confusion_matrix"]["tp"] == int(np.sum(truth & (p >= 0.5)))
    assert result["n_positive"] == int(truth.sum())


@pytest.mark.parametrize("mutate, field", [
    (lambda t: t[: len(t) // 2], "not valid JSON"),
    (lambda t: t.replace('"labels": [', '"labels": [0, ', 1), "has 80 entries but labels has 81"),
    (lambda t: t.replace('"probabilities": [[', '"probabilities": [[NaN, 1.0], [', 1),
     "probabilities: row 1, column 1 is NaN or missing"),
])
def test_cli_malformed_input_exit_1_with_one_message(binary_run, capsys, mutate, field):
    path = binary_run / "predictions_test.json"
    path.write_text(mutate(path.read_text()))
    assert cli.main(["report", "--run", str(binary_run), "--engine", "python", "--no-plots"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and field in err[0] and err[0].startswith("medclf report: error:")


def test_probability_above_one_and_unknown_positive_named(binary_run, capsys):
    obj = json.loads((binary_run / "predictions_test.json").read_text())
    obj["probabilities"][2] = [0.0, 1.3]
    (binary_run / "predictions_test.json").write_text(json.dumps(obj))
    for engine in ("python", "rscript"):
        with pytest.raises(MedclfError, match=r"probabilities: value 1.3 at row 3, column 2 is outside \[0, 1\]"):
            R.report_run(binary_run, engine=engine, plots=False)
    obj["probabilities"][2] = [0.7, 0.3]
    (binary_run / "predictions_test.json").write_text(json.dumps(obj))
    assert cli.main(["report", "--run", str(binary_run), "--positive", "maybe", "--engine", "rscript"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "positive class: 'maybe' is not one of the classes (no, yes)" in err[0]


def test_r_directory_override(monkeypatch, tmp_path):
    monkeypatch.setenv("MEDCLF_R_DIR", str(tmp_path))
    assert r_bridge.r_dir() == tmp_path
    monkeypatch.delenv("MEDCLF_R_DIR")
    assert (r_bridge.r_dir() / "report.R").is_file()


def test_an_r_error_inside_rpy2_is_an_unavailable_engine(binary_run, monkeypatch, tmp_path):
    with r_bridge.keep_library_path():  # rpy2 would leak R's LD_LIBRARY_PATH into later subprocesses
        pytest.importorskip("rpy2.robjects")
    broken = tmp_path / "R"
    broken.mkdir()
    (broken / "report.R").write_text('medclf_report_json <- function(request_json) stop("simulated R failure")\n')
    monkeypatch.setenv("MEDCLF_R_DIR", str(broken))
    monkeypatch.setattr(r_bridge, "_RPY2_FUNCTIONS", {})
    with pytest.raises(r_bridge.EngineUnavailable, match="simulated R failure"):
        r_bridge.run_rpy2(R.REPORT_TASK, R.build_request(binary_run / "predictions_test.json"))


def test_reports_are_named_by_split_and_tag_and_never_overwrite_each_other(ham_run):
    rng = np.random.default_rng(7)
    y = rng.choice(7, 60)
    raw = rng.gamma(1.0, 1.0, (60, 7))
    raw[np.arange(60), y] += 1.5
    write_predictions(ham_run / "predictions_val.json", y, normalise_rows(raw), HAM_CLASSES)
    test = R.report_run(ham_run, split="test", engine="python")
    test_md = test["report"].read_text()
    val = R.report_run(ham_run, split="val", engine="python")
    grouped = R.report_run(ham_run, group="malignant=mel,bcc,akiec", tag="grouped", engine="python")
    assert (test["report"].name, val["report"].name, grouped["report"].name) == \
        ("report_test.md", "report_val.md", "report_test_grouped.md")
    assert (test["results"].name, val["results"].name, grouped["results"].name) == \
        ("results_test.json", "results_val.json", "results_test_grouped.json")
    assert [p.name for p in grouped["plots"]] == [f"{k}_test_grouped.png" for k in
                                                  ("roc", "pr", "pr_zoom", "confusion", "calibration",
                                                   "decision_curve")]
    assert {p.name for p in val["plots"]} == {"roc_val.png", "pr_val.png", "confusion_val.png", "calibration_val.png"}
    assert test["report"].read_text() == test_md  # the val and grouped reports left the test report alone
    assert json.loads(test["results"].read_text())["task"] == "multiclass"
    assert json.loads(grouped["results"].read_text())["positive_class"] == "malignant"
    assert "![roc_test_grouped](roc_test_grouped.png)" in grouped["report"].read_text()
    assert not (ham_run / "report.md").exists()
    with pytest.raises(MedclfError, match="--tag 'a/b'"):
        R.report_run(ham_run, tag="a/b", engine="python")


@pytest.mark.parametrize("engine", ["python", "rscript"])
def test_threshold_rule_on_the_scored_split_is_marked_optimistic(binary_run, engine, capsys):
    val = R.report_run(binary_run, split="val", threshold_rule="youden", engine=engine, plots=False)
    assert val["result"]["threshold_optimistic"] == R.OPTIMISTIC
    assert f"**Optimistic estimate:** {R.OPTIMISTIC}." in val["report"].read_text()
    test = R.report_run(binary_run, split="test", threshold_rule="youden", engine=engine, plots=False)
    assert test["result"]["threshold_optimistic"] is None and "Optimistic" not in test["report"].read_text()
    capsys.readouterr()
    assert cli.main(["report", "--run", str(binary_run), "--split", "val", "--threshold-rule", "youden",
                     "--engine", engine, "--no-plots"]) == 0
    assert "warning: the threshold was chosen on the same predictions" in capsys.readouterr().out


@pytest.mark.parametrize("engine", ["python", "rscript"])
def test_zero_width_intervals_are_marked_with_their_reason(tmp_path, engine):
    write_predictions(tmp_path / "predictions_test.json", [0] * 6 + [1] * 4, binary_probs([0.7] * 10), ["no", "yes"],
                      "yes")
    out = R.report_run(tmp_path, engine=engine, plots=False)
    metrics = json.loads(out["results"].read_text())["metrics"]
    assert metrics["roc_auc"]["note"] == "constant scores: DeLong variance is 0, interval has zero width"
    assert metrics["cohen_kappa"]["note"] == "a single class in the decisions: kappa variance is 0, interval has zero width"
    md = out["report"].read_text()
    assert "| roc_auc | 0.500 | 0.500 to 0.500 (zero width) | DeLong (pROC, direction '<') (constant scores: " in md
    assert "| cohen_kappa | 0.000 | 0.000 to 0.000 (zero width) |" in md and "a single class in the decisions" in md
    assert md.count("(zero width)") == 2  # kappa and AUC in the metrics table
    assert md.count("0.500 (0.500 to 0.500, zero width)") == 2  # AUC of both classes in the per-class table
    assert "- yes, roc_auc: constant scores: DeLong variance is 0, interval has zero width" in md


@pytest.mark.parametrize("engine, route", [("python", "Python"), ("rscript", "Rscript"), ("rpy2", "rpy2")])
def test_report_names_the_engine_that_ran(binary_run, engine, route):
    if engine == "rpy2":
        with r_bridge.keep_library_path():  # rpy2 would leak R's LD_LIBRARY_PATH into later subprocesses
            pytest.importorskip("rpy2.robjects")
        try:
            r_bridge.run_rpy2(R.REPORT_TASK, R.build_request(binary_run / "predictions_test.json"))
        except r_bridge.EngineUnavailable as exc:
            pytest.skip(f"rpy2 cannot run R here: {exc}")
    out = R.report_run(binary_run, engine=engine, plots=False)
    assert json.loads(out["results"].read_text())["engine"]["route"] == route
    md = out["report"].read_text()
    assert f"\nEngine: {route} (" in md and f"| engine | {route} (" in md


def test_provenance_is_a_readable_table(binary_run):
    config = json.loads((binary_run / "config.json").read_text())
    config.update(splits_file=str(binary_run / "splits.csv"), data_root="/data/brain_mri",
                  counts={"train": 178, "val": 25, "test": 50}, git_commit="abc123", created="2026-11-22T16:00:00+00:00")
    (binary_run / "config.json").write_text(json.dumps(config))
    (binary_run / "partition.json").write_text(json.dumps({
        "schema": "medclf.partition/1", "seed": 0, "ratios": {"train": 0.7, "val": 0.1, "test": 0.2},
        "group_column": None, "n_groups": 240, "label_map": None,
        "leakage": {"groups_across_splits": 0, "crossing_groups": [], "exact_duplicates_across_splits": 0}}))
    md = R.report_run(binary_run, threshold_rule="youden", engine="python", plots=False)["report"].read_text()
    provenance = md.split("## Provenance")[1]
    assert "{" not in provenance and "[" not in provenance
    for row in ("| model | resnet18, weights none; image size 64, at most 2 epochs, seed 3 |",
                "(train 178, val 25, test 50 images) |", "| data | /data/brain_mri |",
                "seed 0, ratios train 0.7, val 0.1, test 0.2, grouped by duplicate clusters (240 groups) |",
                "| leakage check | 0 groups, 0 exact duplicates across splits |",
                "| threshold | ", "chosen by youden on ", "| engine | Python (python "):
        assert row in provenance


def test_one_group_parser_refuses_malformed_groups():
    assert R.parse_group(" malignant = mel, bcc ") == {"name": "malignant", "classes": ["mel", "bcc"]}
    for bad in ("malignant", "=mel", "malignant=", "malignant=mel,,bcc", "a=b=c"):
        with pytest.raises(MedclfError, match="expected NAME=CLASS,CLASS"):
            R.parse_group(bad)


def test_embedding_r_leaves_the_library_path_of_later_subprocesses_as_it_was(tmp_path):
    """rpy2 writes R's LD_LIBRARY_PATH (with the system library folders) into os.environ; a child
    started afterwards (`medclf serve` in a test, a torchrun worker) then loaded Debian's
    libpython under a pyenv python and failed at `import ssl`. The bridge puts the variable back."""
    pytest.importorskip("rpy2")
    code = ("import os, sys\n"
            "from medclf.evaluate import r_bridge\n"
            "if sys.argv[1] == 'kept':\n"
            "    with r_bridge.keep_library_path():\n"
            "        import rpy2.robjects\n"
            "else:\n"
            "    import rpy2.robjects\n"
            "print(os.environ.get('LD_LIBRARY_PATH', '<unset>'))\n")
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    outputs = {}
    for mode in ("bare", "kept"):
        done = subprocess.run([sys.executable, "-c", code, mode], capture_output=True, text=True, env=env, timeout=120)
        if done.returncode != 0 and "R_HOME" in done.stderr:
            pytest.skip("R is not installed")
        assert done.returncode == 0, done.stderr
        outputs[mode] = done.stdout.strip().splitlines()[-1]
    assert outputs["bare"] != "<unset>"  # rpy2 does write it: the test can see the leak
    assert outputs["kept"] == "<unset>"
