"""R/sample_size.R and medclf.evaluate.sample_size give the same plans and widths (to 1e-9, the
same whole numbers and methods) over a grid of metrics, expected values, widths and prevalences."""

import json
import shutil
import subprocess

import pytest

from medclf.evaluate import sample_size as S

pytestmark = pytest.mark.skipif(shutil.which("Rscript") is None, reason="Rscript not installed")

R_SCRIPT = r"""
args <- commandArgs(trailingOnly = TRUE)
source(file.path(args[1], "metrics.R")); source(file.path(args[1], "sample_size.R"))
cases <- jsonlite::fromJSON(args[2], simplifyVector = FALSE)
plans <- lapply(cases$plans, function(c) mc_plan(c$metric, c$expected, c$width, c$prevalence))
widths <- lapply(cases$widths, function(c) c(mc_wilson_width(c$p, c$n), mc_auc_width(c$p, c$n, c$m),
                                             mc_kappa_width(c$p - 0.2, c$prevalence, c$n)))
cat(jsonlite::toJSON(list(plans = plans, widths = widths), auto_unbox = TRUE, digits = NA, null = "null"))
"""


def cases():
    plans = [{"metric": m, "expected": e, "width": w, "prevalence": p}
             for m in S.METRICS for e in (0.6, 0.85, 0.95) for w in (0.05, 0.1, 0.3) for p in (None, 0.2, 0.7)]
    widths = [{"p": p, "n": n, "m": m, "prevalence": prev} for p in (0.55, 0.8, 0.97) for n, m in ((1, 1), (12, 40), (300, 90))
              for prev in (0.1, 0.5)]
    return {"plans": plans, "widths": widths}


def test_r_and_python_plan_alike(tmp_path, repo_root):
    grid = cases()
    (tmp_path / "cases.json").write_text(json.dumps(grid))
    (tmp_path / "plan.R").write_text(R_SCRIPT)
    proc = subprocess.run(["Rscript", "--vanilla", str(tmp_path / "plan.R"), str(repo_root / "R"),
                           str(tmp_path / "cases.json")], capture_output=True, text=True, check=True)
    r = json.loads(proc.stdout)
    assert len(r["plans"]) == len(grid["plans"]) and len(r["widths"]) == len(grid["widths"])
    for case, theirs in zip(grid["plans"], r["plans"]):
        ours = S.plan(**case)
        assert {k: v for k, v in theirs.items() if v is not None} == {k: v for k, v in ours.items() if v is not None}, case
    for case, theirs in zip(grid["widths"], r["widths"]):
        ours = [S.wilson_width(case["p"], case["n"]), S.auc_width(case["p"], case["n"], case["m"]),
                S.kappa_width(case["p"] - 0.2, case["prevalence"], case["n"])]
        assert ours == pytest.approx(theirs, rel=0, abs=1e-9), case
