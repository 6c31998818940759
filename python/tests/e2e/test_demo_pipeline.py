"""`medclf demo` runs every stage, end to end, on generated data."""

import csv
import json

import pytest

from medclf.cli import main


@pytest.mark.slow
def test_demo_runs_partition_to_report(tmp_path):
    out = tmp_path / "demo"
    status = main(["demo", "--out", str(out), "--n-per-class", "16", "--epochs", "2", "--img-size", "48",
                   "--quiet"])
    assert status == 0

    with open(out / "partition" / "splits.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    test_paths = [r["path"] for r in rows if r["split"] == "test"]
    assert len(rows) == 32

    run = out / "resnet18"
    for name in ("config.json", "history.csv", "best.pt", "last.pt", "curves.png",
                 "predictions_test.json", "predictions_val.json", "results_test.json", "report_test.md"):
        assert (run / name).is_file(), name

    predictions = json.loads((run / "predictions_test.json").read_text(encoding="utf-8"))
    assert predictions["paths"] == test_paths
    results = json.loads((run / "results_test.json").read_text(encoding="utf-8"))
    assert results["schema"] == "medclf.results/1"
    assert results["positive_class"] == "yes"
    assert results["n"] == len(test_paths)
    cm = results["confusion_matrix"]
    assert cm["tp"] + cm["fn"] + cm["tn"] + cm["fp"] == len(test_paths)
    assert results["metrics"]["sensitivity"]["estimate"] == cm["tp"] / (cm["tp"] + cm["fn"])

    # The generated data holds near-duplicates under other patient ids: found, and never split up.
    partition_info = json.loads((out / "partition" / "partition.json").read_text(encoding="utf-8"))
    clusters = partition_info["duplicates"]["clusters"]["members"]
    assert clusters and all(len(c["splits"]) == 1 for c in clusters)
    split_of = {r["path"]: r["split"] for r in rows}
    assert all(len({split_of[p] for p in c["paths"]}) == 1 for c in clusters)
