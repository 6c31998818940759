"""medclf organize and the seed-002 wrappers: layouts, modes, collisions, nothing lost."""

import hashlib
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medclf.cli import main
from medclf.core.errors import MedclfError
from medclf.core.splits import read_splits
from medclf.prepare.organize import MANIFEST_NAME, organize
from medclf.prepare.partition import PartitionOptions, partition


def _md5s(paths):
    return Counter(hashlib.md5(Path(p).read_bytes()).hexdigest() for p in paths)


def _files(root):
    """Files under `root`, without organize's own manifest."""
    return sorted(p for p in Path(root).rglob("*") if p.is_file() and p.name != MANIFEST_NAME)


def _dataset(root, counts, seed=0):
    for name, n in counts.items():
        for i in range(n):
            seed += 1
            path = root / name / f"img {i}.png"  # spaces on purpose
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.random.default_rng(seed).integers(0, 255, (24, 24), dtype=np.uint8)).save(path)
    return root


@pytest.fixture
def small(tmp_path):
    data = _dataset(tmp_path / "my data", {"a": 6, "b": 6})
    part = tmp_path / "part"
    partition(PartitionOptions(out=part, data_root=data, val=0.2, test=0.2, quiet=True))
    return data, part


def test_imagefolder_link(small, tmp_path):
    data, part = small
    out = tmp_path / "out"
    before = _md5s(_files(data))
    summary = organize(part / "splits.csv", out, mode="link", quiet=True)
    frame = pd.read_csv(part / "splits.csv")
    for row in frame.itertuples():
        target = out / row.split / row.label / Path(row.path).name
        assert target.is_file() and os.path.samefile(target, data / row.path)
    assert summary["placed"] == 12
    assert _md5s(_files(data)) == before  # sources untouched
    moved = read_splits(out / "splits.csv")
    assert Path(moved.data_root) == out.resolve()
    assert all((out / p).is_file() for p in moved.frame["path"])
    # A rerun finds everything in place and changes nothing.
    assert organize(part / "splits.csv", out, mode="link", quiet=True)["placed"] == 0


def test_imagefolder_copy_is_readable_by_torchvision(small, tmp_path):
    torchvision = pytest.importorskip("torchvision")
    data, part = small
    organize(part, tmp_path / "out", mode="copy", quiet=True)
    dataset = torchvision.datasets.ImageFolder(str(tmp_path / "out" / "train"))
    assert dataset.classes == ["a", "b"]
    assert len(dataset) == (pd.read_csv(part / "splits.csv")["split"] == "train").sum()


def test_move_rewrites_splits_csv(small, tmp_path):
    data, part = small
    before = _md5s(_files(data))
    out = tmp_path / "moved"
    organize(part / "splits.csv", out, mode="move", layout="imagefolder", quiet=True)
    assert _files(data) == []
    assert _md5s(_files(out)) == before
    table = read_splits(part / "splits.csv")
    assert Path(table.data_root) == out.resolve()
    assert all((out / p).is_file() for p in table.frame["path"])
    assert table.info["organized"]["from_data_root"] == str(data.resolve())


def test_move_keeps_every_other_cell_verbatim(tmp_path):
    images = tmp_path / "img"
    for i in range(12):
        path = images / f"i{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (24, 24), dtype=np.uint8)).save(path)
    rows = [{"image": f"i{i}", "dx": "ab"[i % 2], "patient": f"00{i // 2}", "age": "55.0" if i else ""}
            for i in range(12)]
    pd.DataFrame(rows).to_csv(tmp_path / "meta.csv", index=False)
    part = tmp_path / "part"
    partition(PartitionOptions(out=part, metadata=tmp_path / "meta.csv", image_dir=images, image_col="image",
                               label_col="dx", image_ext=".png", group_col="patient", val=0, test=0.34, folds=2,
                               quiet=True))
    before = pd.read_csv(part / "splits.csv", dtype=str, keep_default_na=False)
    organize(part / "splits.csv", tmp_path / "out", mode="move", quiet=True)
    after = pd.read_csv(part / "splits.csv", dtype=str, keep_default_na=False)
    assert list(after.columns) == list(before.columns)
    assert after.drop(columns="path").equals(before.drop(columns="path"))
    assert (after["path"] == before["split"] + "/" + before["label"] + "/" + before["path"]).all()
    assert set(after["patient"]) == {f"00{k}" for k in range(6)}


def test_link_falls_back_to_symlink(small, tmp_path, monkeypatch, capsys):
    data, part = small

    def no_hard_links(source, destination):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_hard_links)
    summary = organize(part, tmp_path / "out", mode="link")
    assert summary["link_fallbacks"]["symlink"] == 12
    assert "hard links were not possible" in capsys.readouterr().out
    linked = [p for p in (tmp_path / "out").rglob("*.png")]
    assert len(linked) == 12 and all(p.is_symlink() and p.resolve().parent.parent == data.resolve() for p in linked)


def test_collisions_reported_all_and_nothing_touched(tmp_path, capsys):
    data = _dataset(tmp_path / "d", {"no": 5, "yes": 5})  # both have "img 0.png" ... "img 4.png"
    part = tmp_path / "p"
    partition(PartitionOptions(out=part, data_root=data, val=0.2, test=0.2, quiet=True))
    before = sorted((p, p.stat().st_mtime_ns) for p in _files(data))
    code = main(["organize", "--splits", str(part / "splits.csv"), "--out", str(tmp_path / "o"),
                 "--mode", "move", "--layout", "seed002", "--quiet"])
    err = capsys.readouterr().err
    assert code == 1
    assert "5 problem(s) found, nothing was changed" in err
    for i in range(5):
        assert f"bin/img {i}.png: 2 images would get this name" in err
    assert sorted((p, p.stat().st_mtime_ns) for p in _files(data)) == before
    assert not (tmp_path / "o").exists()


def test_a_file_organize_did_not_write_is_refused(small, tmp_path):
    data, part = small
    out = tmp_path / "out"
    frame = pd.read_csv(part / "splits.csv")
    first = frame.iloc[0]
    clash = out / first["split"] / first["label"] / Path(first["path"]).name
    clash.parent.mkdir(parents=True)
    clash.write_bytes(b"someone else's file")
    for replace in (False, True):
        with pytest.raises(MedclfError, match=r"holds 1 file\(s\) that medclf organize did not write there"):
            organize(part / "splits.csv", out, mode="copy", quiet=True, replace=replace)
    assert clash.read_bytes() == b"someone else's file"
    assert sorted(Path(out).rglob("*")) == [out / first["split"], clash.parent, clash]


def test_missing_source_is_reported(small, tmp_path):
    data, part = small
    victim = sorted((data / "a").iterdir())[0]
    victim.unlink()
    with pytest.raises(MedclfError, match="listed in splits.csv is missing"):
        organize(part, tmp_path / "out", mode="copy", quiet=True)


def test_interrupted_move_can_be_rerun(small, tmp_path, monkeypatch):
    from medclf.prepare import organize as organize_mod

    data, part = small
    out = tmp_path / "out"
    real_move, moved = organize_mod._move_no_overwrite, []

    def move_then_die(source, destination):
        if moved:
            raise KeyboardInterrupt  # the first run stops after one file
        real_move(source, destination)
        moved.append(destination)

    monkeypatch.setattr(organize_mod, "_move_no_overwrite", move_then_die)
    with pytest.raises(KeyboardInterrupt):
        organize(part, out, mode="move", quiet=True)
    assert len(_files(out)) == 1 and len(_files(data)) == 11
    monkeypatch.setattr(organize_mod, "_move_no_overwrite", real_move)
    organize(part, out, mode="move", quiet=True)
    assert len(_files(out)) == 12 and _files(data) == []
    organize(part, out, mode="move", quiet=True)  # the repointed splits.csv reruns as the same splits
    assert len(_files(out)) == 12


def _split_of_images(out):
    """{class/file: split} of an imagefolder layout; fails when an image sits in two splits."""
    found = {}
    for split in ("train", "val", "test"):
        for path in _files(out / split):
            key = path.relative_to(out / split).as_posix()
            assert key not in found, f"{key} is in {found.get(key)} and {split}"
            found[key] = split
    return found


def test_a_second_split_into_the_same_folder_is_refused_and_replace_leaves_no_stale_image(small, tmp_path):
    data, part = small
    other = tmp_path / "part_seed1"
    partition(PartitionOptions(out=other, data_root=data, val=0.2, test=0.2, seed=1, quiet=True))
    first, second = (dict(zip(pd.read_csv(p / "splits.csv")["path"], pd.read_csv(p / "splits.csv")["split"]))
                     for p in (part, other))
    assert first != second  # the two partitions really differ
    out = tmp_path / "out"
    organize(part, out, mode="link", quiet=True)
    (out / "notes.txt").write_text("mine")  # beside the layout folders: never touched
    before = {p: hashlib.md5(p.read_bytes()).hexdigest() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(MedclfError, match=r"organized earlier from other splits .*part/splits.csv.*--replace"):
        organize(other, out, mode="link", quiet=True)
    assert {p: hashlib.md5(p.read_bytes()).hexdigest() for p in out.rglob("*") if p.is_file()} == before
    summary = organize(other, out, mode="link", quiet=True, replace=True)
    assert summary["replaced"] == 12 + 2  # 12 images, splits.csv and partition.json
    assert _split_of_images(out) == second and len(second) == 12
    assert (out / "notes.txt").read_text() == "mine"
    assert read_splits(out / "splits.csv").frame["split"].tolist() == pd.read_csv(other / "splits.csv")["split"].tolist()
    assert _md5s(_files(data)) == _md5s(_files(out / "train") + _files(out / "val") + _files(out / "test"))


def test_another_layout_of_the_same_splits_is_not_taken_for_a_rerun(tmp_path):
    data = _dataset(tmp_path / "d", {"no": 6, "yes": 6})
    for path in (data / "yes").iterdir():
        path.rename(path.with_name("Y" + path.name))  # seed002 flattens the classes: names must differ
    part = tmp_path / "part"
    partition(PartitionOptions(out=part, data_root=data, val=0.2, test=0.2, quiet=True))
    out = tmp_path / "out"
    organize(part, out, mode="link", layout="seed002", quiet=True)
    with pytest.raises(MedclfError, match=r"organized earlier from other splits \(.*layout seed002\)"):
        organize(part, out, mode="link", layout="imagefolder", quiet=True)
    organize(part, out, mode="link", layout="imagefolder", quiet=True, replace=True)
    assert not (out / "bin").exists() and not (out / "csv").exists()
    assert len(_split_of_images(out)) == 12


def test_replace_never_deletes_images_moved_there(small, tmp_path):
    data, part = small
    shutil.copytree(data, tmp_path / "copy")
    other = tmp_path / "part_copy"
    partition(PartitionOptions(out=other, data_root=tmp_path / "copy", val=0.2, test=0.2, seed=1, quiet=True))
    out = tmp_path / "out"
    organize(part, out, mode="move", quiet=True)
    before = _md5s(_files(out))
    with pytest.raises(MedclfError, match="moved in by an earlier `organize --mode move`.* only copies"):
        organize(other, out, mode="copy", quiet=True, replace=True)
    assert _md5s(_files(out)) == before


def test_imagefolder_keeps_nested_source_folders(tmp_path):
    data = tmp_path / "scans"
    for label in ("no", "yes"):
        for patient in range(4):
            for k in range(2):  # every patient has slice_0.png and slice_1.png
                path = data / label / f"p{patient}" / f"slice_{k}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                seed = (label == "yes") * 100 + patient * 10 + k
                Image.fromarray(np.random.default_rng(seed).integers(0, 255, (24, 24), dtype=np.uint8)).save(path)
    part = tmp_path / "part"
    partition(PartitionOptions(out=part, data_root=data, val=0.25, test=0.25, quiet=True))
    out = tmp_path / "out"
    organize(part, out, mode="copy", quiet=True)
    frame = pd.read_csv(part / "splits.csv")
    for row in frame.itertuples():
        label, patient, name = row.path.split("/")
        target = out / row.split / row.label / patient / name
        assert target.read_bytes() == (data / row.path).read_bytes()
    assert len(_files(out / "train") + _files(out / "val") + _files(out / "test")) == 16


def test_common_folders_are_dropped_and_the_class_folder_once():
    from medclf.prepare.organize import _below_class_folder, _common_parent

    paths = ["images/ISIC_1.jpg", "images/ISIC_2.jpg"]
    assert _common_parent(paths) == ("images",)
    assert _below_class_folder(paths[0], ("images",), {"mel"}) == "ISIC_1.jpg"
    assert _common_parent(["yes/p1/s.png", "no/p2/s.png"]) == ()
    assert _below_class_folder("yes/p1/s.png", (), {"yes"}) == "p1/s.png"
    assert _below_class_folder("mel/x.jpg", (), {"malignant", "mel"}) == "x.jpg"  # label-mapped class


# ---------------------------------------------------------------- seed 002 workflow

@pytest.fixture(scope="module")
def seed002_project(brain_mri_root, repo_root, tmp_path_factory):
    proj = tmp_path_factory.mktemp("seed002") / "brain mri project"
    shutil.copytree(brain_mri_root, proj, ignore=shutil.ignore_patterns("*.md"))
    before = _md5s(_files(proj))
    names = {c: {p.name for p in (proj / c).iterdir()} for c in ("no", "yes")}
    subprocess.run([sys.executable, str(repo_root / "partition" / "partition_datasets.py"), "-proj_dir", str(proj),
                    "-val_test_prop", "0.1", "-num_classes", "2"], check=True, capture_output=True)
    seed_csvs = {s: (proj / f"{s}.csv").read_text() for s in ("train", "val", "test")}
    env = dict(os.environ, MEDCLF_PYTHON=sys.executable)
    result = subprocess.run(["bash", str(repo_root / "organize" / "organize_files.sh"), str(proj)],
                            capture_output=True, text=True, env=env)
    return proj, before, names, seed_csvs, result


def test_brain_mri_has_no_name_collisions(seed002_project):
    _, _, names, _, _ = seed002_project
    assert names["no"] & names["yes"] == set()


def test_seed002_workflow_loses_nothing(seed002_project):
    proj, before, _, seed_csvs, result = seed002_project
    assert result.returncode == 0, result.stderr
    for folder in ("bin", "csv", "models", "results"):
        assert (proj / folder).is_dir()
    images = _files(proj / "bin")
    assert len(images) == 253
    assert _md5s(images) == before  # same md5 multiset: every image exactly once
    assert _files(proj / "no") == [] and _files(proj / "yes") == []


def test_organize_sh_rerun_on_a_finished_project_changes_nothing(seed002_project, repo_root):
    proj, before, _, _, first = seed002_project
    assert first.returncode == 0, first.stderr
    again = subprocess.run(["bash", str(repo_root / "organize" / "organize_files.sh"), str(proj)],
                           capture_output=True, text=True, env=dict(os.environ, MEDCLF_PYTHON=sys.executable))
    assert again.returncode == 0, again.stderr
    assert _md5s(_files(proj / "bin")) == before and "0 placed now" in again.stdout


def test_seed002_csvs(seed002_project):
    proj, _, _, seed_csvs, _ = seed002_project
    rows = []
    for split in ("train", "val", "test"):
        text = (proj / "csv" / f"{split}.csv").read_text()
        assert text == seed_csvs[split]  # organize files the lists partition_datasets.py wrote
        frame = pd.read_csv(proj / "csv" / f"{split}.csv", header=None, names=["filename", "class_idx"])
        assert frame["class_idx"].isin([0, 1]).all()
        assert all((proj / "bin" / name).is_file() for name in frame["filename"])
        rows.append(frame.assign(split=split))
    frame = pd.concat(rows)
    assert len(frame) == 253 and frame["filename"].is_unique
    yes = frame[frame["filename"].str.match(r"^Y", case=False)]
    assert (yes["class_idx"] == 1).all()
    # -val_test_prop 0.1: a tenth of all images for val and a tenth for test (groups kept whole)
    shares = frame["split"].value_counts(normalize=True)
    assert abs(shares["val"] - 0.1) < 0.02 and abs(shares["test"] - 0.1) < 0.02
    table = read_splits(proj / "splits.csv")
    assert all((proj / p).is_file() for p in table.frame["path"])
    assert table.info["leakage"]["near_duplicates_across_splits"] == 0


def test_organize_sh_needs_an_argument(repo_root):
    result = subprocess.run(["bash", str(repo_root / "organize" / "organize_files.sh")], capture_output=True, text=True)
    assert result.returncode == 2 and "usage" in result.stderr


def test_organize_sh_collision_aborts_before_moving(repo_root, tmp_path):
    proj = _dataset(tmp_path / "proj dir", {"no": 3, "yes": 3})
    subprocess.run([sys.executable, str(repo_root / "partition" / "partition_datasets.py"), "-proj_dir", str(proj),
                    "-val_test_prop", "0.2"], check=True, capture_output=True)
    before = _files(proj / "no") + _files(proj / "yes")
    result = subprocess.run(["bash", str(repo_root / "organize" / "organize_files.sh"), str(proj)],
                            capture_output=True, text=True, env=dict(os.environ, MEDCLF_PYTHON=sys.executable))
    assert result.returncode == 1 and "nothing was changed" in result.stderr
    assert _files(proj / "no") + _files(proj / "yes") == before
    assert not (proj / "bin").exists()


@pytest.mark.skipif(shutil.which("pwsh") is None, reason="PowerShell (pwsh) not installed")
def test_organize_ps1(repo_root, tmp_path):
    proj = _dataset(tmp_path / "proj dir", {"no": 3, "yes": 3}, seed=0)
    for i, p in enumerate(sorted((proj / "yes").iterdir())):
        p.rename(p.with_name(f"Y{i}.png"))
    subprocess.run([sys.executable, str(repo_root / "partition" / "partition_datasets.py"), "-proj_dir", str(proj),
                    "-val_test_prop", "0.2"], check=True, capture_output=True)
    result = subprocess.run(["pwsh", "-NoProfile", "-File", str(repo_root / "organize" / "organize_files.ps1"),
                             str(proj)], capture_output=True, text=True,
                            env=dict(os.environ, MEDCLF_PYTHON=sys.executable))
    assert result.returncode == 0, result.stderr
    assert len(_files(proj / "bin")) == 6
