"""The balance table (medclf.prepare.balance): standardized differences by hand, column kinds,
the warnings partition prints, and the table on the real HAM10000 development set."""

import json
import math

import pandas as pd
import pytest

from medclf.cli import main
from medclf.prepare import balance

HAM_STUDY = ["--image-col", "image_id", "--label-col", "dx", "--group-col", "lesion_id", "--stratify-by", "dx_type",
             "--val", "0.15", "--test", "0.2", "--seed", "0"]


def frame(rows):
    return pd.DataFrame(rows, columns=["path", "label", "split", "group", "age", "sex", "record"]).astype(str)


@pytest.fixture
def small():
    """train: groups g1 (2 images), g2, g3; test: g4, g5 (1 image each). Ages as text, like splits.csv."""
    return frame([
        ("a", "yes", "train", "g1", "20", "F", "r1"), ("b", "yes", "train", "g1", "20", "F", "r2"),
        ("c", "no", "train", "g2", "40", "M", "r3"), ("d", "no", "train", "g3", "40", "M", "r4"),
        ("e", "yes", "test", "g4", "30", "F", "r5"), ("f", "no", "test", "g5", "50", "F", "r6"),
    ])


def test_standardized_differences_by_hand(small):
    table = balance.balance_table(small, ["age", "sex", "record"])
    rows = {(r["variable"], r["level"]): r for r in table["rows"]}
    assert table["splits"]["train"] == {"images": 4, "groups": 3, "images_per_group": {
        "mean": round(4 / 3, 4), "sd": round(math.sqrt(2 / 9), 4), "median": 1.0, "max": 2,
        "multi_image_groups": round(1 / 3, 4), "groups_per_size_band": {"1": 2, "2": 1}}}
    # age is numeric only above MAX_CATEGORY_LEVELS values: here its 4 values make it categorical.
    assert rows[("age", "20")]["share"] == {"train": 1 / 2, "test": 0.0}
    # sex = F: train 2/4, test 2/2 -> (1 - 1/2) / sqrt((0 + 1/4) / 2) = sqrt(2)
    assert rows[("sex", "F")]["smd"]["test"] == pytest.approx(math.sqrt(2), abs=1e-4)
    # images per group: train 2, 1, 1 (mean 4/3, var 2/9); test 1, 1 (var 0) -> (1 - 4/3) / sqrt(1/9) = -1
    assert rows[("images per group", None)]["smd"]["test"] == pytest.approx(-1.0, abs=1e-4)
    assert table["skipped_columns"] == {}  # 6 distinct records are too few to look like identifiers


def test_numeric_columns_mean_sd_missing_and_identifiers_skipped():
    ages = [str(20 + i) for i in range(12)] + ["", "60"]
    rows = [(f"p{i}", "no", "train" if i < 10 else "test", f"g{i}", ages[i], "F", f"id{i}") for i in range(14)]
    table = balance.balance_table(frame(rows), ["age", "record"])
    age = next(r for r in table["rows"] if r["variable"] == "age")
    assert age["mean"]["train"] == pytest.approx(24.5) and age["missing"] == {"train": 0.0, "test": 0.25}
    # train 20..29 (mean 29/2, SD sqrt(99/12)); test 30, 31, 60 -> mean 121/3, SD by hand
    train, test = list(range(20, 30)), [30, 31, 60]
    mean_t, mean_s = sum(train) / 10, sum(test) / 3
    var_t = sum((x - mean_t) ** 2 for x in train) / 10
    var_s = sum((x - mean_s) ** 2 for x in test) / 3
    assert age["smd"]["test"] == pytest.approx((mean_s - mean_t) / math.sqrt((var_s + var_t) / 2), abs=1e-4)
    assert table["skipped_columns"] == {"record": "identifier-like (nearly every value distinct)"}


def test_warnings_name_the_column_and_skip_values_too_rare_to_balance():
    # train 10 F + 10 M, test 8 F + 2 M. F: 18/30 of all -> 6 expected in test: compared,
    # (4/5 - 1/2) / sqrt((4/25 + 1/4) / 2) = 0.66. M: 4 expected in test: too rare, not warned.
    sexes = ["F"] * 10 + ["M"] * 10 + ["F"] * 8 + ["M"] * 2
    rows = [(f"p{i}", "no", "train" if i < 20 else "test", f"g{i}", "1", sex, "r") for i, sex in enumerate(sexes)]
    table = balance.balance_table(frame(rows), ["sex"])
    assert balance.imbalance_warnings(table) == [
        "test differs from train in sex = F: standardized difference +0.66 (over 0.1)"]
    male = next(r for r in table["rows"] if r["level"] == "M")
    assert male["sparse"] == {"test": True} and male["smd"]["test"] == pytest.approx(-0.66, abs=0.01)
    printed = balance.format_balance(table)
    assert "(+0.66*)" in printed and "(-0.66~)" in printed


@pytest.mark.slow
def test_ham_study_settings_balance_group_size_and_dx_type(ham_root, tmp_path, capsys):
    out = tmp_path / "part"
    assert main(["partition", "--quiet", "--metadata", str(ham_root / "HAM10000_metadata.csv"),
                 "--image-dir", str(ham_root / "images"), *HAM_STUDY, "--out", str(out)]) == 0
    info = json.loads((out / "partition.json").read_text())
    assert info["assignment"]["stratify_by"] == "dx_type"
    assert info["assignment"]["largest_class_share_deviation"] <= 0.06  # vasc: 29 images, one lesion is 3.4 points
    rows = [r for r in info["balance"]["rows"] if r["variable"] in ("images per group", "multi-image group", "dx_type")]
    assert len(rows) >= 5
    for row in rows:
        assert all(abs(d) <= 0.1 for d in row["smd"].values()), row
    warned = capsys.readouterr().err
    assert "dx_type" not in warned and "images per group" not in warned
