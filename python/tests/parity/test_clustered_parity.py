"""R (R/clustered.R, R/decision_curve.R) and Python (medclf.evaluate.clustered, decision_curve) give
the same intervals and decision-curve bands over groups to 1e-9, through Rscript (its --clusters and
--prevalence options) and rpy2, for binary, grouped and multi-class reports."""

import shutil

import numpy as np
import pytest
from prediction_files import assert_same, binary_probs, normalise_rows, python_results, write_predictions

from medclf.evaluate import r_bridge
from medclf.evaluate import report as R


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("clustered_parity")
    rng = np.random.default_rng(11)
    groups = np.repeat(np.arange(45), rng.integers(1, 5, 45))
    names = [f"lesion{g:03d}" for g in groups]
    y = (rng.random(45) < 0.4)[groups].astype(int)
    y[rng.random(len(y)) < 0.05] ^= 1  # a few groups with both labels
    p1 = np.clip(0.3 + 0.35 * y + rng.normal(0, 0.2, len(y)), 0.01, 0.99)
    binary = write_predictions(tmp / "bin_test.json", y, binary_probs(p1), ["no", "yes"], "yes")
    classes = ["akiec", "bcc", "bkl", "mel", "nv"]
    ym = rng.choice(5, 45, p=[0.1, 0.15, 0.15, 0.2, 0.4])[groups]
    raw = rng.gamma(1.0, 1.0, (len(ym), 5))
    raw[np.arange(len(ym)), ym] += 1.5
    multi = write_predictions(tmp / "multi_test.json", ym, normalise_rows(raw), classes)
    return {"binary": R.build_request(binary, clusters=names),
            "binary_threshold": R.build_request(binary, threshold=0.62, clusters=names),
            "binary_prevalence": R.build_request(binary, clusters=names, prevalence=0.1),
            "grouped": R.build_request(multi, group="malignant=mel,bcc,akiec", clusters=names),
            "multiclass": R.build_request(multi, clusters=names),
            "singletons": R.build_request(binary, clusters=[f"case{i}" for i in range(len(y))])}


@pytest.mark.slow  # one Rscript process per case; the rpy2 test below checks the same R code in-process
@pytest.mark.skipif(shutil.which("Rscript") is None, reason="Rscript not installed")
def test_rscript_matches_python_over_groups(cases):
    for name, request in cases.items():
        python = python_results(request)
        assert ("clusters" in python) == (name != "singletons")
        assert_same(r_bridge.run_rscript(R.REPORT_TASK, request), python, f"{name} (Rscript vs Python)")


def test_rpy2_matches_python_over_groups(cases):
    with r_bridge.keep_library_path():
        pytest.importorskip("rpy2.robjects")
    try:
        r_bridge.run_rpy2(R.REPORT_TASK, cases["singletons"])
    except r_bridge.EngineUnavailable as exc:
        pytest.skip(f"rpy2 cannot run R here: {exc}")
    for name in ("binary", "binary_prevalence", "multiclass"):
        assert_same(r_bridge.run_rpy2(R.REPORT_TASK, cases[name]), python_results(cases[name]), f"{name} (rpy2)")


@pytest.mark.skipif(shutil.which("Rscript") is None, reason="Rscript not installed")
def test_compare_over_groups_agrees_and_widens_the_paired_interval(tmp_path):
    from medclf.evaluate import compare as C

    rng = np.random.default_rng(12)
    groups = np.repeat(np.arange(40), 3)
    y = (rng.random(40) < 0.4)[groups].astype(int)
    latent = rng.normal(0, 1, 40)[groups]
    files = []
    for name, shift in (("a", 0.8), ("b", 0.5)):
        p1 = 1 / (1 + np.exp(-(shift * (2 * y - 1) + latent + rng.normal(0, 0.05, len(y)))))
        files.append(write_predictions(tmp_path / f"{name}_test.json", y, binary_probs(p1), ["no", "yes"], "yes"))
    runs = [{"name": n, "predictions_path": str(f)} for n, f in zip("ab", files)]
    plain = C.python_compare({"runs": runs})
    request = {"runs": runs, "clusters": [f"g{g}" for g in groups]}
    grouped = C.python_compare(request)
    assert grouped["clusters"]["n_groups"] == 40 and "clusters" not in plain
    wide = grouped["pairwise"][0]["difference"]
    narrow = plain["pairwise"][0]["difference"]
    assert wide["estimate"] == narrow["estimate"] and wide["upper"] - wide["lower"] > narrow["upper"] - narrow["lower"]
    assert_same(r_bridge.run_rscript(C.COMPARE_TASK, request), json_round_trip(grouped), "compare (Rscript vs Python)")


def json_round_trip(result):
    import json

    return json.loads(json.dumps(result))
