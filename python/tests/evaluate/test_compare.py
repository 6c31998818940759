"""`medclf compare`: paired DeLong between runs on the same images; R and Python agree to 1e-9."""

import json
import shutil

import numpy as np
import pytest

from medclf import cli
from medclf.core.errors import MedclfError
from medclf.evaluate import compare as C
from medclf.evaluate import r_bridge

from prediction_files import assert_same, binary_probs, normalise_rows, write_predictions

HAM_CLASSES = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]


def _shuffled(path, order):
    obj = json.loads(path.read_text())
    for key in ("paths", "labels", "predictions", "probabilities", "logits", "predictive probabilities",
                "label probabilities"):
        obj[key] = [obj[key][i] for i in order]
    path.write_text(json.dumps(obj))


@pytest.fixture()
def runs(tmp_path):
    rng = np.random.default_rng(11)
    y = rng.integers(0, 2, 70)
    folders = []
    for i, noise in enumerate((0.8, 1.6, 0.8)):
        folder = tmp_path / f"run{i}"
        folder.mkdir()
        p1 = 1 / (1 + np.exp(-(2 * y - 1 + rng.normal(0, noise, 70))))
        write_predictions(folder / "predictions_test.json", y, binary_probs(np.round(p1, 2)), ["no", "yes"], "yes")
        folders.append(folder)
    _shuffled(folders[1] / "predictions_test.json", rng.permutation(70))  # joined by path, not row order
    return folders


@pytest.fixture()
def multi_runs(tmp_path):
    rng = np.random.default_rng(12)
    y = rng.choice(7, 120)
    folders = []
    for i in range(2):
        folder = tmp_path / f"ham{i}"
        folder.mkdir()
        raw = rng.gamma(1.0, 1.0, (120, 7))
        raw[np.arange(120), y] += 1.0 + i
        write_predictions(folder / "predictions_test.json", y, normalise_rows(raw), HAM_CLASSES)
        folders.append(folder)
    return folders


def _request(folders, **options):
    return dict({"runs": [{"name": f.name, "predictions_path": str(f / "predictions_test.json")} for f in folders],
                 "positive": None, "group": None, "threshold": None}, **options)


@pytest.mark.skipif(shutil.which("Rscript") is None, reason="Rscript not installed")
def test_r_and_python_agree_on_every_number(runs, multi_runs):
    requests = {"three binary runs": _request(runs), "threshold": _request(runs[:2], threshold=0.3),
                "multi-class": _request(multi_runs),
                "grouped": _request(multi_runs, group={"name": "malignant", "classes": ["mel", "bcc", "akiec"]})}
    for what, request in requests.items():
        python = json.loads(json.dumps(C.python_compare(request)))
        assert_same(r_bridge.run_rscript(C.COMPARE_TASK, request), python, f"{what} (Rscript vs Python)")
        try:
            assert_same(r_bridge.run_rpy2(C.COMPARE_TASK, request), python, f"{what} (rpy2 vs Python)")
        except r_bridge.EngineUnavailable:
            pass


def test_three_runs_give_one_row_each_and_three_pairwise_tests(runs, tmp_path):
    result, written = C.compare_runs(runs, out_dir=tmp_path / "cmp", engine="python")
    assert [r["name"] for r in result["runs"]] == ["run0", "run1", "run2"]
    assert [(p["a"], p["b"]) for p in result["pairwise"]] == [("run0", "run1"), ("run0", "run2"), ("run1", "run2")]
    assert result["joined_by"] == "paths"
    for p in result["pairwise"]:
        assert p["difference"]["estimate"] == pytest.approx(p["auc_a"] - p["auc_b"])
        assert p["difference"]["lower"] < p["difference"]["estimate"] < p["difference"]["upper"]
        assert 0 <= p["p_value"] <= p["p_holm"] <= 1
    assert json.loads(written["json"].read_text())["schema"] == "medclf.comparison/1"
    assert "| run1 | run2 | yes |" in written["markdown"].read_text()


def test_identical_runs_have_difference_zero_and_p_one(runs):
    shutil.copy(runs[0] / "predictions_test.json", runs[2] / "predictions_test.json")
    result, _ = C.compare_runs([runs[0], runs[2]], engine="python")
    pair = result["pairwise"][0]
    assert pair["difference"]["estimate"] == 0 and pair["p_value"] == 1.0


def test_refuses_different_images_or_labels(runs, capsys):
    obj = json.loads((runs[1] / "predictions_test.json").read_text())
    obj["paths"][0] = "elsewhere.png"
    (runs[1] / "predictions_test.json").write_text(json.dumps(obj))
    with pytest.raises(MedclfError, match="images differ"):
        C.compare_runs(runs[:2], engine="python")
    assert cli.main(["compare", str(runs[0]), str(runs[1]), "--engine", "rscript"]) == 1
    assert "images differ" in capsys.readouterr().err
    obj = json.loads((runs[2] / "predictions_test.json").read_text())
    obj["labels"][5] = 1 - obj["labels"][5]
    obj["label probabilities"][5] = obj["label probabilities"][5][::-1]
    (runs[2] / "predictions_test.json").write_text(json.dumps(obj))
    with pytest.raises(MedclfError, match="labels differ .* for 1 image"):
        C.compare_runs([runs[0], runs[2]], engine="python")


def test_cli_writes_table(runs, tmp_path, capsys):
    assert cli.main(["compare", *map(str, runs), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "Pairwise paired DeLong" in out and (tmp_path / "out" / "compare.json").is_file()


def test_runs_with_the_same_folder_name_are_labelled_by_a_unique_path_suffix(runs, tmp_path):
    folders = []
    for study, source in (("A", runs[0]), ("B", runs[1])):
        folder = tmp_path / "results" / study / "resnet18"
        folder.mkdir(parents=True)
        shutil.copy(source / "predictions_test.json", folder / "predictions_test.json")
        folders.append(folder)
    for engine in ("python", "rscript"):
        result, written = C.compare_runs(folders, out_dir=tmp_path / f"cmp_{engine}", engine=engine)
        assert [r["name"] for r in result["runs"]] == ["A/resnet18", "B/resnet18"]
        assert (result["pairwise"][0]["a"], result["pairwise"][0]["b"]) == ("A/resnet18", "B/resnet18")
        assert "| A/resnet18 | B/resnet18 | yes |" in written["markdown"].read_text()
    assert C.path_labels([runs[0], runs[1]]) == ["run0", "run1"]
    assert C.path_labels([tmp_path / "x" / "p.json", tmp_path / "y" / "p.json"]) == ["x/p", "y/p"]


def test_a_run_is_not_compared_with_itself_however_spelled(runs, tmp_path, capsys):
    (tmp_path / "alias").symlink_to(runs[0])
    spellings = [runs[0] / ".." / runs[0].name, tmp_path / "alias", runs[0] / "predictions_test.json"]
    for other in spellings:
        with pytest.raises(MedclfError, match="is the same predictions file as .*; compare a run with another run"):
            C.compare_runs([runs[0], other], engine="python")
    # each engine refuses it too, whoever calls it
    same = {"runs": [{"name": "a", "predictions_path": str(runs[0] / "predictions_test.json")},
                     {"name": "b", "predictions_path": str(tmp_path / "alias" / "predictions_test.json")}]}
    with pytest.raises(MedclfError, match="is the same predictions file as"):
        C.python_compare(same)
    with pytest.raises(MedclfError, match="is the same predictions file as"):
        r_bridge.run_rscript(C.COMPARE_TASK, same)
    assert cli.main(["compare", str(runs[0]), str(runs[0]) + "/", "--engine", "rscript"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not with itself" in err[0]


@pytest.mark.parametrize("engine, route", [("python", "Python"), ("rscript", "Rscript")])
def test_compare_names_the_engine_that_ran(runs, engine, route):
    result, _ = C.compare_runs(runs[:2], engine=engine)
    assert result["engine"]["route"] == route
    assert f"\nEngine: {route} (" in C.markdown_table(result)
