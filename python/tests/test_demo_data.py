"""Synthetic demo data and the demo pipeline."""

import hashlib

import numpy as np
from PIL import Image

from medclf.demo_data import generate, phantom


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


def test_lesion_adds_a_bright_region_inside_the_brain():
    size = 112
    without = phantom(np.random.default_rng(1), size, lesion=False).astype(float)
    with_lesion = phantom(np.random.default_rng(1), size, lesion=True).astype(float)
    difference = with_lesion - without
    # Same generator state up to the lesion: only the lesion (and the later noise draw) differ.
    assert difference.max() > 80
    assert (difference > 40).sum() > 20
    assert without[0, 0] < 30  # background outside the skull stays dark


def test_run_demo_partitions_and_organizes(tmp_path):
    from medclf.demo import run_demo

    result = run_demo(tmp_path / "demo", n_per_class=12, seed=0, quiet=True, stop_after="organize")
    info = result["partition_info"]
    assert info["counts"]["total"] == {"no": 12, "yes": 12}
    assert info["positive_class"] == "yes"
    assert info["leakage"]["groups_across_splits"] == 0
    organized = sorted(p for p in result["organized"].rglob("*.png"))
    assert len(organized) == 24
    assert {p.parent.parent.name for p in organized} == {"train", "val", "test"}
    first = (tmp_path / "demo" / "partition" / "splits.csv").read_bytes()
    run_demo(tmp_path / "demo", n_per_class=12, seed=0, quiet=True, stop_after="organize")  # rerun is harmless and identical
    assert (tmp_path / "demo" / "partition" / "splits.csv").read_bytes() == first


def test_demo_command(tmp_path, capsys):
    from medclf.cli import main

    assert main(["demo", "--out", str(tmp_path / "d"), "--n-per-class", "6", "--quiet"]) == 0
    assert "[demo] done" in capsys.readouterr().out
    assert (tmp_path / "d" / "partition" / "partition.json").is_file()
