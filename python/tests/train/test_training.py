"""Training runs on real brain MRI images: the run folder, early stopping restoring the best
weights, --resume after SIGKILL replaying the uninterrupted run exactly, devices."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from medclf import cli
from medclf.core.errors import MedclfError
from medclf.core.fileio import read_json
from medclf.core.splits import read_splits

from splits_files import subset_splits

PYTHON = sys.executable
# Subprocesses train with one torch thread: on a shared 2-core machine, two spinning OpenMP threads
# per process made these short runs up to 10x slower (docs/training.md, "Workers and threads").
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def small_splits(brain_partition, tmp_path_factory):
    return subset_splits(brain_partition, tmp_path_factory.mktemp("tiny"))


def base_config(splits, out, **overrides):
    config = {"splits": str(splits), "arch": "resnet18", "img_size": 32, "epochs": 3, "patience": 5,
              "batch_size": 8, "out": str(out), "run_name": "run", "seed": 3, "deterministic": True,
              "progress": False, "device": "cpu", "threads": 1}  # one thread: far faster on a busy 2-core machine
    config.update(overrides)
    return config


def read_history(run_dir, drop=("seconds",)):
    with open(Path(run_dir) / "history.csv", newline="") as fh:
        return [{k: v for k, v in row.items() if k not in drop} for row in csv.DictReader(fh)]


def state_dicts_equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_integration_partition_train_test_on_brain_mri(brain_partition, tmp_path):
    out = tmp_path / "results"
    assert cli.main(["train", "--splits", str(brain_partition), "--arch", "resnet18", "--weights", "none",
                     "--img-size", "64", "--epochs", "2", "--batch-size", "32", "--out", str(out),
                     "--run-name", "r18", "--no-progress", "--seed", "1"]) == 0
    run_dir = out / "r18"
    for name in ("config.json", "history.csv", "best.pt", "last.pt", "curves.png"):
        assert (run_dir / name).is_file(), name
    assert cli.main(["test", "--run", str(run_dir), "--no-progress"]) == 0

    table = read_splits(brain_partition)
    for split in ("test", "val"):
        record = json.loads((run_dir / f"predictions_{split}.json").read_text())
        rows = table.rows(split)
        assert record["schema"] == "medclf.predictions/1"
        assert record["split"] == split
        assert record["classes"] == ["no", "yes"] and record["positive_class"] == "yes"
        assert record["model"]["architecture"] == "resnet18" and record["model"]["checkpoint"] == "best.pt"
        assert record["paths"] == list(rows["path"])
        assert record["labels"] == rows["label_index"].tolist()
        n = len(rows)
        for key in ("predictions", "probabilities", "logits", "predictive probabilities", "label probabilities"):
            assert len(record[key]) == n, key
        for p in record["probabilities"]:
            assert sum(p) == pytest.approx(1.0, abs=1e-12) and all(0 <= v <= 1 for v in p)
        assert record["predictive probabilities"] == record["probabilities"]
        assert record["predictions"] == [max(range(2), key=p.__getitem__) for p in record["probabilities"]]
        assert record["label probabilities"] == [[1.0 if k == y else 0.0 for k in range(2)] for y in record["labels"]]
    config = read_json(run_dir / "config.json")
    assert config["classes"] == ["no", "yes"] and config["seed"] == 1
    assert config["normalisation"]["source"] == "train split"
    assert config["arguments"]["img_size"] == 64 and config["versions"]["torch"] == torch.__version__
    history = read_history(run_dir, drop=())
    assert [int(r["epoch"]) for r in history] == [1, 2]


@pytest.mark.slow
def test_best_weights_are_restored_and_equal_a_run_stopped_at_the_best_epoch(small_splits, tmp_path):
    from medclf.train.training import load_checkpoint, run_training

    # A high learning rate makes the validation loss bounce, so the best epoch is rarely the last.
    summary = run_training(base_config(small_splits, tmp_path, lr=0.05, epochs=4, run_name="long"))
    best = load_checkpoint(tmp_path / "long" / "best.pt")
    assert best["epoch"] == summary["best_epoch"]
    assert state_dicts_equal(summary["model"].state_dict(), best["state_dict"])
    history = read_history(tmp_path / "long")
    losses = [float(r["val_loss"]) for r in history]
    assert best["epoch"] == 1 + losses.index(min(losses))
    # The same seed stopped after the best epoch ends with exactly those weights.
    run_training(base_config(small_splits, tmp_path, lr=0.05, epochs=best["epoch"], run_name="short"))
    last_short = load_checkpoint(tmp_path / "short" / "last.pt")
    assert state_dicts_equal(last_short["model"], best["state_dict"])


def _interrupt_the_second_epoch(monkeypatch):
    """Make training.train_one_epoch raise KeyboardInterrupt (Ctrl+C) on its second call; returns
    the real function, to put back for a resume."""
    from medclf.train import training

    real_epoch = training.train_one_epoch
    calls = {"n": 0}

    def interrupted_on_second_epoch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(training, "train_one_epoch", interrupted_on_second_epoch)
    return real_epoch


@pytest.mark.slow
def test_ctrl_c_still_restores_best_weights_and_writes_curves(small_splits, tmp_path, monkeypatch):
    from medclf.train import training

    _interrupt_the_second_epoch(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        training.run_training(base_config(small_splits, tmp_path))
    assert (tmp_path / "run" / "curves.png").is_file()
    assert training.load_checkpoint(tmp_path / "run" / "best.pt")["epoch"] == 1
    assert len(read_history(tmp_path / "run")) == 1


KILL_WRAPPER = Path(__file__).resolve().parents[1] / "train_killed_after_batches.py"


def _train_cli(splits, out, name, extra=(), env=None, kill_after_batches=None):
    launcher = ["-m", "medclf"] if kill_after_batches is None else [str(KILL_WRAPPER), str(kill_after_batches)]
    args = [PYTHON, *launcher, "train", "--splits", str(splits), "--img-size", "32", "--epochs", "3",
            "--batch-size", "8", "--out", str(out), "--run-name", name, "--seed", "5", "--deterministic",
            "--device", "cpu", "--no-progress", "--augment", "lesion", "--scheduler", "warmup-cosine", *extra]
    return subprocess.run(args, env={**os.environ, **ONE_THREAD, **(env or {})}, capture_output=True, text=True,
                          timeout=600)


@pytest.mark.slow  # trains a run three times in subprocesses
def test_sigkill_mid_epoch_then_resume_equals_uninterrupted_run(small_splits, tmp_path):
    from medclf.train.training import load_checkpoint

    done = _train_cli(small_splits, tmp_path, "whole")
    assert done.returncode == 0, done.stderr
    # 48 train images / batch 8 = 6 batches per epoch: batch 9 is the middle of epoch 2.
    killed = _train_cli(small_splits, tmp_path, "killed", kill_after_batches=9)
    assert killed.returncode == -9, killed.stderr
    assert [r["epoch"] for r in read_history(tmp_path / "killed")] == ["1"]
    resumed = subprocess.run([PYTHON, "-m", "medclf", "train", "--resume", "--out", str(tmp_path),
                              "--run-name", "killed", "--no-progress"], env={**os.environ, **ONE_THREAD},
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stderr
    assert read_history(tmp_path / "killed") == read_history(tmp_path / "whole")
    for name, key in (("last.pt", "model"), ("best.pt", "state_dict")):
        assert state_dicts_equal(load_checkpoint(tmp_path / "killed" / name)[key],
                                 load_checkpoint(tmp_path / "whole" / name)[key]), name


@pytest.mark.slow
def test_checkpoints_load_with_weights_only_and_hold_resume_state(small_splits, tmp_path):
    from medclf.train.training import run_training

    run_training(base_config(small_splits, tmp_path, epochs=1, scheduler="cosine", optimizer="sgd"))
    last = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert {"model", "optimizer", "scheduler", "early_stopping", "rng", "epoch", "history"} <= set(last)
    assert set(last["rng"]) >= {"python", "numpy", "torch", "loader_generator"}
    assert last["epoch"] == 1 and len(last["history"]) == 1


@pytest.mark.slow
def test_existing_run_is_not_overwritten_without_resume(small_splits, tmp_path):
    from medclf.train.training import run_training

    run_training(base_config(small_splits, tmp_path, epochs=1))
    with pytest.raises(MedclfError, match="--resume"):
        run_training(base_config(small_splits, tmp_path, epochs=1))


def test_cuda_requested_without_cuda_warns_and_uses_cpu(capsys):
    from medclf.engine.precision import select_device

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert select_device("cuda").type == "cpu"
    assert "CUDA requested but not available" in capsys.readouterr().err


def test_warmup_cosine_schedule_values():
    from medclf.train.training import warmup_cosine_factor

    assert warmup_cosine_factor(0, 10, 100) == 0
    assert warmup_cosine_factor(5, 10, 100) == 1 / 2
    assert warmup_cosine_factor(10, 10, 100) == 1
    assert warmup_cosine_factor(55, 10, 100) == pytest.approx(1 / 2)
    assert warmup_cosine_factor(100, 10, 100) == pytest.approx(0)


@pytest.mark.slow
def test_freeze_backbone_run_changes_only_the_head(small_splits, tmp_path):
    from medclf.models.architectures import build_model
    from medclf.train.training import load_checkpoint, run_training, seed_everything

    run_training(base_config(small_splits, tmp_path, epochs=1, freeze_backbone=True, augment="flips"))
    trained = load_checkpoint(tmp_path / "run" / "best.pt")["state_dict"]
    seed_everything(3)  # run_training seeds before building the model, so this is its initial state
    initial, _ = build_model("resnet18", 2, "none")
    initial = initial.state_dict()
    changed = sorted(k for k in initial if not torch.equal(initial[k], trained[k]))
    assert changed == ["fc.bias", "fc.weight"]  # running_mean/var and num_batches_tracked included


@pytest.mark.slow
def test_single_logit_head_with_focal_loss_trains_and_predicts_two_columns(small_splits, tmp_path):
    from medclf.infer.predict import run_test
    from medclf.train.training import run_training

    run_training(base_config(small_splits, tmp_path, epochs=1, head="single-logit", balance="focal",
                             focal_alpha="0.25", monitor="val_auc", scheduler="plateau", optimizer="adamw"))
    record = json.loads(run_test(tmp_path / "run", "val", progress=False)[0].read_text())
    assert all(len(row) == 1 for row in record["logits"])
    assert all(len(p) == 2 and abs(sum(p) - 1) < 1e-12 for p in record["probabilities"])


@pytest.mark.slow
def test_tensorboard_without_the_package_is_a_clear_error(small_splits, tmp_path):
    try:
        import tensorboard  # noqa: F401
        pytest.skip("tensorboard is installed here")
    except ImportError:
        pass
    from medclf.train.training import run_training

    with pytest.raises(MedclfError, match="pip install tensorboard"):
        run_training(base_config(small_splits, tmp_path, epochs=1, tensorboard=True))


# ---------------------------------------------------------------- non-finite monitored values, curves

def _evaluate_with_nan_loss_in(epochs_with_nan, monkeypatch):
    """Make medclf.train.training's evaluate report val_loss NaN in the given (1-based) epochs."""
    from medclf.train import training

    real_evaluate, seen = training.evaluate, {"epoch": 0}

    def evaluate(*args, **kwargs):
        seen["epoch"] += 1
        metrics = real_evaluate(*args, **kwargs)
        return {**metrics, "loss": float("nan")} if seen["epoch"] in epochs_with_nan else metrics

    monkeypatch.setattr(training, "evaluate", evaluate)


@pytest.mark.slow
def test_a_monitored_value_never_finite_is_an_error_not_restored_weights(small_splits, tmp_path, monkeypatch, capsys):
    from medclf.train import training

    _evaluate_with_nan_loss_in({1, 2}, monkeypatch)
    with pytest.raises(MedclfError, match=r"val_loss was not a finite number in any of the 2 epoch\(s\) .*"
                                          r"no best.pt was written"):
        training.run_training(base_config(small_splits, tmp_path, epochs=2))
    run_dir = tmp_path / "run"
    assert not (run_dir / "best.pt").exists()
    assert [r["val_loss"] for r in read_history(run_dir)] == ["", ""]  # NaN written as an empty cell
    assert "best weights restored" not in capsys.readouterr().err


@pytest.mark.slow
def test_a_nan_epoch_after_a_finite_one_keeps_the_finite_best_and_says_so(small_splits, tmp_path, monkeypatch,
                                                                          capsys):
    from medclf.train import training

    _evaluate_with_nan_loss_in({2}, monkeypatch)
    summary = training.run_training(base_config(small_splits, tmp_path, epochs=2))
    assert summary["best_epoch"] == 1
    assert training.load_checkpoint(tmp_path / "run" / "best.pt")["epoch"] == 1
    err = capsys.readouterr().err
    assert "best weights restored" in err and "val_loss was NaN in epoch(s) [2]" in err


@pytest.mark.slow
def test_the_run_cli_exits_1_with_one_line_when_nothing_was_finite(small_splits, tmp_path, monkeypatch, capsys):
    _evaluate_with_nan_loss_in({1}, monkeypatch)
    status = cli.main(["train", "--splits", str(small_splits), "--img-size", "32", "--epochs", "1", "--threads", "1",
                       "--weights", "none", "--out", str(tmp_path), "--run-name", "nan", "--no-progress",
                       "--device", "cpu"])
    assert status == 1
    assert "medclf train: error: " in capsys.readouterr().err


def test_curves_show_loss_auc_and_balanced_accuracy_from_history_columns(tmp_path):
    from medclf.train.training import HISTORY_COLUMNS, curve_panels, plot_curves

    history = [{"epoch": e, **{f"{s}_{m}": v / e for s in ("train", "val")
                               for m, v in (("loss", 1.0), ("auc", 1 / 2), ("balanced_accuracy", 3 / 4),
                                            ("accuracy", 2 / 3))}} for e in (1, 2, 3)]
    for monitor, expected in (("val_loss", ["loss", "auc", "balanced_accuracy"]),
                              ("val_auc", ["loss", "auc", "balanced_accuracy"]),
                              ("val_accuracy", ["loss", "auc", "balanced_accuracy", "accuracy"])):
        assert [m for m, _ in curve_panels(monitor)] == expected
        assert plot_curves(tmp_path / f"{monitor}.png", history, monitor, best_epoch=2) == expected
        assert (tmp_path / f"{monitor}.png").stat().st_size > 0
        assert all(f"{s}_{m}" in HISTORY_COLUMNS for m in expected for s in ("train", "val"))
    assert dict(curve_panels("val_auc"))["auc"].endswith("(monitored)")


@pytest.mark.slow
def test_run_training_gives_the_caller_its_torch_switches_back(monkeypatch):
    from medclf.train import training

    before = (torch.are_deterministic_algorithms_enabled(), torch.get_num_threads())

    def flips_everything_then_fails(config, *rest):
        torch.use_deterministic_algorithms(True)
        torch.set_num_threads(1 if before[1] != 1 else 2)
        raise MedclfError("stage failed")

    monkeypatch.setattr(training, "_run_training", flips_everything_then_fails)
    with pytest.raises(MedclfError):
        training.run_training({})
    assert (torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()) == before


def test_the_production_code_has_no_test_hooks(repo_root):
    sources = "\n".join(p.read_text() for p in (repo_root / "python" / "medclf").rglob("*.py"))
    assert "MEDCLF_TEST" not in sources and "SIGKILL" not in sources


@pytest.mark.slow
def test_ema_and_swa_run_interrupted_and_resumed_equals_the_uninterrupted_run(small_splits, tmp_path, monkeypatch):
    from medclf.train import recipes, training

    # A recipe sets the averaging (recorded in config.json with the resolved values); the schedule
    # and weight-decay groups come along in last.pt.
    monkeypatch.setitem(recipes.RECIPES, "averaged", {"ema_decay": 0.5, "swa_epochs": 2, "swa_lr": 5e-4,
                                                      "optimizer": "adamw", "weight_decay": 0.05,
                                                      "no_decay_norm_bias": True, "scheduler": "warmup-cosine"})
    config = dict(base_config(small_splits, tmp_path, epochs=2, augment="flips"), recipe="averaged")
    whole = training.run_training(dict(config, run_name="whole"))
    real_epoch = _interrupt_the_second_epoch(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        training.run_training(dict(config, run_name="killed"))
    monkeypatch.setattr(training, "train_one_epoch", real_epoch)
    training.run_training({"out": str(tmp_path), "run_name": "killed", "resume": True, "progress": False})

    history = read_history(tmp_path / "whole")
    assert read_history(tmp_path / "killed") == history
    assert history[0]["monitored_ema"] and not history[0]["monitored_swa"]  # SWA is evaluated after the last epoch
    assert history[1]["monitored_swa"] and {r["weights"] for r in history} <= {"model", "ema", "swa"}
    best_row = next(r for r in reversed(history) if r["best"] == "1")
    assert best_row["val_loss"] == best_row[f"monitored_{best_row['weights']}"]
    assert whole["weights"] == best_row["weights"]
    for name, key in (("last.pt", "model"), ("last.pt", "ema"), ("last.pt", "swa"), ("best.pt", "state_dict")):
        assert state_dicts_equal(training.load_checkpoint(tmp_path / "killed" / name)[key],
                                 training.load_checkpoint(tmp_path / "whole" / name)[key]), (name, key)
    best = training.load_checkpoint(tmp_path / "whole" / "best.pt")
    assert best["weights"] == best_row["weights"]
    arguments = read_json(tmp_path / "killed" / "config.json")["arguments"]
    assert arguments["recipe"] == "averaged" and arguments["ema_decay"] == 0.5 and arguments["swa_epochs"] == 2
    assert arguments["lr"] == 1e-3  # not in the recipe: the default
