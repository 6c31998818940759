"""Issue 8 item 1: a run carries its own split (train copies it, test scores it, partition keeps it)."""

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medclf.cli import main
from medclf.core.errors import MedclfError
from medclf.core.fileio import read_json, write_json
from medclf.core.splits import bind_splits_to_run, read_splits
from medclf.infer.predict import split_table_for_test

TRAIN = ["--img-size", "32", "--epochs", "1", "--threads", "1", "--weights", "none", "--batch-size", "8",
         "--device", "cpu", "--no-progress"]


def _images(root, per_class=10):
    """Class folders no/ and yes/ of distinct noise images (no duplicates, so every image is its own group)."""
    for k, name in enumerate(("no", "yes")):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            rng = np.random.default_rng(100 * k + i)
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(root / name / f"{name}{i}.png")
    return root


def _partition(data, out, seed, *extra):
    return main(["partition", "--data-root", str(data), "--out", str(out), "--val", "0.2", "--test", "0.3",
                 "--seed", str(seed), "--quiet", *extra])


def _hashes(*paths):
    return [hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths]


def _paths(splits_csv, split):
    return set(read_splits(splits_csv).rows(split)["path"])


def _another_split(data, tmp_path, original):
    """splits.csv of the first seed after 0 whose test split differs from `original`'s (made here,
    not left behind by another test: tests of one module may run in different processes)."""
    for seed in range(1, 50):
        out = tmp_path / f"seed{seed}"
        assert _partition(data, out, seed) == 0
        if _paths(out / "splits.csv", "test") != original["test"]:
            return out / "splits.csv"
    raise AssertionError("no seed from 1 to 49 gives another split")


@pytest.fixture(scope="module")
def bound_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("binding")
    data = _images(base / "data")
    part = base / "partition"
    assert _partition(data, part, 0) == 0
    original = {s: _paths(part / "splits.csv", s) for s in ("train", "val", "test")}
    assert main(["train", "--splits", str(part / "splits.csv"), "--out", str(base / "results"), "--run-name", "r",
                 *TRAIN]) == 0
    return base, data, part, base / "results" / "r", original


@pytest.mark.slow
def test_train_copies_the_split_byte_for_byte_and_records_sha256(bound_run):
    base, data, part, run, _ = bound_run
    config = read_json(run / "config.json")
    assert (run / "splits.csv").read_bytes() == (part / "splits.csv").read_bytes()
    assert (run / "partition.json").read_bytes() == (part / "partition.json").read_bytes()
    assert config["split_files"] == [
        {"path": str((part / "splits.csv").resolve()), "sha256": _hashes(part / "splits.csv")[0], "copy": "splits.csv"},
        {"path": str((part / "partition.json").resolve()), "sha256": _hashes(part / "partition.json")[0],
         "copy": "partition.json"},
    ]
    copy = read_splits(run / "splits.csv", data_root=config["data_root"])
    source = read_splits(part / "splits.csv")
    assert [copy.resolve(p) for p in copy.frame["path"]] == [source.resolve(p) for p in source.frame["path"]]


@pytest.mark.slow
def test_repartition_is_refused_then_test_scores_the_runs_own_split(bound_run, capsys):
    """The issue's reproduction: partition seed 0, train, partition seed 1 into the same folder, test."""
    base, data, part, run, original = bound_run
    before = _hashes(part / "splits.csv", part / "partition.json")
    assert _partition(data, part, 1) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert _hashes(part / "splits.csv", part / "partition.json") == before
    assert _partition(data, part, 0) == 0  # an identical rerun is fine
    assert _hashes(part / "splits.csv", part / "partition.json") == before

    assert _partition(data, part, 1, "--overwrite") == 0
    assert _paths(part / "splits.csv", "test") & original["train"]  # seed 1 tests on some seed-0 training images
    assert main(["test", "--run", str(run), "--no-progress"]) == 0
    scored = json.loads((run / "predictions_test.json").read_text())["paths"]
    assert set(scored) == original["test"]
    assert set(json.loads((run / "predictions_val.json").read_text())["paths"]) == original["val"]

    # Another splits file: the images the run trained or selected on are refused, with both files named.
    capsys.readouterr()
    assert main(["test", "--run", str(run), "--splits", str(part / "splits.csv"), "--no-progress"]) == 1
    err = capsys.readouterr().err
    leaked = _paths(part / "splits.csv", "test") & (original["train"] | original["val"])
    assert f"{part / 'splits.csv'}: {len(leaked)} image(s) of its test split" in err
    assert str(run / "splits.csv") in err and sorted(leaked)[0] in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


@pytest.mark.slow
def test_another_splits_file_without_trained_images_is_scored(bound_run, tmp_path):
    base, data, part, run, original = bound_run
    table = read_splits(run / "splits.csv")
    frame = table.frame[table.frame["split"] == "test"]
    other = tmp_path / "external"
    other.mkdir()
    frame.to_csv(other / "splits.csv", index=False)  # a test-only file of the run's own test images
    shutil.copyfile(run / "partition.json", other / "partition.json")
    config = read_json(run / "config.json")
    chosen = split_table_for_test(run, config, other / "splits.csv", names=["test"])
    assert set(chosen.rows("test")["path"]) == original["test"]


def test_copies_of_trained_images_under_other_names_are_refused_by_content(bound_run, tmp_path):
    """An 'external' set that holds byte copies of training images (a re-export, another site's
    folder) under new names: refused by content, naming them; genuinely new images are scored."""
    base, data, part, run, original = bound_run
    external = tmp_path / "external"
    for name in ("no", "yes"):
        (external / name).mkdir(parents=True)
    trained = sorted(original["train"])[:2]
    rows = ["path,label,label_index,split,group"]
    for i, path in enumerate(trained):
        label = path.split("/")[0]
        shutil.copyfile(data / path, external / label / f"site_b_{i}.png")
        rows.append(f"{label}/site_b_{i}.png,{label},{int(label == 'yes')},test,{label}/site_b_{i}.png")
    for k, label in enumerate(("no", "yes")):
        Image.fromarray(np.random.default_rng(900 + k).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(
            external / label / "new.png")
        rows.append(f"{label}/new.png,{label},{k},test,{label}/new.png")
    (external / "splits.csv").write_text("\n".join(rows) + "\n")
    config = read_json(run / "config.json")
    with pytest.raises(MedclfError, match=r"2 image\(s\) of its test split have the same bytes as images in the "
                                          r"train or val split the run was trained on \(e.g. .*site_b_0.png"):
        split_table_for_test(run, config, external / "splits.csv", data_root=external, names=["test"])
    (external / "splits.csv").write_text("\n".join(rows[:1] + rows[-2:]) + "\n")
    chosen = split_table_for_test(run, config, external / "splits.csv", data_root=external, names=["test"])
    assert sorted(chosen.rows("test")["path"]) == ["no/new.png", "yes/new.png"]


def test_external_validation_writes_beside_the_run_and_the_report_says_external(bound_run, tmp_path, capsys):
    base, data, part, run, original = bound_run
    external = tmp_path / "site_b"
    rows = ["path,label,label_index,split,group"]
    for k, label in enumerate(("no", "yes")):
        (external / label).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(np.random.default_rng(700 + 10 * k + i).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(
                external / label / f"{i}.png")
            rows.append(f"{label}/{i}.png,{label},{k},test,{label}-patient{i // 2}")  # two images per patient
    (external / "splits.csv").write_text("\n".join(rows) + "\n")
    own_before = (run / "predictions_test.json").read_bytes() if (run / "predictions_test.json").is_file() else None
    assert main(["test", "--run", str(run), "--splits", str(external / "splits.csv"), "--data-root", str(external),
                 "--external", "site-b", "--no-progress"]) == 0
    folder = run / "external_site-b"
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(folder / "predictions_test.json")
    record = json.loads((folder / "predictions_test.json").read_text())
    assert record["external"] == {"name": "site-b", "splits": str((external / "splits.csv").resolve()),
                                  "sha256": _hashes(external / "splits.csv")[0]}
    assert sorted(record["paths"]) == sorted(r.split(",")[0] for r in rows[1:])
    assert (folder / "splits.csv").read_bytes() == (external / "splits.csv").read_bytes()
    assert not (folder / "predictions_val.json").exists()
    if own_before is not None:
        assert (run / "predictions_test.json").read_bytes() == own_before  # the internal result stays
    assert main(["report", "--run", str(folder), "--engine", "python", "--no-plots"]) == 0
    result = json.loads((folder / "results_test.json").read_text())
    assert result["external"]["name"] == "site-b" and result["clusters"]["n_groups"] == 4  # the external file's groups
    assert "**External validation: site-b.**" in (folder / "report_test.md").read_text()
    assert main(["test", "--run", str(run), "--external", "site-b", "--no-progress"]) == 1
    assert "--external site-b: name the other dataset's splits file with --splits" in capsys.readouterr().err

    # internal and external side by side: two independent test sets, the external one first named as such
    if own_before is None:
        assert main(["test", "--run", str(run), "--no-progress"]) == 0
    assert main(["compare", str(folder), str(run), "--engine", "python", "--out", str(tmp_path / "cmp")]) == 0
    record = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert record["kind"] == "internal-external" and record["external"]["name"] == "site-b"
    assert [row["n"] for row in record["runs"]] == [len(original["test"]), 8]  # internal first, whatever the order
    assert record["runs"][1]["groups"] == 4 and record["auc_difference"]["difference"]["method"].startswith("difference")
    assert "Internal against external validation (site-b)." in (tmp_path / "cmp" / "compare.md").read_text()


@pytest.mark.slow
def test_old_run_falls_back_to_the_recorded_file_and_refuses_a_changed_one(bound_run, tmp_path):
    base, data, part, run, original = bound_run
    old = tmp_path / "old"
    shutil.copytree(run, old)
    recorded = tmp_path / "recorded"
    recorded.mkdir()
    for name in ("splits.csv", "partition.json"):
        shutil.copyfile(run / name, recorded / name)
        (old / name).unlink()
    config = read_json(old / "config.json")
    config["splits_file"] = str(recorded / "splits.csv")
    config["split_files"] = [{**r, "path": str(recorded / r["copy"]), "copy": None} for r in config["split_files"]]
    write_json(old / "config.json", config)
    assert set(split_table_for_test(old, config).rows("test")["path"]) == original["test"]

    shutil.copyfile(_another_split(data, tmp_path, original), recorded / "splits.csv")  # re-partitioned since
    with pytest.raises(MedclfError, match=r"recorded/splits.csv: changed since .* was trained on it"):
        split_table_for_test(old, config)
    # A run from before sha256s were recorded: the per-split counts still catch a different file.
    del config["split_files"]
    config["counts"] = {"train": 1, "val": 1, "test": 1}
    with pytest.raises(MedclfError, match="split counts"):
        split_table_for_test(old, config)


@pytest.mark.slow
def test_resume_keeps_the_copy_and_refuses_a_changed_source(bound_run, tmp_path):
    base, data, part, run, original = bound_run
    part0 = tmp_path / "p0"
    assert _partition(data, part0, 0) == 0
    out = tmp_path / "results"
    assert main(["train", "--splits", str(part0 / "splits.csv"), "--out", str(out), "--run-name", "r", *TRAIN]) == 0
    copy_before = _hashes(out / "r" / "splits.csv")
    assert main(["train", "--out", str(out), "--run-name", "r", "--resume", "--epochs", "2", "--no-progress"]) == 0
    assert _hashes(out / "r" / "splits.csv") == copy_before

    assert _partition(data, part0, 1, "--overwrite") == 0
    with pytest.raises(MedclfError, match=r"p0/splits.csv: differs from .*r/splits.csv, the copy this run was "
                                          r"trained on"):
        bind_splits_to_run(read_splits(part0 / "splits.csv"), out / "r")
    assert _hashes(out / "r" / "splits.csv") == copy_before


def test_copy_without_partition_json_resolves_the_same_images(tmp_path):
    """splits.csv alone: its data root is its own folder, which config.json records for the copy."""
    data = _images(tmp_path / "data", per_class=4)
    part = tmp_path / "p"
    assert _partition(data, part, 0) == 0
    bare = data / "bare.csv"  # beside the images, without partition.json: paths relative to data/
    shutil.copyfile(part / "splits.csv", bare)
    table = read_splits(bare)
    run = tmp_path / "run"
    run.mkdir()
    binding = bind_splits_to_run(table, run)
    assert [r["copy"] for r in binding["split_files"]] == ["splits.csv"] and not (run / "partition.json").exists()
    copy = read_splits(run / "splits.csv", data_root=str(Path(table.data_root).resolve()))
    assert [copy.resolve(p) for p in copy.frame["path"]] == [Path(table.data_root).resolve() / p
                                                            for p in table.frame["path"]]
    assert all(copy.resolve(p).is_file() for p in copy.frame["path"])
