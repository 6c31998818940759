"""medclf quality: measures on hand-made and real images, the seed003 preset's formulas, train-only
calibration (spy), the gate, `test --quality-gate`, report's passed subset and the degradation study."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageFilter

from medclf import cli
from medclf.core import predictions
from medclf.core.errors import MedclfError
from medclf.data.imageio import read_image
from medclf.quality import degradation
from medclf.quality import gate as quality

from splits_files import subset_splits


def rgb_image(array):
    return Image.fromarray(np.asarray(array, dtype=np.uint8), "RGB")


def test_seed003_laplacian_of_a_white_dot_on_the_colour_image_hand_value():
    """5x5 black, centre pixel white: OpenCV's 3x3 Laplacian gives -4*255 there and +255 at its
    four neighbours, 0 elsewhere, in each of the 3 channels: variance (1020^2 + 4*255^2)/25 = 52020."""
    dot = np.zeros((5, 5, 3))
    dot[2, 2] = 255
    assert quality.seed003_measures(rgb_image(dot))["seed003_laplacian_var"] == pytest.approx(52020)
    red = np.zeros((5, 5, 3))
    red[2, 2, 0] = 255  # one channel only: the 25 non-zero-pattern values among 75 -> 1300500/75
    assert quality.seed003_measures(rgb_image(red))["seed003_laplacian_var"] == pytest.approx(1300500 / 75)


@pytest.mark.parametrize("colour,expected", [
    ((255, 255, 255), 0.52),  # grey 1: ratio (1 - 0)/2 = 0.5 -> first step above it: 0.52
    ((51, 51, 51), 0.12),     # grey 0.2: ratio 0.1 is not < 0.1 -> 0.12
    ((255, 0, 0), 0.04),      # RGB red is BGR (0, 0, 255), greyed as if RGB: 0.0721 / 2 = 0.036 -> 0.04
    ((0, 0, 255), 0.12),      # RGB blue -> 0.2125 / 2 = 0.10625 -> 0.12
])
def test_seed003_stepped_is_low_contrast_loop_hand_values(colour, expected):
    half = np.zeros((10, 10, 3))
    half[5:] = colour
    assert quality.seed003_measures(rgb_image(half))["seed003_contrast"] == pytest.approx(expected)


def test_seed003_preset_passes_strictly_above_15_and_0_15():
    rules = quality.seed003_gate()["rules"]
    assert quality.gate_verdict({"seed003_laplacian_var": 15.5, "seed003_contrast": 0.16}, rules) == "passed"
    verdict = quality.gate_verdict({"seed003_laplacian_var": 15.0, "seed003_contrast": 0.14}, rules)
    assert verdict == "rejected: seed003_laplacian_var 15 not > 15; seed003_contrast 0.14 not > 0.15"


def test_contrast_exposure_and_blank_measures_hand_values():
    half = np.zeros((256, 256, 3))
    half[:, 128:] = 255
    m = quality.measure_image(rgb_image(half))
    assert m["contrast_range"] == pytest.approx(1.0)
    assert m["mean_luminance"] == pytest.approx(1 / 2, abs=1e-3)
    assert m["contrast_rms"] == pytest.approx(1 / 2, abs=0.01)
    assert m["dark_fraction"] == pytest.approx(1 / 2) and m["bright_fraction"] == pytest.approx(1 / 2)
    assert m["blank"] == 0
    flat = quality.measure_image(rgb_image(np.full((64, 80, 3), 90)))
    assert flat["blank"] == 1 and flat["laplacian_var"] == pytest.approx(0) and flat["contrast_range"] == 0


@pytest.fixture(scope="module")
def real_images(brain_mri_root, ham_root):
    brain = sorted((brain_mri_root / "yes").iterdir())[:3]
    ham = sorted((ham_root / "images").iterdir())[:3]
    return [read_image(p) for p in brain + ham]


@pytest.mark.parametrize("scale", [0.9, 1.5, 2.0])
def test_measures_are_resolution_invariant_when_an_image_is_resized(real_images, scale):
    for img in real_images:
        base = quality.measure_image(img)
        resized = quality.measure_image(img.resize((round(img.width * scale), round(img.height * scale)),
                                                   Image.Resampling.LANCZOS))
        for m in ("laplacian_var", "tenengrad"):
            assert resized[m] == pytest.approx(base[m], rel=0.05), m
        for m in ("contrast_range", "contrast_rms", "mean_luminance"):
            assert resized[m] == pytest.approx(base[m], abs=0.02), m
    # the seed's full-resolution Laplacian is not: it changes several-fold with the file's size
    img = real_images[0]
    seed_2x = quality.seed003_measures(img.resize((img.width * 2, img.height * 2), Image.Resampling.LANCZOS))
    assert seed_2x["seed003_laplacian_var"] < 0.5 * quality.seed003_measures(img)["seed003_laplacian_var"]


def test_blur_strictly_lowers_sharpness(real_images):
    for img in real_images:
        values = [quality.measure_image(degradation.degrade(img, "blur", s)) for s in degradation.DEGRADATIONS["blur"]]
        for m in ("laplacian_var", "tenengrad"):
            series = [v[m] for v in values]
            assert all(a > b for a, b in zip(series, series[1:])), (m, series)


def test_degradations_change_what_they_should(real_images):
    img = real_images[3]
    clean = quality.measure_image(img)
    assert np.array_equal(np.asarray(degradation.degrade(img, "blur", 0)), np.asarray(img))
    assert quality.measure_image(degradation.degrade(img, "gamma", 2))["mean_luminance"] < clean["mean_luminance"]
    assert quality.measure_image(degradation.degrade(img, "contrast", 0.25))["contrast_rms"] < clean["contrast_rms"] / 2
    assert np.asarray(degradation.degrade(img, "jpeg", 5)).shape == np.asarray(img).shape


def test_calibration_percentiles_hand_values():
    rows = pd.DataFrame({m: np.arange(1, 102, dtype=float) for m in quality.MEASURES})
    rules = quality.calibrate(rows, percentile=1)
    assert rules["laplacian_var"] == {"op": ">=", "value": 2.0}  # 1st percentile of 1..101
    assert rules["dark_fraction"] == {"op": "<=", "value": 100.0}  # 99th percentile
    no_clipping = rows.assign(bright_fraction=np.r_[np.zeros(100), 0.5])
    assert quality.calibrate(no_clipping)["bright_fraction"] == {"op": "<=", "value": quality.MIN_CLIPPED_FRACTION}
    assert rules["mean_luminance_max"] == {"measure": "mean_luminance", "op": "<=", "value": 100.0}
    with pytest.raises(MedclfError, match="--percentile 60"):
        quality.calibrate(rows, percentile=60)


@pytest.fixture(scope="module")
def tiny_brain(brain_partition, tmp_path_factory):
    return subset_splits(brain_partition, tmp_path_factory.mktemp("quality") / "tiny")


def test_thresholds_never_read_test_images(tiny_brain, tmp_path, monkeypatch):
    from medclf.core.splits import read_splits

    table = read_splits(tiny_brain)
    read = []
    real_read = quality.read_image
    monkeypatch.setattr(quality, "read_image", lambda p: read.append(Path(p)) or real_read(p))
    gate, train = quality.calibrated_gate(table, progress=False)
    train_files = {table.resolve(p) for p in table.rows("train")["path"]}
    assert set(read) == train_files and len(read) == len(train_files)
    # the stage measures val and test for quality.csv only after the thresholds are fixed
    read.clear()
    written = quality.quality_of_splits(table, tmp_path, progress=False)
    assert written["gate_content"]["rules"] == gate["rules"]
    first_other = next(i for i, p in enumerate(read) if p not in train_files)
    assert all(p in train_files for p in read[:first_other]) and first_other == len(train_files)


def test_gate_file_is_validated(tmp_path):
    bad = tmp_path / "quality.json"
    bad.write_text(json.dumps({"schema": "medclf.quality/1", "rules": {"sharpness": {"op": ">", "value": 1}}}))
    with pytest.raises(MedclfError, match="rule 'sharpness'"):
        quality.read_gate(bad)


def test_passed_subset_keeps_only_passed_rows_in_order():
    record = {"paths": ["a", "b", "c"], "labels": [0, 1, 1], "probabilities": [[1, 0], [0, 1], [0.5, 0.5]],
              "quality": ["passed", "rejected: blank 1 not < 1", "passed"], "classes": ["x", "y"]}
    subset = predictions.passed_subset(record)
    assert subset["paths"] == ["a", "c"] and subset["labels"] == [0, 1] and subset["classes"] == ["x", "y"]
    assert predictions.passed_subset({"labels": [0]}) is None


@pytest.mark.slow
def test_quality_gate_through_test_and_report_and_the_degradation_study(tiny_brain, tmp_path, capsys):
    from medclf.train.training import run_training

    run_training({"splits": str(tiny_brain), "img_size": 32, "epochs": 1, "batch_size": 8, "out": str(tmp_path),
                  "run_name": "run", "progress": False, "device": "cpu", "threads": 1})
    run = tmp_path / "run"
    assert cli.main(["test", "--run", str(run), "--no-progress"]) == 0
    assert cli.main(["quality", "--run", str(run), "--degrade", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "false-reject rate on clean test images" in out and (run / "degradation.png").is_file()
    study = json.loads((run / "degradation.json").read_text())
    assert len(study["rows"]) == sum(len(v) for v in degradation.DEGRADATIONS.values())
    assert study["inference"]["precision"] == "fp32"  # --amp not given
    csv = pd.read_csv(run / "quality.csv")
    assert list(csv["split"].unique()) == ["train", "val", "test"] and "verdict" in csv
    assert cli.main(["test", "--run", str(run), "--quality-gate", str(run / "quality.json"), "--no-progress"]) == 0
    predictions = json.loads((run / "predictions_test.json").read_text())
    assert len(predictions["quality"]) == len(predictions["labels"])
    assert all(v == "passed" or v.startswith("rejected: ") for v in predictions["quality"])
    test_csv = csv[csv["split"] == "test"].set_index("path")
    assert predictions["quality"] == [test_csv.loc[p, "verdict"] for p in predictions["paths"]]
    assert cli.main(["report", "--run", str(run), "--engine", "python", "--no-plots"]) == 0
    report = (run / "report_test.md").read_text()
    n_passed = predictions["quality"].count("passed")
    assert "## Quality gate" in report and f"{n_passed} of {len(predictions['labels'])} images passed" in report
    results = json.loads((run / "results_test.json").read_text())
    assert results["quality_gate"]["passed"] == n_passed
    assert cli.main(["test", "--run", str(run), "--quality-gate", str(tmp_path / "none.json"), "--no-progress"]) == 1
    assert "none.json: file not found" in capsys.readouterr().err


def test_folder_mode_needs_out_and_writes_seed003_verdicts(brain_mri_root, tmp_path, capsys):
    assert cli.main(["quality", "--folder", str(brain_mri_root / "no"), "--no-progress"]) == 1
    assert "--folder needs --out" in capsys.readouterr().err
    assert cli.main(["quality", "--folder", str(brain_mri_root / "no"), "--out", str(tmp_path), "--preset", "seed003",
                     "--no-progress"]) == 0
    rows = pd.read_csv(tmp_path / "quality.csv")
    assert len(rows) == len([p for p in (brain_mri_root / "no").iterdir()]) and "verdict" in rows
