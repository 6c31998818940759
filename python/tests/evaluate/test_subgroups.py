"""medclf report --by (medclf.evaluate.subgroups): subgroup metrics by hand, bands, missing values,
"not estimable", Cochran's Q by hand, refusals and the forest plot."""

import json
from fractions import Fraction as F

import pytest
from prediction_files import python_results
from scipy.stats import chi2

from medclf.cli import main
from medclf.core.errors import MedclfError
from medclf.evaluate import report as R
from medclf.evaluate import subgroups as S

CLASSES = ["benign", "malignant"]
# (path, label, P(malignant), sex, age); one group per image
IMAGES = [("f1.png", 1, 0.9, "female", 25), ("f2.png", 0, 0.2, "female", 40), ("f3.png", 1, 0.6, "female", 61),
          ("f4.png", 0, 0.7, "female", 72), ("m1.png", 1, 0.8, "male", 33), ("m2.png", 0, 0.3, "male", 55),
          ("m3.png", 0, 0.85, "male", 48), ("m4.png", 1, 0.4, "male", 66), ("u1.png", 0, 0.1, "", "")]


def make_run(folder, images=IMAGES):
    folder.mkdir()
    rows = ["path,label,label_index,split,group,sex,age"] + [
        f"{p},{CLASSES[y]},{y},test,{p},{sex},{age}" for p, y, _, sex, age in images]
    (folder / "splits.csv").write_text("\n".join(rows) + "\n")
    (folder / "config.json").write_text(json.dumps({"arguments": {"splits": str(folder / "splits.csv")},
                                                    "splits_file": str(folder / "splits.csv")}))
    probabilities = [[1 - p, p] for _, _, p, _, _ in images]
    record = {"schema": "medclf.predictions/1", "split": "test", "classes": CLASSES, "positive_class": "malignant",
              "model": {"architecture": "fixture"}, "paths": [i[0] for i in images], "labels": [i[1] for i in images],
              "predictions": [int(p > 0.5) for _, _, p, _, _ in images], "probabilities": probabilities}
    (folder / "predictions_test.json").write_text(json.dumps(record))
    return folder


def levels(result, column):
    block = next(c for c in result["subgroups"]["columns"] if c["column"] == column)
    return {level["level"]: level for level in block["levels"]}, block


def test_each_subgroup_is_scored_on_its_own_images_at_the_runs_threshold(tmp_path):
    run = make_run(tmp_path / "run")
    out = R.report_run(run, engine="python", plots=False, by=["sex"])
    sex, block = levels(out["result"], "sex")
    assert list(sex) == ["female", "male", "missing"]
    female, male = sex["female"], sex["male"]
    assert (female["n"], female["n_positive"], female["prevalence"]) == (4, 2, 1 / 2)
    # female: positives 0.9, 0.6 against negatives 0.2, 0.7: 3 of 4 pairs ordered; at 0.5: sens 2/2, spec 1/2
    assert female["metrics"]["roc_auc"]["estimate"] == float(F(3, 4))
    assert (female["metrics"]["sensitivity"]["estimate"], female["metrics"]["specificity"]["estimate"]) == (1, 1 / 2)
    # male: 0.8 and 0.4 against 0.3 and 0.85: 2 of 4 pairs
    assert male["metrics"]["roc_auc"]["estimate"] == float(F(1, 2))
    assert sex["missing"]["n"] == 1 and sex["missing"]["metrics"]["roc_auc"]["estimate"] is None
    # the same numbers as a report of the subgroup's images alone
    alone = tmp_path / "female_test.json"
    record = json.loads((run / "predictions_test.json").read_text())
    keep = [i for i, image in enumerate(IMAGES) if image[3] == "female"]
    alone.write_text(json.dumps({**record, **{k: [record[k][i] for i in keep]
                                               for k in ("paths", "labels", "predictions", "probabilities")}}))
    direct = python_results(R.build_request(alone, threshold=0.5))
    assert female["metrics"]["roc_auc"] == direct["metrics"]["roc_auc"]
    assert female["metrics"]["calibration_intercept"] == direct["metrics"]["calibration_intercept"]
    assert block["heterogeneity"] is None  # male's interval spans 0 to 1: no standard error to weigh
    text = out["report"].read_text()
    assert "## Subgroups (at threshold 0.5)" in text and "not estimable (n = 0 positive, 1 negative)" in text
    assert "fewer than two subgroups with an AUC interval; not tested" in text


def test_the_heterogeneity_test_weighs_each_subgroups_auc_by_its_interval(tmp_path):
    import numpy as np

    rng = np.random.default_rng(4)
    images = []
    for sex, shift in (("female", 2.0), ("male", 0.5)):  # the model separates the classes better in women
        for i in range(60):
            y = int(rng.random() < 0.4)
            images.append((f"{sex}{i}.png", y, float(1 / (1 + np.exp(-(shift * (2 * y - 1) + rng.normal())))), sex, 50))
    out = R.report_run(make_run(tmp_path / "run", images), engine="python", plots=False, by=["sex"])
    sex, block = levels(out["result"], "sex")
    aucs = [sex[k]["metrics"]["roc_auc"] for k in ("female", "male")]
    expected = S.heterogeneity([a["estimate"] for a in aucs], [S.se_from_interval(a) for a in aucs])
    assert block["heterogeneity"] == expected and expected["df"] == 1 and expected["p"] < 0.05


def test_bands_cut_a_numeric_column_and_the_forest_plot_is_written(tmp_path):
    run = make_run(tmp_path / "run")
    out = R.report_run(run, engine="python", by=["age"], bands=["age=30,50"])
    age, block = levels(out["result"], "age")
    assert list(age) == ["<30", "30-50", ">=50", "missing"]
    assert [age[k]["n"] for k in age] == [1, 3, 4, 1] and block["bands"] == [30.0, 50.0]
    assert (run / "forest_test.png").is_file() and run / "forest_test.png" in out["plots"]


def test_cochrans_q_by_hand():
    # AUC 0.8 (SE 1/20) and 0.6 (SE 1/10): weights 400 and 100, pooled 19/25, Q = 400 (1/25)^2 + 100 (4/25)^2 = 16/5
    test = S.heterogeneity([0.8, 0.6, None], [0.05, 0.1, 0.2])
    assert test["pooled_auc"] == pytest.approx(float(F(19, 25)), abs=1e-12)
    assert test["q"] == pytest.approx(float(F(16, 5)), abs=1e-12)
    assert (test["df"], test["n_subgroups"]) == (1, 2) and test["p"] == pytest.approx(chi2.sf(3.2, 1), abs=1e-12)
    assert S.heterogeneity([0.8], [0.05]) is None
    # the SE behind 0.9 (0.82 to 1.0), truncated at 1: read on the lower side
    assert S.se_from_interval({"estimate": 0.9, "lower": 0.82, "upper": 1.0}) == pytest.approx(0.08 / 1.959963984540054)


def test_labels_bands_and_refusals():
    assert S.subgroup_labels(["3", "", "12", "nan"], "age", [5, 10]) == ["<5", "missing", ">=10", "missing"]
    assert S.subgroup_labels(["a", "b", ""], "site") == ["a", "b", "missing"]
    with pytest.raises(MedclfError, match="--bands age=0,30,50,70"):
        S.subgroup_labels([str(v) for v in range(20)], "age")
    with pytest.raises(MedclfError, match="'old' is not a number"):
        S.subgroup_labels(["3", "old"], "age", [5])
    for bad in ("age", "age=5,3", "=1,2", "age=x"):
        with pytest.raises(MedclfError, match="--bands"):
            S.parse_bands([bad])


def test_refusals_name_the_fix(tmp_path, capsys):
    run = make_run(tmp_path / "run")
    assert main(["report", "--run", str(run), "--engine", "python", "--no-plots", "--by", "site"]) == 1
    assert "--by site: not a column of the run's splits.csv (columns: path, label" in capsys.readouterr().err
    assert main(["report", "--run", str(run), "--engine", "python", "--no-plots", "--by", "sex", "--level", "group"]) == 1
    assert "use it with --level image" in capsys.readouterr().err


def test_a_study_report_section_asks_for_subgroups():
    from medclf.commands import registry
    from medclf.workflows.study import options_to_argv

    parser = registry.stage_commands()["parsers"]["report"]
    options = {"by": ["sex", "age", "localization"], "bands": {"age": [0, 30, 50, 70]}}
    argv = options_to_argv(options, parser, "report", "s: report")
    assert argv == ["--by", "sex,age,localization", "--bands", "age=0,30,50,70"]
    parsed = parser.parse_args(["--run", "r", *argv])
    assert parsed.by == ["sex", "age", "localization"] and S.parse_bands(parsed.bands) == {"age": [0, 30, 50, 70]}
