"""Issue 14 part 1: metadata fusion (encoder, leak refusal, predictions that need the columns),
differential learning rates and synthetic hair, on hand-made tables and real HAM10000 images."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from medclf.core.errors import MedclfError
from medclf.core.splits import SplitTable
from medclf.data import hair, transforms
from medclf.models import architectures as models
from medclf.models import metadata
from medclf.train.training import epoch_seed

SENTINEL_SITE = "val_test_only_site"  # a localization only val and test rows have
SENTINEL_AGE = 999.0  # an age only val and test rows have


def _table(frame, label_column="dx"):
    return SplitTable(frame, ["benign", "malignant"], "malignant", source="splits.csv",
                      info={"label_column": label_column})


# ---------------------------------------------------------------- the encoder on a hand-made table

def test_encoder_values_on_a_hand_made_table():
    train = pd.DataFrame({"age": ["30", "50", ""], "sex": ["male", "female", "unknown"]})
    encoder = metadata.fit_encoder(train, ["age", "sex"])
    age, sex = encoder["columns"]
    assert (age["kind"], age["mean"], age["std"]) == ("numeric", 40.0, 10.0)  # missing rows left out
    assert (sex["kind"], sex["levels"]) == ("categorical", ["female", "male"])  # `unknown` is missing
    assert encoder["width"] == 2 + 3
    later = pd.DataFrame({"age": ["45", "35", "NaN", "old"], "sex": ["female", "other", "", "male"]})
    got = metadata.encode(encoder, later)
    expected = np.array([
        # age, age=missing, sex=female, sex=male, sex=missing
        [1 / 2, 0, 1, 0, 0],
        [-1 / 2, 0, 0, 0, 1],  # a level train never saw is encoded as missing
        [0, 1, 0, 0, 1],
        [0, 1, 0, 1, 0],  # not a number in a numeric column: the missing indicator
    ], dtype=np.float32)
    np.testing.assert_array_equal(got, expected)


def test_encoder_missing_handling_and_constant_column():
    train = pd.DataFrame({"age": ["", "unknown", "NA"], "size": ["4", "4", "4"]})
    encoder = metadata.fit_encoder(train, ["age", "size"])
    age, size = encoder["columns"]
    # A column missing in every train row keeps only its missing level; a constant number has std 1.
    assert (age["kind"], age["features"]) == ("categorical", ["age=missing"])
    assert (size["mean"], size["std"]) == (4.0, 1.0)
    got = metadata.encode(encoder, pd.DataFrame({"age": ["20"], "size": ["6"]}))
    np.testing.assert_array_equal(got, np.array([[1, 2, 0]], dtype=np.float32))


def test_encoder_is_plain_json():
    encoder = metadata.fit_encoder(pd.DataFrame({"age": ["30", "50"], "sex": ["male", ""]}), ["age", "sex"])
    assert json.loads(json.dumps(encoder)) == encoder


# ---------------------------------------------------------------- refusals

@pytest.mark.parametrize("column, allowed, words", [
    ("dx_type", (), ["dx_type", "follow_up exists only for nevi", "--allow-feature dx_type"]),
    ("dx", (), ["dx", "it is the label"]),  # partition.json's label column
    ("label_original", (), ["label_original", "it is the label"]),
    ("split", (), ["split", "bookkeeping"]),
    ("agee", (), ["'agee'", "columns here: age, sex, dx_type, dx"]),
])
def test_feature_refusals_name_the_column_and_reason(column, allowed, words):
    frame = pd.DataFrame({"path": ["a.jpg"], "label": ["benign"], "label_index": [0], "split": ["train"],
                          "group": ["a"], "label_original": ["nv"], "age": ["30"], "sex": ["male"],
                          "dx_type": ["follow_up"], "dx": ["nv"]})
    with pytest.raises(MedclfError) as err:
        metadata.check_features(["age", column], _table(frame), allowed)
    for word in words:
        assert word in str(err.value)


def test_allow_feature_accepts_a_leaking_column():
    frame = pd.DataFrame({"path": ["a.jpg"], "split": ["train"], "dx_type": ["histo"]})
    metadata.check_features(["dx_type"], _table(frame), allowed=["dx_type"])  # no error


def test_lr_metadata_without_metadata_is_refused():
    from medclf.train.training import resolve_config

    with pytest.raises(MedclfError, match="--lr-metadata 0.01: there is no metadata branch"):
        resolve_config({"splits": "s.csv", "lr_metadata": 0.01})
    with pytest.raises(MedclfError, match="--lr-head 0.0: a learning rate must be above 0"):
        resolve_config({"splits": "s.csv", "lr_head": 0.0})


# ---------------------------------------------------------------- differential learning rates

def test_parameter_groups_of_a_plain_and_a_fused_model():
    plain, _ = models.build_model("resnet18", 2)
    groups = models.parameter_groups(plain, 1e-3, {"backbone": 1e-4})
    assert [(g["name"], g["lr"]) for g in groups] == [("backbone", 1e-4), ("head", 1e-3)]
    assert groups[1]["params"] == list(plain.fc.parameters())
    assert sum(len(g["params"]) for g in groups) == len(list(plain.parameters()))
    assert len(models.parameter_groups(plain, 1e-3)) == 1  # one learning rate, one group

    fused = metadata.FusionModel(models.build_model("resnet18", 2)[0], n_metadata=5, n_outputs=2)
    groups = models.parameter_groups(fused, 1e-3, {"backbone": 1e-4, "metadata": 3e-3, "head": 1e-2})
    assert [(g["name"], g["lr"]) for g in groups] == [("backbone", 1e-4), ("metadata", 3e-3), ("head", 1e-2)]
    assert sum(len(g["params"]) for g in groups) == len(list(fused.parameters()))
    models.set_backbone_trainable(fused, False)  # --freeze-backbone keeps the metadata branch trainable
    assert [g["name"] for g in models.parameter_groups(fused, 1e-3, {"head": 1e-2})] == ["metadata", "head"]


def test_fusion_model_uses_the_metadata():
    torch.manual_seed(0)
    fused = metadata.FusionModel(models.build_model("resnet18", 3)[0], n_metadata=4, n_outputs=3).eval()
    images = torch.rand(2, 3, 32, 32)
    a = fused(images, torch.zeros(2, 4))
    b = fused(images, torch.ones(2, 4))
    assert a.shape == (2, 3) and not torch.allclose(a, b)
    bound = metadata.BoundMetadata(fused, torch.ones(4))  # explain's image-only view
    torch.testing.assert_close(bound(images), b)


# ---------------------------------------------------------------- hair

def _image(seed, side=48):
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.integers(150, 230, (3, side, side), dtype=np.uint8))


def test_hair_changes_pixels_not_labels():
    from medclf.data.datasets import CachedImageDataset

    cache = np.stack([_image(k).numpy() for k in range(4)])
    labels = [0, 1, 1, 0]
    torch.manual_seed(epoch_seed(0, 1))
    dataset = CachedImageDataset(cache, labels, transforms.train_transform("none+hair", 48, [0, 0, 0], [1, 1, 1]))
    plain = CachedImageDataset(cache, labels, transforms.train_transform("none", 48, [0, 0, 0], [1, 1, 1]))
    changed = 0
    for k in range(4):
        (haired, label), (original, label0) = dataset[k], plain[k]
        assert label == label0 == labels[k]
        changed += int(not torch.equal(haired, original))
    assert changed >= 3  # 0..6 strands: at most a 1/7 chance per image of none
    step = hair.RandomHair(min_strands=1)
    image = _image(9)
    out = step(image)
    darker = out.int().sum(0) < image.int().sum(0)
    assert darker.any() and not (out.int().sum(0) > image.int().sum(0) + 24).any()  # strands are dark
    assert torch.equal(image, _image(9))  # the input tensor is left as it was


def test_hair_is_reproducible_per_seed_epoch_and_image():
    step = hair.RandomHair(min_strands=1)
    a, b = _image(1), _image(2)

    def painted(seed, epoch, images):
        torch.manual_seed(epoch_seed(seed, epoch))
        return [step(x) for x in images]

    first = painted(0, 3, [a, b])
    assert all(torch.equal(x, y) for x, y in zip(first, painted(0, 3, [a, b])))
    assert torch.equal(first[1], painted(0, 3, [b])[0])  # not the order of the images
    assert torch.equal(first[0], painted(0, 3, [a, b, b, a])[0])  # nor how often the stream was drawn
    assert not torch.equal(first[0], painted(0, 4, [a])[0])  # another epoch, other strands
    assert not torch.equal(first[0], painted(1, 3, [a])[0])  # another seed, other strands


def test_augment_spec_with_hair():
    assert transforms.parse_spec("lesion-hair") == ("lesion", ["hair"])
    assert transforms.parse_spec("flips+hair") == ("flips", ["hair"])
    assert transforms.cache_side("flips+hair", 64) == transforms.cache_side("flips", 64)
    image = _image(5, 73)
    evaluated = transforms.eval_transform("lesion-hair", 64, [0.5] * 3, [0.25] * 3)(image)
    torch.testing.assert_close(evaluated, transforms.eval_transform("lesion", 64, [0.5] * 3, [0.25] * 3)(image))
    for bad, words in (("flips+hiar", "step 'hiar'"), ("flops+hair", "unknown preset 'flops'")):
        with pytest.raises(MedclfError, match=words):
            transforms.parse_spec(bad)


# ---------------------------------------------------------------- a real run (HAM10000 images)

def _ham_splits(ham_root, folder):
    """A tiny lesion-grouped-by-construction splits.csv of real images (16 train, 8 val, 8 test) with
    HAM10000's metadata columns; val and test rows carry sentinel values train never has."""
    meta = pd.read_csv(ham_root / "HAM10000_metadata.csv", dtype=str, keep_default_na=False)
    meta = meta.drop_duplicates("lesion_id")
    picked = pd.concat([meta[meta.dx == "nv"].head(16), meta[meta.dx == "mel"].head(16)])
    picked = picked.assign(label=np.where(picked.dx == "mel", "malignant", "benign"))
    picked["label_index"] = (picked.label == "malignant").astype(int)
    picked["split"] = (["train"] * 8 + ["val"] * 4 + ["test"] * 4) * 2
    held_out = picked.split != "train"
    picked.loc[held_out, "localization"] = SENTINEL_SITE
    picked.loc[held_out, "age"] = str(SENTINEL_AGE)
    picked["path"] = "images/" + picked.image_id + ".jpg"
    picked["group"] = picked.lesion_id
    columns = ["path", "label", "label_index", "split", "group", "dx_type", "age", "sex", "localization"]
    folder.mkdir(parents=True)
    picked = picked[columns]
    picked.to_csv(folder / "splits.csv", index=False)
    (folder / "partition.json").write_text(json.dumps(
        {"classes": ["benign", "malignant"], "positive_class": "malignant", "data_root": str(ham_root),
         "label_column": "dx"}))
    return folder / "splits.csv", picked


@pytest.fixture(scope="module")
def fused_run(ham_root, tmp_path_factory):
    """One 1-epoch run with metadata and hair, with spies on the encoder fit and the hair step."""
    from medclf.infer.predict import run_test
    from medclf.train.training import run_training

    base = tmp_path_factory.mktemp("fused")
    splits, frame = _ham_splits(ham_root, base / "split")
    fitted, haired = [], []
    fit, paint = metadata.fit_encoder, hair.RandomHair.forward
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(metadata, "fit_encoder", lambda rows, columns: fitted.append(rows.copy()) or fit(rows, columns))
        mp.setattr(hair.RandomHair, "forward", lambda self, image: haired.append(hair.image_key(image)) or paint(self, image))
        summary = run_training({"splits": str(splits), "img_size": 32, "epochs": 1, "batch_size": 8, "threads": 1,
                                "out": str(base / "results"), "run_name": "fused", "progress": False,
                                "augment": "flips+hair", "metadata_features": "age,sex,localization",
                                "lr_head": 3e-3, "lr_metadata": 2e-3})
        written = run_test(summary["run"], progress=False)
    return {"run": summary["run"], "splits": splits, "frame": frame, "fitted": fitted, "haired": haired,
            "written": written, "base": base}


@pytest.mark.slow
def test_encoder_is_fitted_on_train_rows_only(fused_run):
    assert len(fused_run["fitted"]) == 1
    rows = fused_run["fitted"][0]
    assert set(rows["split"]) == {"train"} and len(rows) == 16
    config = json.loads((fused_run["base"] / "results" / "fused" / "config.json").read_text())
    encoder = config["metadata"]
    site = next(c for c in encoder["columns"] if c["name"] == "localization")
    age = next(c for c in encoder["columns"] if c["name"] == "age")
    assert SENTINEL_SITE not in site["levels"]
    train_ages = [float(a) for a in fused_run["frame"].query("split == 'train'")["age"] if a]
    assert age["mean"] == pytest.approx(np.mean(train_ages)) and age["mean"] < SENTINEL_AGE / 16


@pytest.mark.slow
def test_metadata_run_predicts_with_its_columns(fused_run):
    record = json.loads(fused_run["written"][0].read_text())
    assert record["split"] == "test" and len(record["paths"]) == 8
    assert np.allclose(np.sum(record["probabilities"], axis=1), 1.0)
    config = json.loads((fused_run["base"] / "results" / "fused" / "config.json").read_text())
    assert config["arguments"]["lr_head"] == 3e-3


@pytest.mark.slow
def test_predictions_without_the_columns_are_refused_naming_them(fused_run):
    from medclf.infer.predict import run_test

    other = fused_run["base"] / "other"
    other.mkdir()
    frame = fused_run["frame"].query("split == 'test'").assign(split="val")  # images the run never saw
    frame.drop(columns=["sex", "localization"]).to_csv(other / "splits.csv", index=False)
    (other / "partition.json").write_text((fused_run["splits"].parent / "partition.json").read_text())
    before = fused_run["written"][0].read_bytes()
    with pytest.raises(MedclfError) as err:
        run_test(fused_run["run"], split="val", splits=other / "splits.csv", progress=False,
                 out_dir=fused_run["base"] / "refused")
    assert "column(s) sex, localization missing" in str(err.value)
    assert "--metadata-features age,sex,localization" in str(err.value)
    assert not (fused_run["base"] / "refused").exists()
    assert fused_run["written"][0].read_bytes() == before


@pytest.mark.slow
def test_hair_touches_train_images_only(fused_run, ham_root):
    from medclf.data.datasets import build_cache

    frame = fused_run["frame"]
    keys = {}
    for split in ("train", "val", "test"):
        files = [ham_root / p for p in frame[frame.split == split]["path"]]
        cache = build_cache(files, 32, "memory", progress=False)
        keys[split] = {hair.image_key(torch.from_numpy(np.array(x))) for x in cache}
    haired = fused_run["haired"]
    assert len(haired) == 16  # one epoch: each train image once
    assert set(haired) == keys["train"]
    assert not set(haired) & (keys["val"] | keys["test"])  # validation and test never got hair


@pytest.mark.slow
def test_explain_holds_each_images_metadata(fused_run):
    from medclf.explain.run import run_explain

    _, _, summary = run_explain(fused_run["run"], n=2, steps=4, out_dir=fused_run["base"] / "explain",
                                progress=False)
    assert summary["target_layer"] == "backbone.layer4"
    assert len(summary["images"]) == 2 and summary["faithfulness"]["n_images"] == 2
    assert [s["randomised"][-1] for s in summary["sanity_check"]["stages"]] == ["head", "metadata_branch", "backbone"]


@pytest.mark.slow
def test_tta_keeps_a_metadata_runs_columns(fused_run):
    """--tta views transform the images and pass each image's metadata row unchanged."""
    from medclf.infer.predict import run_test

    written = run_test(fused_run["run"], tta="hflip", progress=False)
    record = json.loads(written[0].read_text())
    plain = json.loads(fused_run["written"][0].read_text())
    assert record["model"]["tta"]["views"] == ["identity", "hflip"] and record["paths"] == plain["paths"]
    assert np.allclose(np.sum(record["probabilities"], axis=1), 1.0)
