"""Mixed precision (medclf.engine.precision) and the device data path (medclf.data.device_data): which
precision is chosen where, what a run records, bf16 runs deterministic and resumable, bf16
predictions close to fp32 ones, and device-resident batches equal to the DataLoader's."""

import json
import shutil
import warnings

import numpy as np
import pytest
import torch
from torchvision.transforms import v2

from medclf import cli
from medclf.data import datasets as data
from medclf.data import device_data
from medclf.engine import precision
from medclf.train.training import load_checkpoint, run_training

from splits_files import subset_splits

CUDA = torch.cuda.is_available()
NO_CUDA = "no CUDA device in this session: the GPU path is tested only where torch.cuda.is_available()"
# Largest |p_bf16 - p_fp32| accepted for test-split probabilities of the same weights: bf16 keeps
# 8 bits of mantissa (relative error 2^-9 per rounding), which moves these probabilities by ~1e-2.
BF16_PROBABILITY_TOLERANCE = 0.05


@pytest.mark.parametrize("cpu_bf16, amp, expected", [
    (True, None, "bf16"), (True, True, "bf16"), (True, False, "fp32"),
    (False, None, "fp32"), (False, True, "fp32"), (False, False, "fp32"),
])
def test_bf16_is_chosen_on_the_cpu_only_where_it_is_supported_and_asked_for(monkeypatch, cpu_bf16, amp, expected):
    monkeypatch.setattr(precision, "cpu_supports_bf16", lambda: cpu_bf16)
    chosen = precision.choose_precision("cpu", amp)
    assert chosen.name == expected and chosen.amp == (expected == "bf16")
    assert chosen.memory_format == (torch.channels_last if expected == "bf16" else torch.contiguous_format)
    assert chosen.grad_scaler() is None  # bf16 has fp32's exponent range: no loss scaling
    if expected == "fp32" and amp is not False:
        assert "no native bf16" in chosen.reason  # the log says why mixed precision is off


@pytest.mark.parametrize("cuda_bf16, expected", [(True, "bf16"), (False, "fp16")])
def test_cuda_gets_bf16_where_supported_else_fp16(monkeypatch, cuda_bf16, expected):
    monkeypatch.setattr(precision, "cuda_supports_bf16", lambda: cuda_bf16)
    chosen = precision.choose_precision("cuda")
    assert chosen.name == expected and chosen.memory_format == torch.channels_last
    assert precision.choose_precision("cuda", False).name == "fp32"


def test_autocast_runs_matmuls_in_bf16_and_fp32_stays_fp32(monkeypatch):
    monkeypatch.setattr(precision, "cpu_supports_bf16", lambda: True)
    layer, x = torch.nn.Linear(4, 2), torch.randn(3, 4)
    with precision.autocast_for("cpu"):
        assert layer(x).dtype == torch.bfloat16
    with precision.autocast_for("cpu", amp=False):
        assert layer(x).dtype == torch.float32


# ---------------------------------------------------------------- bf16 runs on real images

def _config(splits, out, name, **overrides):
    config = {"splits": str(splits), "img_size": 32, "epochs": 2, "batch_size": 8, "out": str(out),
              "run_name": name, "seed": 4, "deterministic": True, "progress": False, "device": "cpu",
              "threads": 1, "augment": "flip"}
    config.update(overrides)
    return config


@pytest.fixture(scope="module")
def bf16_runs(brain_partition, tmp_path_factory):
    """Two identical bf16 runs and one --no-amp run on 48 real brain MRI images (bf16 forced on,
    so the test means the same on CPUs without native bf16, where it is only slower)."""
    base = tmp_path_factory.mktemp("precision")
    splits = subset_splits(brain_partition, base / "tiny")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(precision, "cpu_supports_bf16", lambda: True)
        for name in ("a", "b"):
            run_training(_config(splits, base / "results", name))
        run_training(_config(splits, base / "results", "fp32", amp=False))
    return splits, base / "results"


def _weights(run, name="last.pt", key="model"):
    return load_checkpoint(run / name)[key]


@pytest.mark.slow
def test_two_identical_bf16_runs_give_identical_weights_and_record_bf16(bf16_runs):
    _, results = bf16_runs
    a, b = _weights(results / "a"), _weights(results / "b")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    config = json.loads((results / "a" / "config.json").read_text())
    assert config["precision"] == "bf16" and config["amp"] is True
    fp32 = json.loads((results / "fp32" / "config.json").read_text())
    assert fp32["precision"] == "fp32" and fp32["amp"] is False and fp32["arguments"]["amp"] is False
    # The weights stay fp32 under autocast (only the arithmetic is bf16), but differ from fp32 training.
    w = _weights(results / "fp32")
    assert all(a[k].dtype == w[k].dtype for k in a) and not torch.equal(a["fc.weight"], w["fc.weight"])


@pytest.mark.slow
def test_a_bf16_run_interrupted_and_resumed_equals_the_uninterrupted_one(bf16_runs, tmp_path, monkeypatch):
    from medclf.train import training

    splits, results = bf16_runs
    monkeypatch.setattr(precision, "cpu_supports_bf16", lambda: True)
    real_epoch, calls = training.train_one_epoch, {"n": 0}

    def interrupted_in_epoch_two(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(training, "train_one_epoch", interrupted_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        run_training(_config(splits, tmp_path, "a"))
    monkeypatch.setattr(training, "train_one_epoch", real_epoch)
    run_training({"out": str(tmp_path), "run_name": "a", "resume": True, "progress": False})
    resumed, whole = _weights(tmp_path / "a"), _weights(results / "a")
    assert all(torch.equal(resumed[k], whole[k]) for k in whole)
    assert json.loads((tmp_path / "a" / "config.json").read_text())["precision"] == "bf16"


@pytest.mark.slow
def test_bf16_test_predictions_are_within_tolerance_of_fp32_and_say_how_they_were_made(bf16_runs, tmp_path,
                                                                                       monkeypatch):
    from medclf.infer.predict import run_test

    _, results = bf16_runs
    monkeypatch.setattr(precision, "cpu_supports_bf16", lambda: True)
    run = tmp_path / "a"
    shutil.copytree(results / "a", run)
    [bf16_path] = run_test(run, "val", progress=False, out_dir=tmp_path / "bf16")  # default: as trained
    assert cli.main(["test", "--run", str(run), "--split", "val", "--no-amp", "--no-progress"]) == 0
    bf16, fp32 = (json.loads(p.read_text()) for p in (bf16_path, run / "predictions_val.json"))
    assert bf16["inference"]["precision"] == "bf16" and fp32["inference"]["precision"] == "fp32"
    difference = np.abs(np.array(bf16["probabilities"]) - np.array(fp32["probabilities"]))
    assert 0 < difference.max() <= BF16_PROBABILITY_TOLERANCE
    # A run trained with --no-amp is tested in fp32 unless --amp is given.
    [again] = run_test(results / "fp32", "val", progress=False, out_dir=tmp_path / "fp32")
    assert json.loads(again.read_text())["inference"]["precision"] == "fp32"


# ---------------------------------------------------------------- the device data path

def _flip_loader(n=10, batch_size=4):
    cache = np.random.default_rng(0).integers(0, 256, (n, 3, 8, 8), dtype=np.uint8)
    transform = v2.Compose([v2.RandomHorizontalFlip(), v2.ToDtype(torch.float32, scale=True),
                            v2.Normalize([0.5] * 3, [0.25] * 3)])
    dataset = data.CachedImageDataset(cache, list(range(n)), transform)
    return data.make_loader(dataset, batch_size, generator=torch.Generator().manual_seed(1))


def _batches(loader, seed=7):
    torch.manual_seed(seed)  # the random flips draw from torch's global stream, as in training
    return [(images.clone(), labels.clone()) for images, labels in loader]


def test_device_batches_on_the_cpu_equal_the_dataloaders_batches():
    loader = _flip_loader()
    expected, got = _batches(loader), _batches(device_data.DeviceBatches(loader, "cpu"))
    assert len(got) == len(expected) == 3  # 10 images in batches of 4: 4, 4, 2
    for (images, labels), (want_images, want_labels) in zip(got, expected):
        assert torch.equal(images, want_images) and torch.equal(labels, want_labels)
    flipped = [not torch.equal(images[i], _batches(device_data.DeviceBatches(loader, "cpu"), seed=8)[0][0][i])
               for images, _ in got[:1] for i in range(4)]
    assert any(flipped)  # the flips are random: another seed flips other images


def test_pinned_loader_keeps_the_batches_and_the_cpu_keeps_its_loader():
    loader = _flip_loader()
    assert device_data.for_device(loader, "cpu") is loader
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pin_memory without an accelerator only warns
        pinned = _batches(device_data.pinned(loader))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(pinned, _batches(loader)))


@pytest.mark.parametrize("n_bytes, free, fits", [(100, 400, True), (101, 400, False), (0, 0, True)])
def test_a_cache_goes_to_the_device_only_within_a_quarter_of_its_free_memory(n_bytes, free, fits):
    assert device_data.cache_fits(n_bytes, free) is fits


# ---------------------------------------------------------------- CUDA only

@pytest.mark.skipif(not CUDA, reason=NO_CUDA)
def test_cuda_device_batches_equal_the_cpu_loader_and_fall_back_to_pinned_memory():
    loader = _flip_loader()
    on_device = device_data.for_device(loader, "cuda")
    assert isinstance(on_device, device_data.DeviceBatches)
    for (images, labels), (want, want_labels) in zip(_batches(on_device), _batches(loader)):
        assert images.is_cuda and torch.allclose(images.cpu(), want, atol=1e-6)
        assert torch.equal(labels.cpu(), want_labels)
    assert not isinstance(device_data.for_device(loader, "cuda", free_bytes=0), device_data.DeviceBatches)


@pytest.mark.slow
@pytest.mark.skipif(not CUDA, reason=NO_CUDA)
def test_a_cuda_run_uses_mixed_precision_and_gives_back_cudnn_benchmark(bf16_runs, tmp_path):
    splits, _ = bf16_runs
    benchmark = torch.backends.cudnn.benchmark
    run_training(_config(splits, tmp_path, "cuda", device="cuda", deterministic=False, augment="lesion"))
    config = json.loads((tmp_path / "cuda" / "config.json").read_text())
    assert config["device"].startswith("cuda") and config["precision"] in ("bf16", "fp16")
    assert torch.backends.cudnn.benchmark == benchmark
    if config["precision"] == "fp16":
        assert load_checkpoint(tmp_path / "cuda" / "last.pt")["scaler"]  # the GradScaler's state is resumable
