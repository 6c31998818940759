"""medclf crop: the box rule on hand-made maps, boxes on synthetic lesions, and the file contract."""

import csv
import json

import numpy as np
import pytest
from PIL import Image

from medclf import cli
from medclf.core.errors import MedclfError
from medclf.core.splits import read_splits, splits_csv_text
from medclf.data.preprocess import resize_and_crop
from medclf.explain import crop as C


def hot_map(cells, side=8):
    """An 8x8 map, 1 at the (row, col) cells, 0 elsewhere: threshold mean + 1 std keeps the cells."""
    attention = np.zeros((side, side))
    for r, c in cells:
        attention[r, c] = 1.0
    return attention


def corners(box):
    return (box.x0, box.y0, box.x1, box.y1)


# A 160 x 80 image: the model sees x in [40, 120), one map cell = 10 px. An 80 x 160 image: y in [40, 120).
@pytest.mark.parametrize("cells, width, height, expected, border", [
    ([(0, 0), (0, 1), (1, 0), (1, 1)], 160, 80, (30, 0, 70, 40), "top"),      # centre (50, 10), y0 -10 -> 0
    ([(6, 6), (6, 7), (7, 6), (7, 7)], 160, 80, (90, 40, 130, 80), "bottom"),  # centre (110, 70), y0 50 -> 40
    ([(3, 0), (3, 1), (4, 0), (4, 1)], 80, 160, (0, 60, 40, 100), "left"),     # centre (10, 80), x0 -10 -> 0
    ([(3, 6), (3, 7), (4, 6), (4, 7)], 80, 160, (40, 60, 80, 100), "right"),   # centre (70, 80), x0 50 -> 40
])
def test_box_is_square_shifted_inside_at_each_border_in_original_pixels(cells, width, height, expected, border):
    box = C.attention_box(hot_map(cells), width, height, k=1.0, margin=0.5, min_side=0.01)
    assert corners(box) == expected, border
    assert box.source == C.ATTENTION and box.region_pixels == 4
    assert box.x1 - box.x0 == box.y1 - box.y0 == 40  # 20 px region widened by half its side each way


def test_box_never_exceeds_the_image_and_keeps_x_along_the_width():
    box = C.attention_box(hot_map([(r, c) for r in range(6) for c in range(8)]), 160, 80, margin=1.0)
    assert corners(box) == (40, 0, 120, 80)  # capped at the shorter side (80), centred on the region's x
    right = C.attention_box(hot_map([(0, 7)]), 300, 100, margin=0.0, min_side=0.01)
    # short side 100, left offset 100, cell 12.5 px: column 7 -> x [187.5, 200), row 0 -> y [0, 12.5)
    assert (right.x0, right.y0, right.x1 - right.x0) == (188, 0, 12)


def test_uniform_map_and_empty_mask_fall_back_to_the_centre_square_and_say_so():
    uniform = C.attention_box(np.full((8, 8), 0.3), 160, 80)
    assert corners(uniform) == (40, 0, 120, 80) and uniform.source == "centre: uniform map"
    zeros = C.attention_box(np.zeros((8, 8)), 80, 160)  # normalise_maps turns a constant map into zeros
    assert corners(zeros) == (0, 40, 80, 120) and zeros.source == C.UNIFORM
    empty = C.attention_box(hot_map([(2, 2)]), 160, 80, k=100.0)
    assert corners(empty) == (40, 0, 120, 80) and empty.source == "centre: empty mask"


def test_largest_component_wins_and_min_side_applies():
    cells = [(0, 0)] + [(5, 5), (5, 6), (6, 5), (6, 6), (7, 7)]  # 8-connected: 5 cells against 1
    box = C.attention_box(hot_map(cells), 80, 80, margin=0.0, min_side=0.01)
    assert corners(box) == (50, 50, 80, 80) and box.region_pixels == 5
    small = C.attention_box(hot_map([(4, 4)]), 80, 80, margin=0.0, min_side=1 / 2)
    assert corners(small) == (25, 25, 65, 65)  # 10 px cell, widened to half of 80 around (45, 45)


def test_box_iou_on_hand_boxes():
    assert C.box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == 50 / 150
    assert C.box_iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0


# ------------------------------------------------------------------ synthetic lesions

def lesion_image(rng, width, height):
    """Skin-like noise with one dark disc; returns (image, the disc's bounding square)."""
    r = rng.uniform(0.12, 0.22) * min(width, height)
    cx, cy = rng.uniform(r, width - r), rng.uniform(r, height - r)
    yy, xx = np.mgrid[0:height, 0:width]
    skin = rng.normal(200, 12, (height, width, 3))
    skin[(xx - cx) ** 2 + (yy - cy) ** 2 <= r * r] = (70, 40, 30)
    return Image.fromarray(np.clip(skin, 0, 255).astype(np.uint8)), (cx - r, cy - r, cx + r, cy + r)


def darkness_attention(images, side=32):
    """A known attention map: the darkness of what the model sees (the centre square at `side` px)."""
    maps = []
    for img in images:
        gray = np.asarray(resize_and_crop(img, side).convert("L"), dtype=np.float64)
        maps.append((255 - gray) / 255)
    return np.stack(maps)


def write_dataset(root, n=16, seed=0):
    """Images of both classes at several shapes, a splits.csv (with metadata columns whose text must
    survive as written) and partition.json; returns (splits path, {path: lesion box})."""
    rng = np.random.default_rng(seed)
    rows, truth = [], {}
    for i in range(n):
        width, height = [(120, 90), (90, 120), (100, 100)][i % 3]
        img, box = lesion_image(rng, width, height)
        label = ["benign", "malignant"][i % 2]
        rel = f"{label}/img{i:02d}.{'png' if i % 4 == 3 else 'jpg'}"
        (root / "images" / label).mkdir(parents=True, exist_ok=True)
        img.save(root / "images" / rel, quality=98)
        truth[rel] = box
        split = ["train", "train", "val", "test"][(i // 2) % 4]
        rows.append({"path": rel, "label": label, "label_index": i % 2, "split": split, "group": f"L{i // 2}",
                     "age": ["45", "", "70.5"][i % 3], "sex": ["female", "male", ""][i % 3], "site": "back"})
    import pandas as pd

    splits = root / "split" / "splits.csv"
    splits.parent.mkdir(parents=True)
    splits.write_text(splits_csv_text(pd.DataFrame(rows), ["age", "sex", "site"]))
    (root / "split" / "partition.json").write_text(json.dumps(
        {"classes": ["benign", "malignant"], "positive_class": "malignant", "data_root": str(root / "images"),
         "group_column": "group", "seed": 0}))
    return splits, truth


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A synthetic lesion set and a ResNet-18 trained one epoch on it at 32 px (stage 1)."""
    from medclf.train.training import run_training

    root = tmp_path_factory.mktemp("crop")
    splits, truth = write_dataset(root)
    run_training({"splits": str(splits), "img_size": 32, "epochs": 1, "batch_size": 8, "out": str(root),
                  "run_name": "stage1", "progress": False, "device": "cpu", "threads": 1})
    return {"root": root, "splits": splits, "truth": truth, "run": root / "stage1"}


@pytest.mark.slow
def test_boxes_find_synthetic_lesions_with_a_known_attention_map(tiny, tmp_path, monkeypatch):
    monkeypatch.setattr(C, "attention_maps", lambda model, config, images, layer, device: darkness_attention(images))
    C.run_crop(tiny["run"], tiny["splits"], tmp_path / "out", progress=False)
    with open(tmp_path / "out" / "boxes.csv", newline="") as fh:
        boxes = list(csv.DictReader(fh))
    ious = [C.box_iou(tuple(int(b[k]) for k in ("x0", "y0", "x1", "y1")), tiny["truth"][b["path"]]) for b in boxes]
    assert len(ious) == 16 and all(b["source"] == "attention" for b in boxes)
    assert sum(iou >= 0.5 for iou in ious) >= 12, ious  # lesions outside the centre square cannot be seen


@pytest.mark.slow
def test_crop_writes_copies_boxes_and_a_trainable_split_keeping_every_column(tiny, tmp_path, capsys):
    source_files = {p: p.read_bytes() for p in (tiny["root"] / "images").rglob("*") if p.is_file()}
    out = tmp_path / "crops"
    assert cli.main(["crop", "--run", str(tiny["run"]), "--splits", str(tiny["splits"]), "--out", str(out),
                     "--threads", "1", "--no-progress"]) == 0
    assert f"{out}/splits.csv" in capsys.readouterr().out
    assert {p: p.read_bytes() for p in (tiny["root"] / "images").rglob("*") if p.is_file()} == source_files
    before = tiny["splits"].read_text().splitlines()
    after = (out / "splits.csv").read_text().splitlines()
    assert after == before  # same relative paths, now under OUT/images; every other column byte for byte
    table = read_splits(out / "splits.csv")
    assert table.data_root == (out / "images").resolve() and table.positive_class == "malignant"
    info = json.loads((out / "partition.json").read_text())
    assert info["group_column"] == "group" and info["crop"]["source_splits"] == str(tiny["splits"].resolve())
    with open(out / "boxes.csv", newline="") as fh:
        boxes = {b["path"]: b for b in csv.DictReader(fh)}
    for rel in table.frame["path"]:
        crop = Image.open(table.resolve(rel))
        b = boxes[rel]
        assert crop.size == (int(b["x1"]) - int(b["x0"]), int(b["y1"]) - int(b["y0"]))  # square, as boxed
        assert crop.format == ("PNG" if rel.endswith(".png") else "JPEG")
        assert 0 <= int(b["x0"]) < int(b["x1"]) <= int(b["width"]) and 0 <= int(b["y0"]) < int(b["y1"]) <= int(b["height"])
    assert json.loads((out / "crop.json").read_text())["n"] == 16


@pytest.mark.slow
def test_crop_refuses_an_out_folder_inside_the_images_or_not_empty(tiny, tmp_path, capsys):
    inside = tiny["root"] / "images" / "crops"
    assert cli.main(["crop", "--run", str(tiny["run"]), "--splits", str(tiny["splits"]), "--out", str(inside),
                     "--no-progress"]) == 1
    assert "inside the image folder" in capsys.readouterr().err and not inside.exists()
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "keep.txt").write_text("mine")
    with pytest.raises(MedclfError, match="exists and is not empty"):
        C.run_crop(tiny["run"], tiny["splits"], tmp_path / "used", progress=False)
    assert (tmp_path / "used" / "keep.txt").read_text() == "mine"


@pytest.mark.slow
def test_embed_of_a_run_lists_every_image_with_its_split_and_label(tiny, tmp_path, capsys):
    from medclf.infer.embed import read_embeddings

    out = tmp_path / "emb.npz"
    assert cli.main(["embed", "--run", str(tiny["run"]), "--out", str(out), "--threads", "1", "--no-progress"]) == 0
    assert "512-d embeddings of resnet18" in capsys.readouterr().out
    data = read_embeddings(out)
    table = read_splits(tiny["splits"])
    assert data["embeddings"].shape == (16, 512) and data["embeddings"].dtype == np.float32
    assert data["paths"].tolist() == table.frame["path"].tolist()
    assert data["splits"].tolist() == table.frame["split"].tolist()
    assert data["labels"].tolist() == table.frame["label_index"].tolist()
    assert data["classes"].tolist() == ["benign", "malignant"] and data["meta"]["positive_class"] == "malignant"
    assert data["meta"]["source"] == {"run": str(tiny["run"])} and data["meta"]["img_size"] == 32
    assert np.isfinite(data["embeddings"]).all() and data["embeddings"].std(axis=0).max() > 0
