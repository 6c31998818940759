"""Repeated grouped K-fold cross-validation: partition --repeats, `medclf cv` on real brain MRI
images (out-of-fold coverage, best-epoch fold models, the fold ensemble, resume after a kill)."""

import csv
from fractions import Fraction
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from medclf import cli
from medclf.commands import registry
from medclf.core.errors import MedclfError
from medclf.core.fileio import read_json, write_json
from medclf.workflows import cv

HAM_ARGS = ["--image-col", "image_id", "--label-col", "dx", "--group-col", "lesion_id", "--image-ext", ".jpg"]
# --no-amp: the best-epoch test recomputes the val probabilities in fp32, in one batch
TRAIN_ARGS = ["--arch", "resnet18", "--img-size", "32", "--batch-size", "8", "--seed", "2", "--threads", "1",
              "--device", "cpu", "--no-progress", "--deterministic", "--no-amp"]

# Every fold trains past its best epoch by construction, on any CPU: an AUC moves by at most 1, so with
# --min-delta 2 no epoch after the first counts as an improvement (best.pt = epoch 1, last.pt = epoch 2).
PAST_BEST = ["--min-delta", "2"]


def _read_splits(folder):
    return pd.read_csv(Path(folder) / "splits.csv", dtype=str, keep_default_na=False)


def small_brain_folder(brain_mri_root, out, per_class=12):
    """The first `per_class` real images of each class, linked into a class-folder tree."""
    for label in ("no", "yes"):
        (out / label).mkdir(parents=True)
        for path in sorted((brain_mri_root / label).iterdir())[:per_class]:
            (out / label / path.name).symlink_to(path)
    return out


@pytest.fixture(scope="module")
def brain_cv_splits(brain_mri_root, tmp_path_factory):
    """24 brain MRI images: 5 test, the rest in 3 folds x 2 repeats."""
    root = tmp_path_factory.mktemp("cv_data")
    data = small_brain_folder(brain_mri_root, root / "data")
    assert cli.main(["partition", "--data-root", str(data), "--out", str(root / "partition"), "--quiet",
                     "--no-dedup", "--val", "0", "--test", "0.2", "--folds", "3", "--repeats", "2"]) == 0
    return root / "partition" / "splits.csv"


@pytest.fixture(scope="module")
def brain_cv(brain_cv_splits, tmp_path_factory):
    """A finished 3-fold x 2-repeat CV (2 epochs per fold)."""
    out = tmp_path_factory.mktemp("cv_runs")
    assert cli.main(["cv", "--splits", str(brain_cv_splits), "--out", str(out), "--run-name", "cv", "--epochs", "2",
                     "--patience", "2", *TRAIN_ARGS, *PAST_BEST]) == 0
    return out / "cv"


# ---------------------------------------------------------------- partition --repeats

def test_repeats_are_grouped_stratified_fold_assignments_and_keep_the_first(ham_root, tmp_path):
    rows = pd.read_csv(ham_root / "HAM10000_metadata.csv", dtype=str).groupby("dx").head(24)
    rows.to_csv(tmp_path / "meta.csv", index=False)
    common = ["partition", "--quiet", "--metadata", str(tmp_path / "meta.csv"), "--image-dir", str(ham_root / "images"),
              *HAM_ARGS, "--no-dedup", "--val", "0", "--test", "0.2", "--folds", "3"]
    assert cli.main([*common, "--out", str(tmp_path / "one")]) == 0
    assert cli.main([*common, "--out", str(tmp_path / "three"), "--repeats", "3"]) == 0
    one, three = _read_splits(tmp_path / "one"), _read_splits(tmp_path / "three")
    assert list(three.columns[:8]) == ["path", "label", "label_index", "split", "group", "fold", "fold_r1", "fold_r2"]
    assert three["fold"].tolist() == one["fold"].tolist()  # repeat 0 is the assignment --folds always made
    non_test = three[three["split"] != "test"]
    for column in ("fold", "fold_r1", "fold_r2"):
        assert (three.loc[three["split"] == "test", column] == "").all()
        assert sorted(non_test[column].unique()) == ["0", "1", "2"]
        assert non_test.groupby("lesion_id")[column].nunique().max() == 1  # no lesion crosses folds
    assert (non_test["fold"] != non_test["fold_r1"]).any() and (non_test["fold_r1"] != non_test["fold_r2"]).any()
    info = read_json(tmp_path / "three" / "partition.json")
    assert info["repeats"] == 3 and info["leakage"]["groups_across_folds"] == 0
    assert [r["column"] for r in info["fold_repeats"]] == ["fold", "fold_r1", "fold_r2"]
    assert len({r["seed"] for r in info["fold_repeats"]}) == 3
    assert info["fold_repeats"][0]["fold_counts"] == info["fold_counts"]


def test_repeats_without_folds_is_refused(brain_mri_root, tmp_path, capsys):
    assert cli.main(["partition", "--data-root", str(brain_mri_root), "--out", str(tmp_path), "--repeats", "2"]) == 1
    assert "--repeats 2" in capsys.readouterr().err and not (tmp_path / "splits.csv").exists()


# ---------------------------------------------------------------- the CV outputs

@pytest.mark.slow
def test_every_non_test_image_is_out_of_fold_once_per_repeat_and_never_a_test_image(brain_cv, brain_cv_splits):
    splits = _read_splits(brain_cv_splits.parent)
    oof = read_json(brain_cv / "predictions_oof.json")
    non_test = splits[splits["split"] != "test"].set_index("path")
    test_paths = set(splits.loc[splits["split"] == "test", "path"])
    assert sorted(set(oof["repeats"])) == [0, 1]
    for repeat, column in ((0, "fold"), (1, "fold_r1")):
        rows = [(p, f) for p, f, r in zip(oof["paths"], oof["folds"], oof["repeats"]) if r == repeat]
        assert sorted(p for p, _ in rows) == sorted(non_test.index)  # each exactly once
        assert not {p for p, _ in rows} & test_paths
        assert all(int(non_test.loc[p, column]) == f for p, f in rows)  # predicted by the model of its own fold
    labels = dict(zip(splits["path"], splits["label_index"].astype(int)))
    assert all(labels[p] == y for p, y in zip(oof["paths"], oof["labels"]))


@pytest.mark.slow
def test_fold_ensemble_is_the_mean_of_the_fold_models_test_probabilities(brain_cv):
    members = read_json(brain_cv / "cv.json")["members"]
    assert len(members) == 6
    tests = [read_json(Path(m["run"]) / "predictions_test.json") for m in members]
    ensemble = read_json(brain_cv / "predictions_test.json")
    expected = np.mean([np.asarray(t["probabilities"]) for t in tests], axis=0)
    assert all(t["paths"] == ensemble["paths"] for t in tests)
    np.testing.assert_allclose(ensemble["probabilities"], expected, rtol=0, atol=1e-12)
    assert [m["run"] for m in ensemble["model"]["members"]] == [m["run"] for m in members]
    val = read_json(brain_cv / "predictions_val.json")  # OOF averaged over the repeats: thresholds tune here
    oof = read_json(brain_cv / "predictions_oof.json")
    by_repeat = [dict(zip([p for p, r in zip(oof["paths"], oof["repeats"]) if r == k],
                          [q for q, r in zip(oof["probabilities"], oof["repeats"]) if r == k])) for k in (0, 1)]
    np.testing.assert_allclose(val["probabilities"], [np.mean([b[p] for b in by_repeat], axis=0) for p in val["paths"]],
                               atol=1e-12)


def _val_probabilities(run, state_dict):
    """The run's val probabilities recomputed with the given weights."""
    from medclf.core.splits import load_run_splits
    from medclf.data import datasets as data_mod
    from medclf.data import transforms
    from medclf.engine.steps import probabilities_from_logits
    from medclf.infer.predict import load_run

    model, config, _ = load_run(run)
    model.load_state_dict(state_dict)
    files, labels, _ = data_mod.split_paths(load_run_splits(run, config), "val")
    norm = config["normalisation"]
    dataset = data_mod.CachedImageDataset(data_mod.build_cache(files, 32, "memory", progress=False), labels,
                                          transforms.eval_transform("none", 32, norm["mean"], norm["std"]))
    with torch.inference_mode():
        return probabilities_from_logits(model(torch.stack([dataset[i][0] for i in range(len(dataset))]))).numpy()


@pytest.mark.slow
def test_fold_models_predict_with_their_best_epoch_weights(brain_cv):
    from medclf.train.training import load_checkpoint

    members = read_json(brain_cv / "cv.json")["members"]
    for member in members:
        run = Path(member["run"])
        with open(run / "history.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
        best = [int(r["epoch"]) for r in rows if r["best"] == "1"][-1]
        assert (best, len(rows)) == (1, 2)  # PAST_BEST: trained one epoch past its best
        assert member["best_epoch"] == read_json(run / "predictions_val.json")["model"]["epoch"] == best
        assert load_checkpoint(run / "best.pt")["epoch"] == best
    for run in [Path(member["run"]) for member in members]:
        stored = read_json(run / "predictions_val.json")["probabilities"]
        np.testing.assert_allclose(stored, _val_probabilities(run, load_checkpoint(run / "best.pt")["state_dict"]),
                                   atol=1e-5)
        assert not np.allclose(stored, _val_probabilities(run, load_checkpoint(run / "last.pt")["model"]), atol=1e-5)


@pytest.mark.slow
def test_oof_report_pools_each_repeat_with_intervals_and_spreads_over_folds_and_repeats(brain_cv):
    results = read_json(brain_cv / "results_oof.json")
    assert results["task"] == "binary" and [r["repeat"] for r in results["repeats"]] == [0, 1]
    auc = results["repeats"][0]["metrics"]["roc_auc"]
    assert auc["method"].startswith("DeLong") and auc["lower"] <= auc["estimate"] <= auc["upper"]
    fold_aucs = [f["metrics"]["roc_auc"] for f in results["folds"]]
    assert len(fold_aucs) == 6 and results["over_folds"]["roc_auc"]["mean"] == pytest.approx(np.mean(fold_aucs))
    repeat_aucs = [r["metrics"]["roc_auc"]["estimate"] for r in results["repeats"]]
    assert results["over_repeats"]["roc_auc"]["sd"] == pytest.approx(np.std(repeat_aucs, ddof=1))
    assert "never on test" in (brain_cv / "report_oof.md").read_text()


@pytest.mark.slow
def test_tta_on_a_finished_cv_trains_nothing_and_writes_beside_the_plain_predictions(brain_cv, brain_cv_splits):
    before = {p: p.stat().st_mtime_ns for p in brain_cv.glob("fold*/best.pt")}
    assert cli.main(["cv", "--splits", str(brain_cv_splits), "--out", str(brain_cv.parent), "--run-name", "cv",
                     "--epochs", "2", "--patience", "2", *TRAIN_ARGS, *PAST_BEST, "--tta", "hflip"]) == 0
    assert {p: p.stat().st_mtime_ns for p in brain_cv.glob("fold*/best.pt")} == before
    flipped = read_json(brain_cv / "tta_hflip" / "predictions_test.json")
    assert flipped["model"]["tta"]["views"] == ["identity", "hflip"]
    assert read_json(brain_cv / "predictions_test.json")["model"]["tta"]["views"] == ["identity"]
    assert "tta" not in read_json(brain_cv / "fold0" / "predictions_test.json")["model"]  # as without --tta


@pytest.mark.slow
def test_a_cv_rerun_with_other_training_options_is_refused(brain_cv, brain_cv_splits, capsys):
    assert cli.main(["cv", "--splits", str(brain_cv_splits), "--out", str(brain_cv.parent), "--run-name", "cv",
                     "--epochs", "3", "--patience", "2", *TRAIN_ARGS, *PAST_BEST]) == 1
    assert "made with other options or splits (epochs)" in capsys.readouterr().err


def _one_fold_cv(splits, out, *extra):
    return cli.main(["cv", "--splits", str(splits), "--out", str(out), "--run-name", "cv", "--folds", "0",
                     "--repeats", "1", "--epochs", "1", "--patience", "1", *TRAIN_ARGS, *extra])


# The options issue 15 added: a cv.json written before it has none of them.
RECIPE_ERA_OPTIONS = ("recipe", "label_smoothing", "mixup_alpha", "cutmix_alpha", "mix_prob", "ema_decay",
                      "swa_epochs", "swa_lr", "patience_start", "no_decay_norm_bias")


@pytest.mark.slow
@pytest.mark.parametrize("older", ["before recipes", "recipe options as given"])
def test_a_cv_json_from_an_older_medclf_resumes_without_training_again(brain_cv_splits, tmp_path, older):
    from medclf.train import recipes
    from medclf.train.training import DEFAULTS

    assert _one_fold_cv(brain_cv_splits, tmp_path) == 0
    best = tmp_path / "cv" / "fold0" / "best.pt"
    trained_at = best.stat().st_mtime_ns
    record = read_json(tmp_path / "cv" / "cv.json")
    if older == "before recipes":  # every option it knew recorded with its value, the newer ones absent
        arguments = {k: (DEFAULTS[k] if v is None and k in DEFAULTS else v)
                     for k, v in record["arguments"].items() if k not in RECIPE_ERA_OPTIONS}
    else:  # the first recipe version recorded None for every option a recipe may set and the command left out
        left_out = set(recipes.RECIPES["cpu-small"]) - {"img_size", "batch_size", "epochs", "patience"}
        arguments = {k: (None if k in left_out else v) for k, v in record["arguments"].items()}
    assert arguments != record["arguments"]
    write_json(tmp_path / "cv" / "cv.json", dict(record, arguments=arguments))
    assert _one_fold_cv(brain_cv_splits, tmp_path) == 0
    assert best.stat().st_mtime_ns == trained_at


@pytest.mark.slow
def test_a_cv_whose_recipe_holds_other_values_since_is_refused(brain_cv_splits, tmp_path, monkeypatch, capsys):
    from medclf.train import recipes

    monkeypatch.setitem(recipes.RECIPES, "mine", {"lr": 2e-3, "label_smoothing": 0.1})
    assert _one_fold_cv(brain_cv_splits, tmp_path, "--recipe", "mine") == 0
    assert read_json(tmp_path / "cv" / "cv.json")["arguments"]["lr"] == 2e-3  # the resolved value is recorded
    monkeypatch.setitem(recipes.RECIPES, "mine", {"lr": 3e-3, "label_smoothing": 0.1})
    assert _one_fold_cv(brain_cv_splits, tmp_path, "--recipe", "mine") == 1
    assert "made with other options or splits (lr)" in capsys.readouterr().err


@pytest.mark.slow
def test_cv_needs_fold_columns_and_enough_repeats(brain_cv_splits, tmp_path, capsys):
    frame = _read_splits(brain_cv_splits.parent).drop(columns=["fold", "fold_r1"])
    frame.to_csv(tmp_path / "splits.csv", index=False)
    assert cli.main(["cv", "--splits", str(tmp_path / "splits.csv"), "--out", str(tmp_path), *TRAIN_ARGS]) == 1
    assert "no fold column" in capsys.readouterr().err
    assert cli.main(["cv", "--splits", str(brain_cv_splits), "--out", str(tmp_path), "--repeats", "3", *TRAIN_ARGS]) == 1
    assert "holds 2 fold assignment(s)" in capsys.readouterr().err


# ---------------------------------------------------------------- resume

def test_a_killed_cv_resumes_skipping_finished_folds_and_continuing_the_started_one(brain_cv_splits, tmp_path,
                                                                                   monkeypatch):
    from medclf.train import training

    args = ["cv", "--splits", str(brain_cv_splits), "--out", str(tmp_path), "--run-name", "cv", "--repeats", "1",
            "--epochs", "2", "--patience", "2", *TRAIN_ARGS]
    real_save = training.save_epoch

    def killed_after_fold1_epoch1(trainer, row):
        real_save(trainer, row)
        if trainer.run_dir.name == "fold1" and row["epoch"] == 1:
            raise KeyboardInterrupt  # as a kill right after an epoch's checkpoint

    monkeypatch.setattr(training, "save_epoch", killed_after_fold1_epoch1)
    assert cli.main(args) == 130
    monkeypatch.setattr(training, "save_epoch", real_save)
    cv_dir = tmp_path / "cv"
    fold0 = (cv_dir / "fold0" / "best.pt").stat().st_mtime_ns
    epoch1 = (cv_dir / "fold1" / "history.csv").read_text().splitlines()[1].rsplit(",", 2)[0]
    assert not (cv_dir / "fold2").exists() and not (cv_dir / "predictions_oof.json").exists()
    resumed = []
    real_run = training.run_training
    monkeypatch.setattr(training, "run_training", lambda config, images=None: (
        resumed.append((config["run_name"], config["resume"])), real_run(config, images=images))[1])
    assert cli.main(args) == 0
    assert resumed == [("fold1", True), ("fold2", False)]  # fold0 skipped, fold1 continued from last.pt
    assert (cv_dir / "fold0" / "best.pt").stat().st_mtime_ns == fold0
    history = (cv_dir / "fold1" / "history.csv").read_text().splitlines()
    assert len(history) == 3 and history[1].rsplit(",", 2)[0] == epoch1  # epoch 1 kept, epoch 2 added
    oof = read_json(cv_dir / "predictions_oof.json")
    assert sorted(oof["paths"]) == sorted(_read_splits(brain_cv_splits.parent).query("split != 'test'")["path"])


# ---------------------------------------------------------------- the fold mean (pure)

def _record(paths, labels, probabilities):
    return {"classes": ["no", "yes"], "paths": paths, "labels": labels, "probabilities": probabilities}


def test_mean_probabilities_joins_by_path():
    a = _record(["x", "y"], [1, 0], [[1 / 4, 3 / 4], [1 / 2, 1 / 2]])
    b = _record(["y", "x"], [0, 1], [[0, 1], [3 / 4, 1 / 4]])
    paths, labels, mean = cv.mean_probabilities([a, b])
    assert paths == ["x", "y"] and labels == [1, 0]
    assert [[Fraction(v).limit_denominator(64) for v in row] for row in mean] == \
        [[Fraction(1, 2), Fraction(1, 2)], [Fraction(1, 4), Fraction(3, 4)]]


@pytest.mark.parametrize("other, message", [
    (_record(["x", "z"], [1, 0], [[1, 0], [0, 1]]), "record 2: lacks 1 image.* of record 1: 'y'; has 1 .*'z'"),
    (_record(["x", "y"], [0, 0], [[1, 0], [0, 1]]), "record 2: labels differ from record 1 for 1 image.*'x'"),
    (dict(_record(["x", "y"], [1, 0], [[1, 0], [0, 1]]), classes=["yes", "no"]), "record 2: classes"),
])
def test_mean_probabilities_refuses_other_images_or_labels(other, message):
    with pytest.raises(MedclfError, match=message):
        cv.mean_probabilities([_record(["x", "y"], [1, 0], [[1, 0], [0, 1]]), other])


@pytest.mark.slow
def test_medclf_test_tta_on_a_fold_run_matches_the_cv_and_one_view_matches_no_tta(brain_cv, tmp_path):
    from medclf.infer.predict import run_test

    fold0 = brain_cv / "fold0"
    written = run_test(fold0, tta="hflip", out_dir=tmp_path / "hflip", progress=False, device="cpu")
    assert written == [tmp_path / "hflip" / "predictions_test.json", tmp_path / "hflip" / "predictions_val.json"]
    ours = read_json(written[0])
    assert ours["model"]["tta"] == {"views": ["identity", "hflip"], "reduction": "mean of softmax probabilities"}
    flipped_by_cv = fold0 / "tta_hflip" / "predictions_test.json"
    if flipped_by_cv.is_file():  # written by the --tta hflip CV test when it ran first
        np.testing.assert_allclose(ours["probabilities"], read_json(flipped_by_cv)["probabilities"], atol=1e-6)
    one = read_json(run_test(fold0, tta="1", out_dir=tmp_path / "one", progress=False, device="cpu")[0])
    np.testing.assert_allclose(one["probabilities"], read_json(fold0 / "predictions_test.json")["probabilities"],
                               atol=1e-6)
    assert not np.allclose(ours["probabilities"], one["probabilities"], atol=1e-9)


# ---------------------------------------------------------------- study files

STUDY_WITH_CV = """
name: mri_cv
data: {root: DATA}
partition: {folds: 5, repeats: 3}
train: {arch: resnet18, img-size: 64, epochs: 20}
test: {tta: hflip}
cv: {epochs: 30, tta: hflip}
"""


def test_a_study_cv_section_becomes_one_cv_call_and_test_tta_moves_the_scored_predictions(tmp_path):
    from medclf.workflows.study import build_plan, parse_yaml

    study = parse_yaml(STUDY_WITH_CV.replace("DATA", str(tmp_path)), "s.yaml")
    plan = build_plan(study, tmp_path / "s.yaml", out_root=tmp_path / "out", environ={}, parsers=registry.stage_parsers(), validators=registry.stage_validators())
    out = tmp_path / "out" / "mri_cv"
    by_stage = {call.stage: call for call in plan.calls}
    assert by_stage["partition"].argv[-4:] == ["--folds", "5", "--repeats", "3"]
    assert by_stage["cv"].argv == ["cv", "--splits", str(out / "partition" / "splits.csv"), "--out", str(out),
                                   "--run-name", "cv", "--arch", "resnet18", "--img-size", "64", "--epochs", "30",
                                   "--tta", "hflip"]
    assert by_stage["cv"].outputs == [out / "cv" / "tta_hflip" / "predictions_test.json",
                                      out / "cv" / "tta_hflip" / "predictions_oof.json"]
    assert by_stage["test"].outputs == [out / "resnet18" / "tta_hflip" / "predictions_test.json"]
    assert by_stage["report"].argv[:3] == ["report", "--run", str(out / "resnet18" / "tta_hflip")]


def test_a_study_cv_section_may_not_set_what_the_runner_sets(tmp_path):
    from medclf.workflows.study import build_plan, parse_yaml

    study = parse_yaml(STUDY_WITH_CV.replace("DATA", str(tmp_path)).replace("30, tta: hflip}", "30, run-name: x}"), "s")
    with pytest.raises(MedclfError, match="cv.run-name: set by the study runner"):
        build_plan(study, tmp_path / "s.yaml", out_root=tmp_path / "out", environ={}, parsers=registry.stage_parsers(), validators=registry.stage_validators())
