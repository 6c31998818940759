"""Synthetic demo data and the demo pipeline."""

import hashlib
import re

import numpy as np
import pytest
from PIL import Image

from medclf.prepare.dedup import find_duplicates, fingerprint_file
from medclf.prepare.demo_data import generate, lesion_contrast, phantom, plan


def _digest(paths):
    return [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths]


def test_generation_is_byte_identical_and_seeded(tmp_path):
    a = generate(tmp_path / "a", n_per_class=4, seed=7)
    b = generate(tmp_path / "b", n_per_class=4, seed=7)
    c = generate(tmp_path / "c", n_per_class=4, seed=8)
    assert [p.relative_to(tmp_path / "a") for p in a] == [p.relative_to(tmp_path / "b") for p in b]
    assert _digest(a) == _digest(b)
    assert _digest(a) != _digest(c)
    assert sorted(p.parent.name for p in a) == ["no"] * 4 + ["yes"] * 4


def test_images_are_grayscale_pngs_of_the_requested_size(tmp_path):
    for path in generate(tmp_path, n_per_class=5, seed=0, min_size=96, max_size=128):
        with Image.open(path) as img:
            assert img.format == "PNG" and img.mode == "L"
            assert img.size[0] == img.size[1] and 96 <= img.size[0] <= 128


def _brightest_spot(image):
    """A simple lesion detector: the brightest 7x7 mean inside the head, minus the head's median."""
    from scipy.ndimage import uniform_filter

    pixels = image.astype(float)
    head = pixels > 40
    return float((uniform_filter(pixels, 7) * head).max() - np.median(pixels[head]))


def _detector_auc(n, size=96, seed=5):
    from medclf.evaluate.metrics import roc_auc

    scores = [_brightest_spot(phantom(np.random.default_rng([seed, lesion, i]), size, lesion=bool(lesion)))
              for lesion in (0, 1) for i in range(n)]
    return roc_auc(np.repeat([0, 1], n), np.asarray(scores))


def test_lesions_are_visible_on_average_but_not_separable_by_brightness():
    # The demo must show an imperfect classifier: a brightness detector does better than chance
    # (the lesion is real signal), but normal spots, noise, gain and bias fields overlap it.
    auc = _detector_auc(60)
    assert 0.55 < auc < 0.9  # the old phantoms: 0.954 (and a CNN reached test AUC 1.000)


def test_lesion_contrast_is_mostly_faint_and_overlaps_the_normal_spots():
    contrasts = np.array([lesion_contrast(np.random.default_rng([3, i])) for i in range(2000)])
    # normal spots (both classes) have peak contrast up to 0.12; noise sd up to 0.06
    assert 0.05 < (contrasts < 0.12).mean() < 0.5
    assert (contrasts < 0.06).mean() > 0.005
    assert np.percentile(contrasts, 90) / np.percentile(contrasts, 10) > 3  # variable, not one level


def test_a_lesion_raises_the_brightest_spot_of_the_same_slice():
    # Same generator state up to the lesion: with it, the brightest spot inside the head is brighter.
    spots = [(_brightest_spot(phantom(np.random.default_rng([9, i]), 96, lesion=True))
              - _brightest_spot(phantom(np.random.default_rng([9, i]), 96, lesion=False))) for i in range(20)]
    assert np.median(spots) > 0


def test_near_duplicates_are_other_patients_found_by_the_duplicate_detector(tmp_path):
    paths = generate(tmp_path, n_per_class=20, seed=4)
    sources = plan(20, 4, duplicate_fraction=0.1)
    pairs = [(tmp_path / name / f"{name}_patient{s:03d}.png", tmp_path / name / f"{name}_patient{i:03d}.png")
             for name in sources for i, s in enumerate(sources[name]) if s is not None]
    assert len(pairs) == 4 and all(p in paths for pair in pairs for p in pair)
    for original, copy in pairs:
        assert original.read_bytes() != copy.read_bytes()  # not an exact copy: only the near-duplicate check finds it
        report = find_duplicates([fingerprint_file(original), fingerprint_file(copy)])
        assert [sorted(c) for c in report.clusters] == [[0, 1]]


@pytest.mark.slow
def test_run_demo_partitions_and_organizes(tmp_path):
    from medclf.workflows.demo import run_demo

    result = run_demo(tmp_path / "demo", n_per_class=12, seed=0, quiet=True, stop_after="organize")
    info = result["partition_info"]
    assert info["counts"]["total"] == {"no": 12, "yes": 12}
    assert info["positive_class"] == "yes"
    assert info["leakage"]["groups_across_splits"] == 0
    organized = sorted(p for p in result["organized"].rglob("*.png"))
    assert len(organized) == 24
    assert {p.parent.parent.name for p in organized} == {"train", "val", "test"}
    clusters = info["duplicates"]["clusters"]["members"]
    copies = [(f"{n}/{n}_patient{s:03d}.png", f"{n}/{n}_patient{i:03d}.png")
              for n, sources in plan(12, 0, 0.1).items() for i, s in enumerate(sources) if s is not None]
    assert copies  # the demo has near-duplicates under other patient ids ...
    for original, copy in copies:  # ... each found, and its cluster kept inside one split
        cluster = next(c for c in clusters if original in c["paths"])
        assert copy in cluster["paths"] and len(cluster["splits"]) == 1
    assert info["leakage"]["near_duplicates_across_splits"] == 0
    first = (tmp_path / "demo" / "partition" / "splits.csv").read_bytes()
    run_demo(tmp_path / "demo", n_per_class=12, seed=0, quiet=True, stop_after="organize")  # rerun is harmless and identical
    assert (tmp_path / "demo" / "partition" / "splits.csv").read_bytes() == first


@pytest.mark.slow
def test_demo_command(tmp_path, capsys):
    from medclf.cli import main

    assert main(["demo", "--out", str(tmp_path / "d"), "--n-per-class", "10", "--data-only", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "[demo] done" in out
    assert re.search(r"duplicates: [1-9]\d* clusters of near-identical slices .* leakage across splits: 0", out)
    assert (tmp_path / "d" / "partition" / "partition.json").is_file()


@pytest.mark.slow
def test_demo_rerun_with_other_settings_replaces_its_own_folder_and_refuses_a_foreign_one(tmp_path):
    from medclf.cli import main

    out = tmp_path / "d"
    argv = ["demo", "--out", str(out), "--data-only", "--quiet"]
    assert main(argv + ["--n-per-class", "10"]) == 0
    # Another size gives another splits.csv, which partition alone refuses to overwrite.
    assert main(argv + ["--n-per-class", "12", "--seed", "1"]) == 0
    assert len(list((out / "data").rglob("*.png"))) == 24
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    assert main(["demo", "--out", str(foreign), "--data-only", "--quiet"]) == 1
    assert (foreign / "notes.txt").read_text() == "keep me" and len(list(foreign.iterdir())) == 1
