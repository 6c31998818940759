"""medclf partition: grouping, duplicates, stratification, determinism, bad input."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medclf.cli import main
from medclf.core.errors import MedclfError
from medclf.prepare.partition import PartitionOptions, parse_label_map, partition

HAM_ARGS = ["--image-col", "image_id", "--label-col", "dx", "--group-col", "lesion_id", "--image-ext", ".jpg"]


def _noise_image(path, seed, size=32):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size, size), dtype=np.uint8)).save(path)


def _class_folders(root, counts):
    seed = 0
    for name, n in counts.items():
        for i in range(n):
            seed += 1
            _noise_image(root / name / f"{name}{i}.png", seed)
    return root


def _run_cli(argv, capsys):
    code = main(["partition", "--quiet", *map(str, argv)])
    return code, capsys.readouterr().err


def _read(out):
    return pd.read_csv(out / "splits.csv", dtype=str, keep_default_na=False), json.loads((out / "partition.json").read_text())


# ---------------------------------------------------------------- real data

@pytest.fixture(scope="module")
def brain_run(brain_mri_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("brain")
    assert main(["partition", "--quiet", "--data-root", str(brain_mri_root), "--out", str(out),
                 "--val", "0.1", "--test", "0.2", "--seed", "0"]) == 0
    return out


def test_brain_accounts_for_every_file(brain_run, brain_mri_root):
    frame, info = _read(brain_run)
    on_disk = sorted(p.relative_to(brain_mri_root).as_posix() for p in brain_mri_root.glob("*/*"))
    assert sorted(frame["path"]) == on_disk and len(on_disk) == 253
    assert info["unreadable"]["count"] == 0
    assert info["counts"]["total"] == {"no": 98, "yes": 155}
    assert info["classes"] == ["no", "yes"] and info["positive_class"] == "yes"
    assert info["data_root"] == str(brain_mri_root.resolve())


def test_brain_duplicates_found_and_never_cross_splits(brain_run):
    frame, info = _read(brain_run)
    dup = info["duplicates"]
    assert (dup["exact"]["clusters"], dup["exact"]["files"]) == (22, 47)
    # SOURCE.md's 36 clusters (83 files), plus 9 verified pairs its dHash radius missed, each
    # checked by eye (crops, rescales, an added arrow; Y160~Y50 is the pair SOURCE.md names).
    assert (dup["clusters"]["count"], dup["clusters"]["files"]) == (38, 92)
    assert dup["clusters_with_different_labels"] == 0 and dup["largest_group"]["size"] <= 20
    leak = info["leakage"]
    assert (leak["groups_across_splits"], leak["exact_duplicates_across_splits"],
            leak["near_duplicates_across_splits"]) == (0, 0, 0)
    # Check independently of the report: every cluster's members share one split and one group.
    for cluster in dup["clusters"]["members"]:
        rows = frame[frame["path"].isin(cluster["paths"])]
        assert rows["split"].nunique() == 1 and rows["group"].nunique() == 1
    assert frame.groupby("group")["split"].nunique().max() == 1
    assert frame["group"].nunique() == info["n_groups"] == 253 - 92 + 38


def test_brain_source_md_clusters_each_in_one_split(brain_run, brain_mri_root):
    """brain_mri/SOURCE.md: identical md5, or 64-bit dHash within 3 bits, merged: 36 clusters of
    83 files, each the same image. Recomputed here the way SOURCE.md describes it."""
    from test_dedup import reference_dhash

    from medclf.core.fileio import sha256_file
    from medclf.data.imageio import read_image
    from medclf.prepare.dedup import UnionFind

    files = sorted(brain_mri_root.glob("*/*"))
    digests = [sha256_file(p) for p in files]
    hashes = [reference_dhash(read_image(p)) for p in files]
    uf = UnionFind(len(files))
    for i in range(len(files)):
        for j in range(i + 1, len(files)):
            if digests[i] == digests[j] or (hashes[i] ^ hashes[j]).bit_count() <= 3:
                uf.union(i, j)
    clusters = [c for c in uf.components() if len(c) > 1]
    assert (len(clusters), sum(map(len, clusters))) == (36, 83)
    frame, _ = _read(brain_run)
    by_path = frame.set_index("path")
    for cluster in clusters:
        rows = by_path.loc[[files[i].relative_to(brain_mri_root).as_posix() for i in cluster]]
        assert rows["split"].nunique() == 1 and rows["group"].nunique() == 1, list(rows.index)


def test_brain_review_files(brain_run):
    review = pd.read_csv(brain_run / "duplicates.csv", dtype=str, keep_default_na=False)
    assert list(review.columns) == ["path_a", "path_b", "descriptor_distance", "verification_inliers", "verdict",
                                    "decided_by", "label_a", "label_b", "labels_differ", "group_a", "group_b",
                                    "groups_differ"]
    assert (review["verdict"] == "exact_bytes").sum() == 47 - 22
    pair = review[(review["path_a"] == "yes/Y160.JPG") & (review["path_b"] == "yes/Y50.JPG")]
    assert pair["verdict"].tolist() == ["duplicate"]
    _, info = _read(brain_run)
    assert info["duplicates"]["review"] == {"csv": "duplicates.csv", "contact_sheet": "duplicates_to_review.png",
                                            "pairs_to_review": 0}
    assert Image.open(brain_run / "duplicates_to_review.png").format == "PNG"


def test_brain_decisions_file_overrides_and_is_recorded(brain_mri_root, tmp_path):
    from medclf.core.fileio import sha256_file

    decisions = tmp_path / "decisions.csv"
    decisions.write_text("yes/Y50.JPG,yes/Y160.JPG,different\nno/N1.JPG,no/N2.JPG,same\n")
    out = tmp_path / "out"
    assert main(["partition", "--quiet", "--data-root", str(brain_mri_root), "--out", str(out),
                 "--duplicate-decisions", str(decisions)]) == 0
    frame, info = _read(out)
    group = frame.set_index("path")["group"]
    assert group["yes/Y160.JPG"] != group["yes/Y50.JPG"]
    assert group["no/N1.JPG"] == group["no/N2.JPG"]
    assert info["duplicates"]["near"]["decisions"] == {"path": str(decisions.resolve()),
                                                       "sha256": sha256_file(decisions), "pairs": 2}
    review = pd.read_csv(out / "duplicates.csv", dtype=str, keep_default_na=False)
    decided = review[review["decided_by"] == "decisions file"]
    assert sorted(zip(decided["path_a"], decided["path_b"], decided["verdict"])) == [
        ("no/N1.JPG", "no/N2.JPG", "duplicate"), ("yes/Y160.JPG", "yes/Y50.JPG", "different")]


def test_brain_split_is_stratified(brain_run):
    frame, _ = _read(brain_run)
    overall = (frame["label"] == "yes").mean()
    sizes = frame["split"].value_counts(normalize=True)
    assert abs(sizes["test"] - 0.2) < 0.02 and abs(sizes["val"] - 0.1) < 0.02
    for split, rows in frame.groupby("split"):
        assert abs((rows["label"] == "yes").mean() - overall) < 0.03, split


def test_brain_second_run_and_shuffled_copy_are_identical(brain_run, brain_mri_root, tmp_path):
    assert main(["partition", "--quiet", "--data-root", str(brain_mri_root), "--out", str(tmp_path / "again"),
                 "--val", "0.1", "--test", "0.2", "--seed", "0"]) == 0
    expected = (brain_run / "splits.csv").read_bytes()
    assert (tmp_path / "again" / "splits.csv").read_bytes() == expected
    assert (tmp_path / "again" / "partition.json").read_bytes() == (brain_run / "partition.json").read_bytes()
    # A copy created in a different order lists its files in a different order.
    files = sorted(p for p in brain_mri_root.glob("*/*"))
    copy = tmp_path / "copy"
    for k in np.random.default_rng(5).permutation(len(files)):
        target = copy / files[k].relative_to(brain_mri_root)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(files[k], target)
    assert main(["partition", "--quiet", "--data-root", str(copy), "--out", str(tmp_path / "copy_out"),
                 "--val", "0.1", "--test", "0.2", "--seed", "0"]) == 0
    assert (tmp_path / "copy_out" / "splits.csv").read_bytes() == expected
    different_seed = tmp_path / "seed1"
    main(["partition", "--quiet", "--data-root", str(brain_mri_root), "--out", str(different_seed), "--seed", "1"])
    assert (different_seed / "splits.csv").read_bytes() != expected


@pytest.fixture(scope="module")
def ham_run(ham_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("ham")
    assert main(["partition", "--quiet", "--metadata", str(ham_root / "HAM10000_metadata.csv"),
                 "--image-dir", str(ham_root / "images"), *HAM_ARGS, "--out", str(out)]) == 0
    return out


def test_ham_no_lesion_in_two_splits_and_shares_within_2_points(ham_run, ham_root):
    frame, info = _read(ham_run)
    assert len(frame) == 1983
    assert frame.groupby("lesion_id")["split"].nunique().max() == 1
    assert info["leakage"]["groups_across_splits"] == 0
    overall = frame["label"].value_counts(normalize=True)
    big = [c for c, n in frame["label"].value_counts().items() if n >= 50]
    assert len(big) == 5
    for split, rows in frame.groupby("split"):
        share = rows["label"].value_counts(normalize=True)
        for c in big:
            assert abs(share.get(c, 0) - overall[c]) <= 0.02, (split, c)
    assert info["data_root"] == str((ham_root / "images").resolve())
    assert info["group_column"] == "lesion_id"


def test_ham_metadata_columns_pass_through(ham_run, ham_root):
    frame, _ = _read(ham_run)
    assert list(frame.columns) == ["path", "label", "label_index", "split", "group",
                                   "lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization"]
    assert (frame["path"] == frame["image_id"] + ".jpg").all()
    assert (frame["label"] == frame["dx"]).all()
    source = pd.read_csv(ham_root / "HAM10000_metadata.csv", dtype=str, keep_default_na=False)
    merged = frame.merge(source, on="image_id", suffixes=("", "_src"))
    assert (merged["age"] == merged["age_src"]).all()


def test_ham_folds(ham_root, tmp_path):
    out = tmp_path / "folds"
    assert main(["partition", "--quiet", "--metadata", str(ham_root / "HAM10000_metadata.csv"),
                 "--image-dir", str(ham_root / "images"), *HAM_ARGS, "--out", str(out),
                 "--val", "0", "--test", "0.2", "--folds", "5", "--no-dedup"]) == 0
    frame, info = _read(out)
    assert set(frame["split"]) == {"train", "test"}
    assert (frame.loc[frame["split"] == "test", "fold"] == "").all()
    train = frame[frame["split"] == "train"]
    assert sorted(train["fold"].unique()) == ["0", "1", "2", "3", "4"]
    assert train.groupby("lesion_id")["fold"].nunique().max() == 1
    sizes = train["fold"].value_counts(normalize=True)
    assert (abs(sizes - 1 / 5) < 0.02).all()
    nv_share = train.groupby("fold")["label"].apply(lambda s: (s == "nv").mean())
    assert (abs(nv_share - (train["label"] == "nv").mean()) < 0.03).all()
    assert info["folds"] == 5 and info["duplicates"] == {"enabled": False}


def test_ham_label_map_malignant_vs_benign(ham_root, tmp_path):
    out = tmp_path / "mal"
    assert main(["partition", "--quiet", "--metadata", str(ham_root / "HAM10000_metadata.csv"),
                 "--image-dir", str(ham_root / "images"), *HAM_ARGS, "--out", str(out), "--no-dedup",
                 "--label-map", "mel=malignant,bcc=malignant,akiec=malignant,*=benign",
                 "--positive", "malignant"]) == 0
    frame, info = _read(out)
    assert info["classes"] == ["benign", "malignant"] and info["positive_class"] == "malignant"
    assert frame.columns[5] == "label_original"
    assert (frame["label_original"] == frame["dx"]).all()
    malignant = frame["label_original"].isin(["mel", "bcc", "akiec"])
    assert ((frame["label"] == "malignant") == malignant).all()
    assert info["counts"]["total"]["malignant"] == 222 + 102 + 67
    assert frame.groupby("lesion_id")["split"].nunique().max() == 1


@pytest.mark.slow  # a second partition of the 1,983 HAM10000 images
def test_ham_ids_without_extension_need_no_image_ext(ham_run, ham_root, tmp_path):
    """The README command: HAM10000's image_id lacks `.jpg`; the one file <id>.jpg is used."""
    out = tmp_path / "noext"
    assert main(["partition", "--quiet", "--metadata", str(ham_root / "HAM10000_metadata.csv"), "--image-dir",
                 str(ham_root / "images"), "--image-col", "image_id", "--label-col", "dx", "--group-col",
                 "lesion_id", "--out", str(out)]) == 0
    assert (out / "splits.csv").read_bytes() == (ham_run / "splits.csv").read_bytes()


def test_id_matching_several_files_names_them(tmp_path, capsys):
    for i in range(4):
        _noise_image(tmp_path / "img" / f"i{i}.jpg", i)
    _noise_image(tmp_path / "img" / "i1.png", 9)
    (tmp_path / "img" / "i2.txt").write_text("notes, not an image")
    (tmp_path / "meta.csv").write_text("image_id,dx\ni0,a\ni1,b\ni2,a\ni3,b\n")
    code, err = _run_cli(["--metadata", tmp_path / "meta.csv", "--image-dir", tmp_path / "img",
                          "--label-col", "dx", "--out", tmp_path / "o"], capsys)
    assert code == 1 and not (tmp_path / "o").exists()
    assert "meta.csv: 1 image id(s) match several files" in err and "line 3: i1 -> i1.jpg, i1.png" in err
    assert "--image-ext" in err
    assert _run_cli(["--metadata", tmp_path / "meta.csv", "--image-dir", tmp_path / "img", "--label-col", "dx",
                     "--image-ext", ".jpg", "--out", tmp_path / "o", "--val", "0", "--test", "0.5"], capsys)[0] == 0


def test_ten_thousand_ids_list_the_folder_once(tmp_path, monkeypatch):
    """Extension inference lists the image folder once instead of testing a file per id and extension."""
    import os
    import pathlib

    from medclf.prepare import partition as partition_mod

    images = tmp_path / "images"
    images.mkdir()
    for i in range(10_000):
        (images / f"ISIC_{i:07d}.jpg").touch()
    rows = "".join(f"ISIC_{i:07d},{'ab'[i % 2]}\n" for i in range(10_000))
    (tmp_path / "meta.csv").write_text("image_id,dx\n" + rows)
    calls = {"scandir": 0, "is_file": 0}
    real_scandir, real_is_file = os.scandir, pathlib.Path.is_file

    def scandir(path):
        calls["scandir"] += 1
        return real_scandir(path)

    def is_file(self):
        calls["is_file"] += 1
        return real_is_file(self)

    monkeypatch.setattr(partition_mod.os, "scandir", scandir)
    monkeypatch.setattr(pathlib.Path, "is_file", is_file)
    items, _ = partition_mod.load_metadata(tmp_path / "meta.csv", images, "image_id", "dx")
    assert len(items) == 10_000 and items[123].path == "ISIC_0000123.jpg"
    assert calls == {"scandir": 1, "is_file": 1}  # the folder once; the CSV itself once


def test_rerun_with_another_seed_is_refused_and_changes_nothing(tmp_path, capsys):
    root = _class_folders(tmp_path / "d", {"no": 6, "yes": 6})
    out = tmp_path / "o"
    assert _run_cli(["--data-root", root, "--out", out, "--val", "0.2", "--test", "0.2"], capsys)[0] == 0
    before = [(out / n).read_bytes() for n in ("splits.csv", "partition.json")]
    code, err = _run_cli(["--data-root", root, "--out", out, "--val", "0.2", "--test", "0.2", "--seed", "1"], capsys)
    assert code == 1 and f"{out}: already holds a different splits.csv and partition.json" in err
    assert "--overwrite" in err
    assert [(out / n).read_bytes() for n in ("splits.csv", "partition.json")] == before
    assert _run_cli(["--data-root", root, "--out", out, "--val", "0.2", "--test", "0.2"], capsys)[0] == 0
    assert [(out / n).read_bytes() for n in ("splits.csv", "partition.json")] == before
    assert _run_cli(["--data-root", root, "--out", out, "--val", "0.2", "--test", "0.2", "--seed", "1",
                     "--overwrite"], capsys)[0] == 0
    assert (out / "splits.csv").read_bytes() != before[0]


# ---------------------------------------------------------------- label maps

def test_label_map_parsing(tmp_path):
    assert parse_label_map("mel=malignant, bcc=malignant,*=benign") == {
        "mel": "malignant", "bcc": "malignant", "*": "benign"}
    (tmp_path / "m.csv").write_text("from,to\nmel,malignant\n*,benign\n")
    (tmp_path / "m.json").write_text('{"mel": "malignant", "*": "benign"}')
    (tmp_path / "m.yaml").write_text("mel: malignant\n'*': benign\n")
    for name in ("m.csv", "m.json", "m.yaml"):
        assert parse_label_map(str(tmp_path / name)) == {"mel": "malignant", "*": "benign"}
    with pytest.raises(MedclfError, match="from=to"):
        parse_label_map("mel")


def test_label_map_without_catch_all_names_unmapped_labels(tmp_path, capsys):
    root = _class_folders(tmp_path / "d", {"a": 4, "b": 4, "c": 4})
    code, err = _run_cli(["--data-root", root, "--out", tmp_path / "o", "--label-map", "a=x,b=y"], capsys)
    assert code == 1 and "no mapping for label(s) c" in err


def test_classes_order_positive_and_skipped_files(tmp_path):
    root = _class_folders(tmp_path / "d", {"yes": 6, "no": 6})
    (root / "yes" / "notes.txt").write_text("radiologist notes")
    (root / "README.md").write_text("top-level files are not classes")
    info = partition(PartitionOptions(out=tmp_path / "o", data_root=root, classes=["yes", "no"],
                                      positive="yes", val=0.2, test=0.2, quiet=True))
    frame, _ = _read(tmp_path / "o")
    assert info["classes"] == ["yes", "no"]
    assert (frame.loc[frame["label"] == "yes", "label_index"] == "0").all()
    assert info["skipped_non_images"] == {"count": 1, "files": ["yes/notes.txt"]}
    assert info["counts"]["total"] == {"yes": 6, "no": 6}
    for split in ("train", "val", "test"):
        assert all(n >= 1 for n in info["counts"][split].values())


def test_classes_subset_leaves_other_classes_out(tmp_path, capsys):
    root = _class_folders(tmp_path / "d", {"a": 5, "b": 5, "c": 3})
    info = partition(PartitionOptions(out=tmp_path / "o", data_root=root, classes=["b", "a"], val=0.2, test=0.2))
    assert "left out by --classes: c (3 images)" in capsys.readouterr().out
    assert info["classes"] == ["b", "a"] and info["excluded_classes"] == {"c": 3}
    frame, _ = _read(tmp_path / "o")
    assert len(frame) == 10 and set(frame["label"]) == {"a", "b"}
    with pytest.raises(MedclfError, match="no images of class"):
        partition(PartitionOptions(out=tmp_path / "o", data_root=root, classes=["a", "z"], quiet=True))


def test_out_inside_data_root_is_not_a_class(tmp_path):
    root = _class_folders(tmp_path / "d", {"no": 5, "yes": 5})
    first = partition(PartitionOptions(out=root / "partition", data_root=root, val=0.2, test=0.2, quiet=True))
    again = partition(PartitionOptions(out=root / "partition", data_root=root, val=0.2, test=0.2, quiet=True))
    assert first["classes"] == again["classes"] == ["no", "yes"] and again["n_images"] == 10


def test_default_positive_rules(tmp_path):
    root = _class_folders(tmp_path / "d", {"cat": 5, "dog": 5})
    info = partition(PartitionOptions(out=tmp_path / "o", data_root=root, quiet=True))
    assert info["positive_class"] is None
    with pytest.raises(MedclfError, match="--positive bird"):
        partition(PartitionOptions(out=tmp_path / "o", data_root=root, positive="bird", quiet=True))


def test_duplicates_across_classes_warned_and_kept_together(tmp_path, capsys):
    root = _class_folders(tmp_path / "d", {"no": 8, "yes": 8})
    shutil.copyfile(root / "no" / "no0.png", root / "yes" / "copy_of_no0.png")
    info = partition(PartitionOptions(out=tmp_path / "o", data_root=root, quiet=True))
    err = capsys.readouterr().err
    assert "2 duplicates with different labels (no, yes)" in err and "copy_of_no0.png" in err
    frame, _ = _read(tmp_path / "o")
    pair = frame[frame["path"].isin(["no/no0.png", "yes/copy_of_no0.png"])]
    assert pair["split"].nunique() == 1 and pair["group"].nunique() == 1
    assert info["duplicates"]["clusters_with_different_labels"] == 1
    assert info["leakage"]["exact_duplicates_across_splits"] == 0


def test_oversized_group_is_reported_with_its_pairs(tmp_path, capsys):
    root = _class_folders(tmp_path / "d", {"no": 6, "yes": 6})
    for k in range(3):
        shutil.copyfile(root / "no" / "no0.png", root / "no" / f"copy{k}.png")
    info = partition(PartitionOptions(out=tmp_path / "o", data_root=root, max_group_size=3, quiet=True))
    err = capsys.readouterr().err
    assert ("group no/copy0.png holds 4 images (more than 3), joined by no/copy0.png~no/copy1.png "
            "(identical bytes)") in err
    assert info["duplicates"]["largest_group"] == {"name": "no/copy0.png", "size": 4, "limit": 3,
                                                   "oversized": ["no/copy0.png"]}


@pytest.mark.parametrize("distance, near_enabled, note",
                         [("0", True, "ignored"), ("-1", False, "read as --no-near-dups")])
def test_retired_near_dup_distance_still_runs(tmp_path, capsys, distance, near_enabled, note):
    root = _class_folders(tmp_path / "d", {"no": 5, "yes": 5})
    code, err = _run_cli(["--data-root", root, "--out", tmp_path / "o", "--near-dup-distance", distance], capsys)
    assert code == 0
    assert "--near-dup-distance is retired" in err and note in err
    _, info = _read(tmp_path / "o")
    assert info["duplicates"]["near"]["enabled"] is near_enabled


def test_group_column_merged_with_duplicates(tmp_path):
    images = tmp_path / "img"
    for i in range(12):
        _noise_image(images / f"i{i}.png", 100 + i)
    shutil.copyfile(images / "i0.png", images / "i11.png")  # same picture, different patients
    rows = [{"image": f"i{i}", "dx": "a" if i % 2 else "b", "patient": f"p{i // 2}"} for i in range(12)]
    pd.DataFrame(rows).to_csv(tmp_path / "meta.csv", index=False)
    partition(PartitionOptions(out=tmp_path / "o", metadata=tmp_path / "meta.csv", image_dir=images,
                               image_col="image", label_col="dx", image_ext="png", group_col="patient",
                               val=0.0, test=0.3, quiet=True))
    frame, info = _read(tmp_path / "o")
    merged = frame[frame["patient"].isin(["p0", "p5"])]
    assert merged["split"].nunique() == 1 and set(merged["group"]) == {"p0"}
    assert info["n_groups"] == 5


# ---------------------------------------------------------------- bad input

def test_empty_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, err = _run_cli(["--data-root", tmp_path / "empty", "--out", tmp_path / "o"], capsys)
    assert code == 1 and "empty: no images found" in err and "subfolder" in err


def test_single_class(tmp_path, capsys):
    root = _class_folders(tmp_path / "d", {"yes": 5})
    code, err = _run_cli(["--data-root", root, "--out", tmp_path / "o"], capsys)
    assert code == 1 and "only one class ('yes')" in err and "add a second class" in err


def test_class_too_small(tmp_path, capsys):
    root = _class_folders(tmp_path / "d", {"no": 10, "yes": 2})
    code, err = _run_cli(["--data-root", root, "--out", tmp_path / "o", "--val", "0.1", "--test", "0.2"], capsys)
    assert code == 1 and "class 'yes' has 2 independent image group(s) but needs at least 3" in err
    assert "lower --val/--test" in err
    assert _run_cli(["--data-root", root, "--out", tmp_path / "o", "--val", "0", "--test", "0.2"], capsys)[0] == 0
    code, err = _run_cli(["--data-root", root, "--out", tmp_path / "o", "--val", "0", "--folds", "3"], capsys)
    assert code == 1 and "fewer --folds" in err


def test_csv_without_named_column(tmp_path, capsys):
    _noise_image(tmp_path / "img" / "a.png", 1)
    (tmp_path / "meta.csv").write_text("image_id,diagnosis\na.png,x\n")
    code, err = _run_cli(["--metadata", tmp_path / "meta.csv", "--image-dir", tmp_path / "img",
                          "--label-col", "dx", "--out", tmp_path / "o"], capsys)
    assert code == 1 and "meta.csv: no column 'dx' (named by --label-col)" in err and "diagnosis" in err


def _metadata_set(tmp_path, n=24):
    for i in range(n):
        _noise_image(tmp_path / "img" / f"i{i}.png", 100 + i)
    rows = "\n".join(f"i{i}.png,{'ab'[i % 2]},{'hf'[i % 3 == 0]},{20 + i}" for i in range(n))
    (tmp_path / "meta.csv").write_text(f"image_id,dx,dx_type,age\n{rows}\n")
    return ["--metadata", tmp_path / "meta.csv", "--image-dir", tmp_path / "img", "--label-col", "dx"]


def test_stratify_by_names_a_column_of_the_csv_and_needs_a_csv(tmp_path, capsys):
    source = _metadata_set(tmp_path)
    code, err = _run_cli([*source, "--stratify-by", "confirmation", "--out", tmp_path / "o"], capsys)
    assert code == 1 and "meta.csv: no column 'confirmation' (named by --stratify-by)" in err and "dx_type" in err
    code, err = _run_cli(["--data-root", tmp_path / "img", "--stratify-by", "dx_type", "--out", tmp_path / "o"], capsys)
    assert code == 1 and "--stratify-by needs --metadata" in err
    assert not (tmp_path / "o").exists()
    assert _run_cli([*source, "--stratify-by", "dx_type", "--out", tmp_path / "o"], capsys)[0] == 0
    info = json.loads((tmp_path / "o" / "partition.json").read_text())
    assert info["assignment"]["method"] == "stratified-random/1" and info["assignment"]["stratify_by"] == "dx_type"
    assert {r["variable"] for r in info["balance"]["rows"]} == {"images per group", "class", "dx_type", "age"}
    assert info["balance"]["splits"]["test"]["images"] == sum(info["counts"]["test"].values())


def test_a_split_made_by_the_old_assignment_is_replaced_only_with_overwrite(tmp_path, capsys):
    source = _metadata_set(tmp_path)
    out = tmp_path / "o"
    assert _run_cli([*source, "--out", out], capsys)[0] == 0
    info = json.loads((out / "partition.json").read_text())
    del info["assignment"]  # as medclf wrote it before the stratified random assignment
    (out / "partition.json").write_text(json.dumps(info))
    before = [(out / n).read_bytes() for n in ("splits.csv", "partition.json")]
    code, err = _run_cli([*source, "--out", out], capsys)
    assert code == 1 and "made by an earlier medclf" in err and "greedy" in err and "--overwrite" in err
    assert [(out / n).read_bytes() for n in ("splits.csv", "partition.json")] == before
    assert _run_cli([*source, "--out", out, "--overwrite"], capsys)[0] == 0
    assert json.loads((out / "partition.json").read_text())["assignment"]["method"] == "stratified-random/1"


def test_csv_row_with_missing_image(tmp_path, capsys):
    for i in range(6):
        _noise_image(tmp_path / "img" / f"i{i}.jpg", i)
    rows = "\n".join(f"i{i},{'ab'[i % 2]}" for i in range(6))
    (tmp_path / "meta.csv").write_text(f"image_id,dx\n{rows}\ni9,a\n")
    code, err = _run_cli(["--metadata", tmp_path / "meta.csv", "--image-dir", tmp_path / "img",
                          "--label-col", "dx", "--image-ext", ".jpg", "--out", tmp_path / "o"], capsys)
    assert code == 1 and "line 8:" in err and "i9.jpg" in err and "does not exist" in err


def test_unreadable_images_are_warned_excluded_and_counted(tmp_path, capsys):
    root = _class_folders(tmp_path / "d", {"no": 6, "yes": 6})
    good = (root / "yes" / "yes0.png").read_bytes()
    Image.open(root / "yes" / "yes1.png").convert("RGB").save(root / "yes" / "full.jpg")
    data = (root / "yes" / "full.jpg").read_bytes()
    (root / "yes" / "full.jpg").unlink()
    (root / "yes" / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (root / "no" / "text.jpg").write_text("not an image at all\n")
    assert good
    code, err = _run_cli(["--data-root", root, "--out", tmp_path / "o", "--val", "0.2", "--test", "0.2"], capsys)
    assert code == 0
    assert "truncated.jpg" in err and "text.jpg" in err and "excluded" in err
    frame, info = _read(tmp_path / "o")
    assert info["unreadable"]["count"] == 2
    assert sorted(f["path"] for f in info["unreadable"]["files"]) == ["no/text.jpg", "yes/truncated.jpg"]
    assert len(frame) == 12 and not frame["path"].str.contains("truncated|text").any()


def test_bad_ratios_and_inputs(tmp_path, capsys):
    root = _class_folders(tmp_path / "d", {"no": 4, "yes": 4})
    assert "together below 1" in _run_cli(["--data-root", root, "--out", tmp_path / "o", "--val", "0.5",
                                           "--test", "0.5"], capsys)[1]
    assert "exactly one of" in _run_cli(["--out", tmp_path / "o"], capsys)[1]
    assert "data root not found" in _run_cli(["--data-root", tmp_path / "nope", "--out", tmp_path / "o"], capsys)[1]


def test_leakage_free_reads_every_counter():
    from medclf.prepare.partition import leakage_free

    clean = {"groups_across_splits": 0, "crossing_groups": [], "exact_duplicates_across_splits": 0,
             "near_duplicates_across_splits": 0, "near_duplicate_pairs_across_splits": []}
    assert leakage_free({"leakage": clean})
    for key in ("groups_across_splits", "exact_duplicates_across_splits", "near_duplicates_across_splits"):
        assert not leakage_free({"leakage": {**clean, key: 1}})
