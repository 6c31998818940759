"""The learning-rate range test: schedule, smoothing and suggestion on hand-made values, the model and
optimiser given back unchanged, and `medclf lr-find` on real brain MRI images."""

import copy
import csv
import json
import math

import pytest
import torch
from torch import nn

from medclf import cli
from medclf.core.errors import MedclfError
from medclf.train.lr_find import SmoothedLoss, lr_schedule, range_test, restored, smooth_losses, suggest_lr

# ---------------------------------------------------------------- pure pieces

def test_lr_schedule_runs_from_start_to_end_by_a_constant_factor():
    assert lr_schedule(1 / 1000, 10, 5) == pytest.approx([1 / 1000, 1 / 100, 1 / 10, 1, 10], rel=1e-12)
    lrs = lr_schedule(1e-7, 10, 100)
    assert len(lrs) == 100 and lrs[0] == 1e-7 and lrs[-1] == pytest.approx(10, rel=1e-12)
    ratios = [b / a for a, b in zip(lrs, lrs[1:])]
    assert ratios == pytest.approx([1e8 ** (1 / 99)] * 99, rel=1e-12)


@pytest.mark.parametrize("start, end, steps, option", [
    (0, 1, 10, "--start-lr"), (1, 1, 10, "--end-lr"), (1e-3, 1, 1, "--steps"), (1e-3, 1, 2.5, "--steps")])
def test_lr_schedule_refuses_an_empty_range(start, end, steps, option):
    with pytest.raises(MedclfError, match=f"^{option} "):
        lr_schedule(start, end, steps)


def test_smoothed_loss_is_a_bias_corrected_moving_average():
    # beta 1/2: averages 2, 2, 3/2 divided by 1 - 1/2, 1 - 1/4, 1 - 1/8
    assert smooth_losses([4, 2, 1], beta=1 / 2) == pytest.approx([4, 8 / 3, 12 / 7], rel=1e-12)
    smoother = SmoothedLoss()  # the default beta: the first value is the loss itself, not 2% of it
    assert smoother.update(0.75) == pytest.approx(0.75, rel=1e-12)


def test_suggestion_is_a_tenth_of_the_minimum_and_steepest_descent_is_reported():
    lrs = lr_schedule(1e-6, 1, 7)  # 1e-6, 1e-5, ..., 1: one decade per step
    smoothed = [2, 1.9, 1.5, 0.8, 0.5, 0.6, float("nan")]  # a diverged last step is not the minimum
    suggestion = suggest_lr(lrs, smoothed)
    assert suggestion["minimum_lr"] == pytest.approx(1e-2) and suggestion["lr"] == pytest.approx(1e-3)
    assert suggestion["rule"] == "minimum/10" and suggestion["note"] is None
    # slopes per decade up to the minimum: -1/10, -1/4, -11/20, -1/2, -3/10: steepest at 1e-4
    assert suggestion["steepest_lr"] == pytest.approx(1e-4)


@pytest.mark.parametrize("smoothed, note", [([1, 2, 3], "lower --start-lr"), ([3, 2, 1], "raise --end-lr")])
def test_suggestion_warns_when_the_range_misses_the_minimum(smoothed, note):
    assert note in suggest_lr([1e-3, 1e-2, 1e-1], smoothed)["note"]


def test_suggestion_refuses_a_curve_without_a_finite_value():
    with pytest.raises(MedclfError, match="not a finite number"):
        suggest_lr([1e-3, 1e-2], [float("nan"), float("inf")])


# ---------------------------------------------------------------- the loop on a tiny model

def tiny_model_and_optimizer():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    images, labels = torch.randn(16, 3, 8, 8), torch.arange(16) % 2
    loader = [(images[i:i + 4], labels[i:i + 4]) for i in range(0, 16, 4)]
    nn.functional.cross_entropy(model(images), labels).backward()  # an optimiser with state to give back
    optimizer.step()
    model.eval()
    return model, optimizer, loader


def nested_equal(a, b):
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(nested_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(nested_equal(x, y) for x, y in zip(a, b))
    return a == b


@pytest.fixture
def one_thread():
    """One torch thread: on a busy 2-core machine two spinning threads made this tiny model 20x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_range_test_stops_on_divergence_and_gives_model_and_optimizer_back_unchanged(one_thread):
    model, optimizer, loader = tiny_model_and_optimizer()
    model_before = copy.deepcopy(model.state_dict())
    optimizer_before = copy.deepcopy(optimizer.state_dict())
    lrs = lr_schedule(1e-4, 1e4, 40)
    with restored(model, optimizer):
        rows, stopped = range_test(model, nn.CrossEntropyLoss(), optimizer, loader, lrs, reference_lr=1e-3)
        assert not nested_equal(model.state_dict(), model_before)  # it did train (weights, BatchNorm stats)
        assert optimizer.param_groups[0]["lr"] == rows[-1]["lr"]
    assert stopped.startswith("diverged at step") and len(rows) < len(lrs)
    last, best = rows[-1]["smoothed"], min(row["smoothed"] for row in rows[:-1])
    assert not math.isfinite(last) or last > 4 * best
    assert all(row["smoothed"] <= 4 * min(r["smoothed"] for r in rows[:i + 1]) for i, row in enumerate(rows[:-1]))
    assert [row["lr"] for row in rows] == lrs[:len(rows)]
    assert nested_equal(model.state_dict(), model_before)
    assert nested_equal(optimizer.state_dict(), optimizer_before)
    assert not model.training  # the mode it was in


# ---------------------------------------------------------------- medclf lr-find

@pytest.fixture(scope="module")
def brain_split(brain_mri_root, tmp_path_factory):
    """32 real brain MRI images, partitioned."""
    root = tmp_path_factory.mktemp("lr_find_data")
    for label in ("no", "yes"):
        (root / "data" / label).mkdir(parents=True)
        for path in sorted((brain_mri_root / label).iterdir())[:16]:
            (root / "data" / label / path.name).symlink_to(path)
    assert cli.main(["partition", "--data-root", str(root / "data"), "--out", str(root / "partition"), "--quiet",
                     "--no-dedup"]) == 0
    return root / "partition" / "splits.csv"


def test_cli_writes_csv_plot_and_suggestion_and_keeps_an_earlier_test(brain_split, tmp_path, capsys):
    out = tmp_path / "lr"
    argv = ["lr-find", "--splits", str(brain_split), "--img-size", "32", "--batch-size", "8", "--threads", "1",
            "--no-progress", "--no-amp", "--device", "cpu", "--start-lr", "1e-5", "--end-lr", "1", "--steps", "12",
            "--epochs", "3", "--patience", "2", "--out", str(out)]  # train-only options are accepted
    assert cli.main(argv) == 0
    stdout = capsys.readouterr().out.splitlines()
    record = json.loads((out / "lr_find.json").read_text())
    with open(out / "lr_find.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert record["schema"] == "medclf.lr-find/1" and record["steps_run"] == len(rows) <= 12
    assert [float(r["lr"]) for r in rows] == pytest.approx(lr_schedule(1e-5, 1, 12)[:len(rows)], rel=1e-5)
    assert smooth_losses([float(r["loss"]) for r in rows]) == pytest.approx([float(r["smoothed"]) for r in rows],
                                                                            rel=1e-4)
    suggestion = record["suggestion"]
    assert suggestion["lr"] == pytest.approx(suggestion["minimum_lr"] / 10)
    assert suggestion["minimum_lr"] in [float(r["lr"]) for r in rows] or any(
        float(r["lr"]) == pytest.approx(suggestion["minimum_lr"], rel=1e-5) for r in rows)
    assert record["arguments"]["img_size"] == 32 and record["arguments"]["batch_size"] == 8
    assert (out / "lr_find.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert stdout[0].startswith(f"suggested --lr {suggestion['lr']:.2g} (minimum/10") and stdout[-1] == str(out)

    before = (out / "lr_find.json").read_bytes()
    assert cli.main(argv) == 1
    assert "holds an earlier range test" in capsys.readouterr().err
    assert (out / "lr_find.json").read_bytes() == before


@pytest.mark.slow
def test_the_range_test_descends_the_training_loss_with_its_mixing(brain_split, tmp_path, monkeypatch):
    """lr-find follows what `train` would minimise: the smoothed training loss and the mixer, not
    the unsmoothed validation criterion (the curve's minimum depends on it)."""
    from medclf.train import lr_find

    seen = {}
    real_range_test = lr_find.range_test

    def spy(model, criterion, optimizer, loader, lrs, reference_lr, *args, **kwargs):
        seen["criterion"], seen["mixer"] = criterion, kwargs.get("mixer")
        return real_range_test(model, criterion, optimizer, loader, lrs[:3], reference_lr, *args, **kwargs)

    monkeypatch.setattr(lr_find, "range_test", spy)
    assert cli.main(["lr-find", "--splits", str(brain_split), "--img-size", "32", "--batch-size", "8", "--threads",
                     "1", "--no-progress", "--no-amp", "--device", "cpu", "--steps", "3", "--label-smoothing", "0.2",
                     "--mixup-alpha", "0.4", "--out", str(tmp_path / "lr")]) == 0
    assert seen["criterion"].label_smoothing == pytest.approx(1 / 5)
    assert seen["mixer"] is not None
