"""Speed of the binary report (all metrics, DeLong interval, operating points) on 100,000
predictions, timed beside scikit-learn's roc_auc_score in the same run.

    .venv/bin/python benchmarks/report_speed.py [--n 100000] [--repeats 3]

Prints the best of --repeats wall-clock times of: sklearn roc_auc_score (AUC only, no interval);
medclf's pure-Python metrics (binary_metrics + operating_points, in memory); the R report through
rpy2 (medclf_report_json: reads and validates the file, pROC AUC + DeLong CI, every metric);
the R report through an Rscript subprocess (process start included); and each ratio to sklearn.
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from medclf.evaluate import metrics as M
from medclf.evaluate import r_bridge
from medclf.evaluate import report as R


def best_time(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, args.n)
    p1 = 1 / (1 + np.exp(-(1.5 * y - 0.75 + rng.normal(0, 1, args.n))))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "predictions_test.json"
        path.write_text(json.dumps({"schema": "medclf.predictions/1", "split": "test", "classes": ["no", "yes"],
                                    "positive_class": "yes", "labels": y.tolist(),
                                    "probabilities": np.column_stack([1 - p1, p1]).tolist()}))
        request = R.build_request(path)
        rows = [("sklearn roc_auc_score (AUC only)", best_time(lambda: roc_auc_score(y, p1), args.repeats))]
        rows.append(("medclf python: binary_metrics + operating_points",
                     best_time(lambda: (M.binary_metrics(y == 1, p1, 0.5), M.operating_points(y == 1, p1)), args.repeats)))
        rows.append(("medclf python engine: read + validate + report",
                     best_time(lambda: R.python_report(request), args.repeats)))
        try:
            r_bridge.run_rpy2(R.REPORT_TASK, request)  # warm-up: starts embedded R, sources R/report.R
            rows.append(("medclf R via rpy2: read + validate + report",
                         best_time(lambda: r_bridge.run_rpy2(R.REPORT_TASK, request), args.repeats)))
        except r_bridge.EngineUnavailable as exc:
            print(f"rpy2 unavailable: {exc}", file=sys.stderr)
        try:
            rows.append(("medclf R via Rscript subprocess (incl. R start)",
                         best_time(lambda: r_bridge.run_rscript(R.REPORT_TASK, request), args.repeats)))
        except r_bridge.EngineUnavailable as exc:
            print(f"Rscript unavailable: {exc}", file=sys.stderr)
        a = R.python_report(request)["metrics"]["roc_auc"]
        print(f"n = {args.n} predictions; AUC {a['estimate']:.6f} (DeLong 95% CI {a['lower']:.6f}-{a['upper']:.6f}); "
              f"sklearn AUC {roc_auc_score(y, p1):.6f}; best of {args.repeats}")
        base = rows[0][1]
        for name, seconds in rows:
            print(f"{name:<52} {seconds * 1000:9.1f} ms   {seconds / base:7.1f} x sklearn")
    return 0


if __name__ == "__main__":
    sys.exit(main())
