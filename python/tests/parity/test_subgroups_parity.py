"""R/subgroups.R and medclf.evaluate.subgroups agree to 1e-9 on the AUC heterogeneity test and on the
standard errors read from the subgroups' intervals (truncated, undefined and degenerate cases);
R/external.R and medclf.evaluate.external on the internal-external AUC difference."""

import json
import shutil
import subprocess

import pytest

from medclf.evaluate import external as E
from medclf.evaluate import subgroups as S

pytestmark = pytest.mark.skipif(shutil.which("Rscript") is None, reason="Rscript not installed")

R_SCRIPT = r"""
args <- commandArgs(trailingOnly = TRUE)
source(file.path(args[1], "metrics.R")); source(file.path(args[1], "subgroups.R")); source(file.path(args[1], "external.R"))
cases <- jsonlite::fromJSON(args[2], simplifyVector = FALSE)
out <- lapply(cases, function(values) {
  se <- lapply(values, mc_se_from_interval)
  list(se = lapply(se, function(s) if (is.null(s)) NA else s),
       test = mc_subgroup_heterogeneity(lapply(values, function(v) v$estimate), se),
       difference = mc_external_auc_difference(values[[1]], values[[length(values)]]))
})
cat(jsonlite::toJSON(out, auto_unbox = TRUE, digits = NA, null = "null", na = "null"))
"""

CASES = [
    [{"estimate": 0.8, "lower": 0.7, "upper": 0.9}, {"estimate": 0.6, "lower": 0.45, "upper": 0.75},
     {"estimate": 0.9, "lower": 0.82, "upper": 1.0}],                       # the last truncated at 1
    [{"estimate": 0.7, "lower": 0.6, "upper": 0.8}, {"estimate": None, "lower": None, "upper": None},
     {"estimate": 0.95, "lower": 0.0, "upper": 1.0}],                       # undefined; truncated on both sides
    [{"estimate": 0.7, "lower": 0.6, "upper": 0.8}],                       # one subgroup: no test
]


def test_r_and_python_agree(tmp_path, repo_root):
    (tmp_path / "cases.json").write_text(json.dumps(CASES))
    (tmp_path / "q.R").write_text(R_SCRIPT)
    proc = subprocess.run(["Rscript", "--vanilla", str(tmp_path / "q.R"), str(repo_root / "R"), str(tmp_path / "cases.json")],
                          capture_output=True, text=True, check=True)
    r = json.loads(proc.stdout)
    assert len(r) == len(CASES)
    for values, theirs in zip(CASES, r):
        se = [S.se_from_interval(v) for v in values]
        assert se == pytest.approx(theirs["se"], abs=1e-12)
        ours = S.heterogeneity([v["estimate"] for v in values], se)
        if ours is None:
            assert theirs["test"] is None
        else:
            assert set(ours) == set(theirs["test"]) and ours["method"] == theirs["test"]["method"]
            for key in ("q", "df", "p", "pooled_auc", "n_subgroups"):
                assert ours[key] == pytest.approx(theirs["test"][key], rel=0, abs=1e-9), key
        ours = E.auc_difference(values[0], values[-1])
        theirs = theirs["difference"]
        assert ours["difference"]["method"] == theirs["difference"]["method"]
        for key in ("estimate", "lower", "upper"):
            assert ours["difference"][key] == pytest.approx(theirs["difference"][key], abs=1e-9), key
        assert ours["z"] == pytest.approx(theirs["z"], abs=1e-9) and ours["p_value"] == pytest.approx(theirs["p_value"], abs=1e-9)
