"""Issue 8 item 3: splits.csv keeps its own label -> label_index mapping and refuses rows that disagree."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medclf.cli import main
from medclf.core.errors import MedclfError
from medclf.core.splits import read_splits

HEADER = "path,label,label_index,split,group\n"


def _write(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(HEADER + "".join(f"{r},g{i}\n" for i, r in enumerate(rows)), encoding="utf-8")
    return path


def test_classes_yes_no_keep_their_order_without_partition_json(tmp_path):
    """`--classes yes,no` gives yes index 0; read without partition.json, index 0 must still be yes."""
    data = tmp_path / "data"
    for k, name in enumerate(("no", "yes")):
        (data / name).mkdir(parents=True)
        for i in range(5):
            rng = np.random.default_rng(10 * k + i)
            Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8)).save(data / name / f"{name}{i}.png")
    out = tmp_path / "p"
    assert main(["partition", "--data-root", str(data), "--out", str(out), "--classes", "yes,no", "--val", "0.2",
                 "--test", "0.2", "--quiet"]) == 0
    (out / "partition.json").unlink()
    table = read_splits(out / "splits.csv", data_root=data)
    assert table.classes == ["yes", "no"]
    for row in table.frame.itertuples():
        assert table.classes[row.label_index] == row.label and row.path.startswith(row.label + "/")
    assert table.positive_class == "yes"


@pytest.mark.parametrize("rows, message", [
    (["a.png,yes,0,train", "b.png,no,1,train", "c.png,yes,1,test"],
     r"label 'yes' comes with several label_index values \(0, 1\) on line\(s\) 2, 4"),
    (["a.png,yes,0,train", "b.png,no,0,train"],
     r"label_index 0 comes with several label values \(no, yes\) on line\(s\) 2, 3"),
    (["a.png,yes,0,train", "b.png,no,2,train"], r"label_index values \[0, 2\] are not 0..1"),
    (["a.png,yes,0,train", "b.png,no,x,train"], r"label_index is not a whole number on line\(s\) 3"),
])
def test_inconsistent_rows_without_partition_json_are_refused(tmp_path, rows, message):
    path = _write(tmp_path / "s" / "splits.csv", rows)
    with pytest.raises(MedclfError, match=message) as err:
        read_splits(path)
    assert str(err.value).startswith(f"{path}: ") and "re-run `medclf partition`" in str(err.value)


def test_rows_disagreeing_with_partition_json_are_refused(tmp_path):
    path = _write(tmp_path / "s" / "splits.csv", ["a.png,no,0,train", "b.png,yes,0,train", "c.png,yes,1,val"])
    (path.parent / "partition.json").write_text('{"classes": ["no", "yes"], "positive_class": "yes"}')
    with pytest.raises(MedclfError, match=r"label and label_index disagree on line\(s\) 3 \(line 3: label 'yes' "
                                          r"with label_index 0, which is 'no' in .*partition.json\)"):
        read_splits(path)


@pytest.mark.slow
def test_label_index_outside_the_classes_is_one_clear_line_in_train(tmp_path, capsys):
    """Today: IndexError traceback in train. Now: the file, the line and the fix."""
    path = _write(tmp_path / "s" / "splits.csv", ["a.png,no,0,train", "b.png,yes,1,train", "c.png,yes,5,val"])
    (path.parent / "partition.json").write_text('{"classes": ["no", "yes"], "positive_class": "yes"}')
    before = path.read_bytes()
    assert main(["train", "--splits", str(path), "--out", str(tmp_path / "r"), "--run-name", "x",
                 "--img-size", "32", "--epochs", "1", "--no-progress"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == (f"medclf train: error: {path}: label_index 5 on line(s) 4 is outside the 2 classes of "
                   f"{path.parent / 'partition.json'} (0..1: no, yes); fix label_index or re-run `medclf partition`")
    assert path.read_bytes() == before


def test_seed002_index_outside_the_named_classes_is_refused(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("a.png,0\nb.png,1\nc.png,2\n")
    with pytest.raises(MedclfError, match=r"train.csv: class index 2 on row\(s\) 4 is outside the 2 classes"):
        read_splits(path, classes=["no", "yes"])
    assert read_splits(path).classes == ["0", "1", "2"]
