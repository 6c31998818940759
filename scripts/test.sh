#!/usr/bin/env bash
# Set up everything, then run all tests: R (testthat) and Python (pytest).
# Extra arguments go to pytest, e.g.  bash scripts/test.sh -k partition
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="$(bash "$repo/scripts/setup.sh" | tail -n 1)"
cd "$repo"
echo "== R tests (testthat)"
Rscript --vanilla -e 'res <- as.data.frame(testthat::test_dir("R/tests/testthat", reporter = "summary", stop_on_failure = TRUE)); cat(sprintf("R: %d passed, %d failed\n", sum(res$nb) - sum(res$failed), sum(res$failed)))'
tmp="${TMPDIR:-/tmp}"
free_gb="$(df -Pk "$tmp" | awk 'NR == 2 {print int($4 / 1048576)}')"
echo "== Python tests (pytest), $free_gb GB free in $tmp"
# Tests train real models: a run's temp directories peak at a few GB (a passed test's are removed).
[ "$free_gb" -ge 5 ] || echo "warning: under 5 GB free in $tmp; tests may fail writing checkpoints: free space or set TMPDIR" >&2
# One pytest worker per core (at most 4): most tests train or decode on one thread.
workers="$("$py" -c 'import os; print(max(1, min(4, len(os.sched_getaffinity(0)))))')"
"$py" -m pytest -q -p no:cacheprovider -n "$workers" --dist worksteal --durations=30 "$@"
