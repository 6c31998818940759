"""R/metrics.R and medclf.evaluate.metrics agree to 1e-9 on the issue-16 numbers, called directly
(small, tied, degenerate cases the report-level parity test does not reach)."""

import json
import math
import shutil
import subprocess

import numpy as np
import pytest

from medclf.evaluate import metrics as M

pytestmark = pytest.mark.skipif(shutil.which("Rscript") is None, reason="Rscript not installed")

R_SCRIPT = r"""
args <- commandArgs(trailingOnly = TRUE)
source(file.path(args[1], "metrics.R"))
cases <- jsonlite::fromJSON(args[2], simplifyVector = FALSE)
out <- lapply(cases, function(c) {
  p <- do.call(rbind, lapply(c$p, unlist)); y <- as.integer(unlist(c$y))
  c$x <- unlist(c$x); c$n <- unlist(c$n)
  idx <- mc_bootstrap_indices(length(y), 4, 7)
  list(macro_auc = mc_macro_auc_delong(y, p),
       balanced = mc_balanced_accuracy(c$x, c$n, "n/a"),
       ap = mc_average_precision_logit(y == 1, p[, 2]),
       brier = mc_brier(outer(y, seq_len(ncol(p)) - 1L, "==") * 1, p),
       calibration = mc_calibration_metrics(y == 1, p[, 2]),
       indices = idx - 1L)
})
cat(jsonlite::toJSON(out, auto_unbox = TRUE, digits = NA, na = "null", null = "null"))
"""


def python_case(c):
    p, y = np.asarray(c["p"], float), np.asarray(c["y"])
    return {"macro_auc": M.macro_auc_delong(y, p), "balanced": M.balanced_accuracy_interval(c["x"], c["n"], "n/a"),
            "ap": M.average_precision_logit(y == 1, p[:, 1]),
            "brier": M.brier((y[:, None] == np.arange(p.shape[1])[None, :]).astype(float), p),
            "calibration": M.calibration_metrics(y == 1, p[:, 1]),
            "indices": M.bootstrap_indices(len(y), 4, 7).tolist()}


def make_cases():
    rng = np.random.default_rng(16)
    cases = []
    for n, k, grid in [(200, 7, None), (40, 3, 0.1), (9, 3, None), (120, 2, 0.05)]:
        y = rng.integers(0, k, n)
        p = rng.dirichlet(np.ones(k), n)
        p[np.arange(n), y] += rng.uniform(0, 0.6, n)
        p = p / p.sum(axis=1, keepdims=True)
        if grid:
            p = np.round(p / grid) * grid
            p[:, -1] = 1 - p[:, :-1].sum(axis=1)
            p = np.clip(p, 0, 1)
        counts = np.bincount(y, minlength=k)
        x = [int(rng.integers(0, c + 1)) for c in counts if c > 0]
        cases.append({"y": y.tolist(), "p": p.tolist(), "x": x, "n": [int(c) for c in counts if c > 0]})
    # Perfectly separated binary case with a saturated probability.
    cases.append({"y": [0, 0, 0, 1, 1, 1], "p": [[1.0, 0.0], [0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.1, 0.9], [0.0, 1.0]],
                  "x": [3, 2], "n": [3, 3]})
    return cases


def compare(a, b, where):
    if isinstance(a, dict):
        assert set(a) == set(b), f"{where}: {sorted(set(a) ^ set(b))}"
        for key in a:
            compare(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, list):
        assert len(a) == len(b), where
        for i, (u, v) in enumerate(zip(a, b)):
            compare(u, v, f"{where}[{i}]")
    elif isinstance(a, (int, float)) and not isinstance(a, bool) and b is not None:
        assert math.isclose(a, b, rel_tol=0, abs_tol=1e-9), f"{where}: {a} != {b}"
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def test_r_and_python_agree_on_intervals_and_calibration(tmp_path):
    from medclf.evaluate.r_bridge import r_dir

    cases = make_cases()
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    (tmp_path / "run.R").write_text(R_SCRIPT)
    done = subprocess.run(["Rscript", "--vanilla", str(tmp_path / "run.R"), str(r_dir()), str(tmp_path / "cases.json")],
                          capture_output=True, text=True, check=True)
    from_r = json.loads(done.stdout)
    assert len(from_r) == len(cases)
    for i, (c, r) in enumerate(zip(cases, from_r)):
        compare(json.loads(json.dumps(python_case(c))), r, f"case {i}")
