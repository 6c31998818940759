"""Training with several processes (torchrun + DistributedDataParallel), on the CPU with gloo and 2
processes on 127.0.0.1 (torchrun --standalone picks a free port): gradients averaged over ranks,
a normal run folder written once, validation metrics on every val image exactly once, a killed
rank ending the job with a clear error and --resume completing it; plus the pieces (gathering in
split order, the distributed class-balanced sampler) on hand-made inputs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch.nn import functional as F

from medclf import cli
from medclf.core.fileio import read_json
from medclf.engine import distributed
from medclf.engine.steps import epoch_metrics
from medclf.train import imbalance
from medclf.train.training import load_checkpoint, run_training

from splits_files import subset_splits

PYTHON = sys.executable
KILL_WRAPPER = Path(__file__).resolve().parents[1] / "train_killed_after_batches.py"
ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # torchrun would set it too, with a warning banner


@pytest.fixture(scope="module")
def odd_val_splits(brain_partition, tmp_path_factory):
    """12 train images (6 per class), 9 val images (5 + 4), 2 test."""
    return subset_splits(brain_partition, tmp_path_factory.mktemp("odd"), {"train": 6, "val": 5, "test": 1},
                         drop_val=1)


def train_cli(capfd, monkeypatch, args, kill=None):
    """`medclf train ARGS` run here (the --nproc launcher: torchrun and its processes are
    subprocesses); with kill="N@R" torchrun starts the kill wrapper instead of `python -m medclf`,
    and rank R kills itself after N batches. Returns (exit status, stdout, stderr)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # torchrun would set it too, with a warning banner
    if kill is not None:
        monkeypatch.setattr(distributed, "WORKER", [str(KILL_WRAPPER), kill])
    capfd.readouterr()
    status = cli.main(["train", *args])
    out, err = capfd.readouterr()
    monkeypatch.setattr(distributed, "WORKER", ["-m", "medclf"])
    return status, out, err


def ddp_args(splits, out, name, *extra):
    return ["--splits", str(splits), "--img-size", "32", "--batch-size", "2", "--out", str(out), "--run-name", name,
            "--seed", "4", "--deterministic", "--device", "cpu", "--threads", "1", "--no-progress", "--nproc", "2",
            *extra]


def history(run_dir):
    frame = pd.read_csv(Path(run_dir) / "history.csv", dtype=str, keep_default_na=False)
    return frame.drop(columns=["seconds"]).to_dict("records")


@pytest.fixture(scope="module")
def two_process_run(odd_val_splits, tmp_path_factory):
    """A 2-epoch run with 2 processes: 12 train images = 6 per process = 3 batches of 2 per epoch."""
    out = tmp_path_factory.mktemp("ddp")
    done = subprocess.run([PYTHON, "-m", "medclf", "train", *ddp_args(odd_val_splits, out, "whole", "--epochs", "2",
                                                                       "--patience", "5")],
                          env={**os.environ, **ONE_THREAD}, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return out, done


@pytest.mark.slow
def test_one_step_on_two_ranks_of_half_the_batch_equals_one_process_on_the_whole_batch(brain_partition, tmp_path,
                                                                                      capfd, monkeypatch):
    # 8 train images, one SGD step per run (batch 8, or 4 per process); the backbone frozen keeps
    # BatchNorm in eval mode, so only the gradient averaging of the head can differ. fp32: bf16
    # rounds a batch of 4 and a batch of 8 differently.
    splits = subset_splits(brain_partition, tmp_path / "eight", {"train": 4, "val": 2, "test": 1})
    common = ["--epochs", "1", "--freeze-backbone", "--optimizer", "sgd", "--lr", "0.5", "--no-amp"]
    status, _, err = train_cli(capfd, monkeypatch, ddp_args(splits, tmp_path, "two", *common, "--batch-size", "4"))
    assert status == 0, err
    one = run_training({"splits": str(splits), "img_size": 32, "batch_size": 8, "out": str(tmp_path),
                        "run_name": "one", "seed": 4, "deterministic": True, "device": "cpu", "threads": 1,
                        "progress": False, "epochs": 1, "freeze_backbone": True, "optimizer": "sgd", "lr": 0.5,
                        "amp": False})
    assert one["epochs"] == 1
    after_two = load_checkpoint(tmp_path / "two" / "last.pt")["model"]
    after_one = load_checkpoint(tmp_path / "one" / "last.pt")["model"]
    assert after_two.keys() == after_one.keys()
    for key in after_one:
        assert torch.allclose(after_two[key].float(), after_one[key].float(), rtol=1e-5, atol=1e-6), key
    # the step moved the head: the comparison is not between two untouched initialisations
    first = load_checkpoint(tmp_path / "one" / "best.pt")["state_dict"]["fc.weight"]
    assert not torch.allclose(first, run_initial_head(splits, tmp_path))


def run_initial_head(splits, tmp_path):
    """The head's weights before any step (the same seed, lr 0: the step changes nothing)."""
    run_training({"splits": str(splits), "img_size": 32, "batch_size": 8, "out": str(tmp_path), "run_name": "lr0",
                  "seed": 4, "deterministic": True, "device": "cpu", "threads": 1, "progress": False, "epochs": 1,
                  "freeze_backbone": True, "optimizer": "sgd", "lr": 1e-30})
    return load_checkpoint(tmp_path / "lr0" / "best.pt")["state_dict"]["fc.weight"]


@pytest.mark.slow  # torchrun trains a run on two processes
def test_two_processes_write_a_normal_run_folder_once(two_process_run):
    out, done = two_process_run
    run = out / "whole"
    assert done.stdout.splitlines() == [str(run)]  # the run folder, printed by rank 0 only
    assert sorted(p.name for p in run.iterdir()) == ["best.pt", "config.json", "curves.png", "history.csv",
                                                     "last.pt", "partition.json", "splits.csv"]
    assert [r["epoch"] for r in history(run)] == ["1", "2"]
    assert done.stderr.count("epoch   2 ") == 1 and done.stderr.count("best weights restored") == 1
    config = json.loads((run / "config.json").read_text())
    assert config["world_size"] == 2 and config["counts"]["val"] == 9
    # the two processes mapped one shared cache per split (train, val)
    assert len([p for p in (out / "image-cache").iterdir() if p.is_dir()]) == 2


def assert_best_val_metrics_are_those_of_one_process_on_every_val_image_once(run):
    """The best history row's val metrics equal those recomputed from `medclf test`'s val
    predictions of best.pt (written by rank 0)."""
    assert cli.main(["test", "--run", str(run), "--no-progress"]) == 0
    predictions = read_json(run / "predictions_val.json")
    assert len(predictions["labels"]) == 9
    best = [r for r in history(run) if r["best"] == "1"][-1]
    assert predictions["model"]["epoch"] == int(best["epoch"])
    logits = torch.tensor(predictions["logits"], dtype=torch.float32)
    labels = torch.tensor(predictions["labels"])
    loss = float(F.cross_entropy(logits, labels)) * len(labels)
    single = epoch_metrics(loss, len(labels), labels.numpy(), logits)
    for key, value in single.items():
        assert float(best[f"val_{key}"]) == pytest.approx(value, rel=1e-5, abs=1e-6), key
    return best


def skip_where_fp32_is_forced(pytestconfig):
    """--fp32 reaches this process only: the torchrun processes would train in bf16 on a bf16 CPU
    while `medclf test` here recomputes in fp32, a mix no real CPU makes."""
    if pytestconfig.getoption("--fp32"):
        pytest.skip("--fp32 does not reach the torchrun processes")


@pytest.mark.slow  # torchrun trains a run on two processes
def test_validation_metrics_are_those_of_one_process_on_every_val_image_once(two_process_run, pytestconfig):
    skip_where_fp32_is_forced(pytestconfig)
    out, _ = two_process_run
    assert_best_val_metrics_are_those_of_one_process_on_every_val_image_once(out / "whole")


@pytest.mark.slow
def test_ema_and_swa_weights_under_two_processes_are_validated_and_saved_as_rank_0_holds_them(odd_val_splits, tmp_path,
                                                                                               capfd, monkeypatch,
                                                                                               pytestconfig):
    skip_where_fp32_is_forced(pytestconfig)
    # Parameters agree between ranks, BatchNorm buffers do not (each rank's EMA averages its own
    # statistics; SWA recomputes them on its own shard): rank 0's are shared before validation
    # and are the ones saved, so the row's metrics must be best.pt's on the whole val split.
    status, _, err = train_cli(capfd, monkeypatch, ddp_args(odd_val_splits, tmp_path, "averaged", "--epochs", "2",
                                                            "--patience", "5", "--ema-decay", "0.5", "--swa-epochs", "1"))
    assert status == 0, err
    rows = history(tmp_path / "averaged")
    assert [bool(r["monitored_ema"]) for r in rows] == [True, True] and [bool(r["monitored_swa"]) for r in rows] == \
        [False, True]
    best = assert_best_val_metrics_are_those_of_one_process_on_every_val_image_once(tmp_path / "averaged")
    assert best["val_loss"] == best[f"monitored_{best['weights']}"]


@pytest.mark.slow
def test_a_rank_killed_mid_epoch_ends_the_job_clearly_and_resume_completes_it(two_process_run, odd_val_splits,
                                                                             capfd, monkeypatch):
    out, _ = two_process_run
    # 3 batches per epoch and process: rank 1 dies after batch 4, in the middle of epoch 2
    status, _, err = train_cli(capfd, monkeypatch, ddp_args(odd_val_splits, out, "killed", "--epochs", "2",
                                                             "--patience", "5"), kill="4@1")
    assert status == 1, err
    last_line = err.strip().splitlines()[-1]
    assert last_line.startswith("medclf train: error: torchrun: a training process failed")
    assert f"medclf train --resume --out {out} --run-name killed --nproc 2" in last_line
    assert [r["epoch"] for r in history(out / "killed")] == ["1"]
    status, _, err = train_cli(capfd, monkeypatch, ["--resume", "--out", str(out), "--run-name", "killed",
                                                    "--nproc", "2", "--no-progress"])
    assert status == 0, err
    assert "resuming" in err
    assert history(out / "killed") == history(out / "whole")
    for name, key in (("last.pt", "model"), ("best.pt", "state_dict")):
        a, b = load_checkpoint(out / "killed" / name)[key], load_checkpoint(out / "whole" / name)[key]
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    # both runs read the one shared cache of each split
    assert len([p for p in (out / "image-cache").iterdir() if p.is_dir()]) == 2


# ---------------------------------------------------------------- the pieces, on hand-made inputs

def test_distributed_weighted_sampler_splits_one_epoch_of_draws_between_ranks():
    weights = torch.as_tensor(imbalance.sample_weights([0, 0, 0, 1, 1], 2))  # 1/3, 1/3, 1/3, 1/2, 1/2
    shares = [imbalance.DistributedWeightedSampler(weights, 2, rank) for rank in (0, 1)]
    for sampler in shares:
        sampler.set_epoch(7)
    draws = [list(s) for s in shares]
    assert [len(d) for d in draws] == [3, 3] and [len(s) for s in shares] == [3, 3]
    generator = torch.Generator()
    generator.manual_seed(7)
    one_epoch = torch.multinomial(weights.double(), 5, replacement=True, generator=generator).tolist()
    padded = one_epoch + one_epoch[:1]
    assert draws == [padded[0::2], padded[1::2]]
    shares[0].set_epoch(8)
    assert list(shares[0]) != draws[0] or list(shares[1]) != draws[1]


def test_torchrun_gets_the_arguments_without_nproc():
    argv = ["train", "--splits", "s.csv", "--nproc", "2", "--epochs", "3", "--nproc=4"]
    assert distributed.without_option(argv, "--nproc") == ["train", "--splits", "s.csv", "--epochs", "3"]
    command = distributed.launch_command(["train", "--epochs", "3"], 2)
    assert command[1:6] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    assert command[6:] == ["-m", "medclf", "train", "--epochs", "3"]


@pytest.mark.slow
def test_sync_bn_on_the_cpu_is_refused_in_one_line(odd_val_splits, tmp_path, capsys):
    status = cli.main(["train", "--splits", str(odd_val_splits), "--img-size", "32", "--epochs", "1", "--out",
                       str(tmp_path), "--run-name", "r", "--device", "cpu", "--sync-bn", "--no-progress",
                       "--threads", "1"])
    assert status == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "medclf train: error: --sync-bn needs CUDA (SyncBatchNorm runs on nccl); on the CPU leave it out: "
        "each process then normalises its own batch")
