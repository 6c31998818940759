"""medclf embed + probe: the .npz contract, C chosen on val only, and predictions that the R and
Python reports score identically (the parity machinery of test_metrics_parity.py)."""

import json
import shutil

import numpy as np
import pytest

from medclf import cli
from medclf.core import predictions
from medclf.core.errors import MedclfError
from medclf.evaluate import r_bridge
from medclf.evaluate import report as R
from medclf.infer import embed
from medclf.infer import probe as P

from prediction_files import assert_same, python_results

COUNTS = {"train": 90, "val": 45, "test": 60}


def write_clusters(path, n_classes, seed=0, dim=6):
    """Gaussian clusters (class k around 1.2 * e_k, noise 1): a probe separates them imperfectly."""
    rng = np.random.default_rng(seed)
    splits = np.repeat(list(COUNTS), list(COUNTS.values()))
    labels = rng.integers(0, n_classes, len(splits))
    X = rng.normal(0, 1, (len(splits), dim)).astype(np.float32)
    X[np.arange(len(splits)), labels] += 1.2
    classes = ["benign", "malignant"] if n_classes == 2 else [f"c{k}" for k in range(n_classes)]
    paths = [f"{s}/img{i:03d}.jpg" for i, s in enumerate(splits)]
    meta = {"schema": "medclf.embeddings/1", "architecture": "fixture",
            "positive_class": "malignant" if n_classes == 2 else None}
    embed.write_embeddings(path, X, paths, splits, labels, classes, meta)
    return path


@pytest.fixture(scope="module")
def probes(tmp_path_factory):
    """{(model, n_classes): out folder} for both models on a binary and a 3-class embedding set."""
    root = tmp_path_factory.mktemp("probe")
    out = {}
    for n in (2, 3):
        npz = write_clusters(root / f"emb{n}.npz", n)
        for model in P.MODELS:
            out[(model, n)] = root / f"{model}_{n}"
            P.run_probe(npz, out[(model, n)], model)
    return out


@pytest.mark.parametrize("model, n", [(m, n) for m in P.MODELS for n in (2, 3)])
def test_probe_predictions_follow_the_contract_with_paths_and_labels_of_the_embeddings(probes, model, n):
    data = embed.read_embeddings(probes[(model, n)].parent / f"emb{n}.npz")
    for split in ("val", "test"):
        record = json.loads((probes[(model, n)] / f"predictions_{split}.json").read_text())
        rows = data["splits"] == split
        assert record["paths"] == data["paths"][rows].tolist() and record["labels"] == data["labels"][rows].tolist()
        checked = predictions.validate_predictions(record, split)  # the report's own reader: rows in [0, 1], summing to 1
        assert checked["probabilities"].shape == (COUNTS[split], n)
        assert record["predictions"] == checked["probabilities"].argmax(axis=1).tolist()
    summary = json.loads((probes[(model, n)] / "probe.json").read_text())
    assert summary["counts"] == COUNTS and summary["C"] in [row["C"] for row in summary["grid"]]
    expected = {(2, "logreg"): "platt", (2, "linear-svm"): "platt", (3, "logreg"): "softmax",
                (3, "linear-svm"): "platt one-vs-rest, renormalised"}[(n, model)]
    assert summary["calibration"]["method"] == expected


@pytest.mark.skipif(shutil.which("Rscript") is None, reason="Rscript not installed")
def test_probe_predictions_get_the_same_report_from_r_and_python(probes):
    for (model, n), out in probes.items():
        request = R.build_request(out / "predictions_test.json")
        assert_same(r_bridge.run_rscript(R.REPORT_TASK, request), python_results(request), f"probe {model}, {n} classes")


def test_c_is_chosen_on_val_and_models_see_train_only(tmp_path, monkeypatch):
    """Spies: every scaler fit gets the train rows, every val score and Platt fit the val rows; the
    test rows change nothing that was chosen."""
    from sklearn.preprocessing import StandardScaler

    npz = write_clusters(tmp_path / "emb.npz", 2)
    seen = {"fit": set(), "score": set(), "platt": set()}
    fit, score, platt = StandardScaler.fit, P.val_score, P.platt
    monkeypatch.setattr(StandardScaler, "fit", lambda self, X, y=None, **kw: seen["fit"].add(len(X)) or fit(self, X, y))
    monkeypatch.setattr(P, "val_score", lambda labels, scores: seen["score"].add(len(labels)) or score(labels, scores))
    monkeypatch.setattr(P, "platt", lambda d, pos: seen["platt"].add(len(d)) or platt(d, pos))
    first = P.run_probe(npz, tmp_path / "a", "logreg")
    assert seen == {"fit": {COUNTS["train"]}, "score": {COUNTS["val"]}, "platt": {COUNTS["val"]}}
    data = embed.read_embeddings(npz)
    test = data["splits"] == "test"
    data["embeddings"][test] = np.random.default_rng(1).normal(0, 5, (test.sum(), 6))  # test rows scrambled
    data["labels"][test] = 1 - data["labels"][test]
    embed.write_embeddings(tmp_path / "scrambled.npz", data["embeddings"], data["paths"], data["splits"],
                           data["labels"], data["classes"], data["meta"])
    second = P.run_probe(tmp_path / "scrambled.npz", tmp_path / "b", "logreg")
    assert (second["C"], second["grid"], second["calibration"]) == (first["C"], first["grid"], first["calibration"])


def test_val_score_is_the_auc_and_ties_keep_the_smaller_c():
    labels = np.array([0, 0, 1, 1])
    assert P.val_score(labels, np.column_stack([-np.array([1, 3, 2, 4.0]), [1, 3, 2, 4.0]])) == 3 / 4
    three = np.eye(3)[[0, 1, 2, 0]]  # every class ranked perfectly
    assert P.val_score(np.array([0, 1, 2, 0]), three) == 1
    X = np.array([[0.0], [0.1], [1.0], [1.1]] * 5)
    y = np.array([0, 0, 1, 1] * 5)
    _, grid = P.choose_C("logreg", [10.0, 1.0, 0.1], (X, y), (X, y), 2)
    assert [row["C"] for row in grid] == [0.1, 1.0, 10.0] and all(row["val_score"] == 1 for row in grid)
    pipeline, _ = P.choose_C("logreg", [10.0, 1.0, 0.1], (X, y), (X, y), 2)
    assert pipeline[-1].C == 0.1


def test_probe_cli_and_refusals(tmp_path, capsys):
    npz = write_clusters(tmp_path / "emb.npz", 2)
    assert cli.main(["probe", "--embeddings", str(npz), "--model", "linear-svm", "--C", "0.01,1",
                     "--out", str(tmp_path / "svm")]) == 0
    assert "predictions_test.json" in capsys.readouterr().out
    assert json.loads((tmp_path / "svm" / "probe.json").read_text())["C"] in (0.01, 1.0)
    (tmp_path / "other.npz").write_bytes(b"not an npz")
    assert cli.main(["probe", "--embeddings", str(tmp_path / "other.npz"), "--out", str(tmp_path / "x")]) == 1
    assert "not an embeddings file of `medclf embed`" in capsys.readouterr().err
    with pytest.raises(MedclfError, match="val split has a single class"):
        P.val_score(np.zeros(5, dtype=int), np.zeros((5, 2)))
