"""Speed of a report with intervals over groups (the group bootstrap, medclf.evaluate.clustered and
R/clustered.R) against the same report without groups, timed in the same run.

    .venv/bin/python benchmarks/clustered_report_speed.py [--n 394] [--groups 300] [--classes 7] [--repeats 3]

The predictions are synthetic (seed 0): --n images in --groups groups (every group one image, the
rest added to random groups), one label per group, a softmax of a shifted normal score. The size
defaults to a HAM10000 development test split (docs/studies.md). Prints the best of --repeats
wall-clock times of the Python engine and of the R engine through rpy2, each without and with
groups, and the ratio grouped / ungrouped.
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
from report_speed import best_time

from medclf.evaluate import r_bridge
from medclf.evaluate import report as R


def synthetic_predictions(path, n, n_groups, n_classes, seed=0):
    """Writes a predictions file; returns each image's group name."""
    rng = np.random.default_rng(seed)
    groups = np.sort(np.concatenate([np.arange(n_groups), rng.integers(0, n_groups, n - n_groups)]))
    labels = rng.integers(0, n_classes, n_groups)[groups]
    scores = rng.normal(size=(n, n_classes))
    scores[np.arange(n), labels] += 1.5
    probabilities = np.exp(scores) / np.exp(scores).sum(axis=1, keepdims=True)
    classes = [f"class{k}" for k in range(n_classes)]
    path.write_text(json.dumps({"schema": "medclf.predictions/1", "split": "test", "classes": classes,
                                "positive_class": classes[-1] if n_classes == 2 else None,
                                "labels": labels.tolist(), "probabilities": probabilities.tolist()}))
    return [f"group{g}" for g in groups]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=394, help="images (default: %(default)s)")
    parser.add_argument("--groups", type=int, default=300, help="groups, at most --n (default: %(default)s)")
    parser.add_argument("--classes", type=int, default=7, help="classes (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="timings per row; the best is shown (default: %(default)s)")
    args = parser.parse_args(argv)
    if not 0 < args.groups < args.n:
        parser.error("--groups must be between 1 and --n - 1 (a group with two images makes the report clustered)")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "predictions_test.json"
        clusters = synthetic_predictions(path, args.n, args.groups, args.classes)
        plain, grouped = R.build_request(path), R.build_request(path, clusters=clusters)
        engines = [("python", R.python_report)]
        try:
            r_bridge.run_rpy2(R.REPORT_TASK, plain)  # warm-up: starts embedded R, sources the R files
            engines.append(("R via rpy2", lambda request: r_bridge.run_rpy2(R.REPORT_TASK, request)))
        except r_bridge.EngineUnavailable as exc:
            print(f"rpy2 unavailable: {exc}", file=sys.stderr)
        print(f"{args.n} images in {args.groups} groups, {args.classes} classes; best of {args.repeats}")
        print(f"{'engine':<12} {'no groups':>10} {'groups':>10} {'ratio':>7}")
        for name, run in engines:
            without = best_time(lambda: run(plain), args.repeats)
            with_groups = best_time(lambda: run(grouped), args.repeats)
            print(f"{name:<12} {without:>9.2f}s {with_groups:>9.2f}s {with_groups / without:>6.1f}x")


if __name__ == "__main__":
    main()
