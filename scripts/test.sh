#!/usr/bin/env bash
# Set up everything, then run all tests: R (testthat) and Python (pytest).
#   bash scripts/test.sh            everything (what CI runs)
#   bash scripts/test.sh --fast     the everyday tier: no training beyond a few steps, no docs runs
#                                   (pytest -m "not slow"); a few minutes
#   bash scripts/test.sh --fp32     in-process training and inference in fp32, as on an AVX2-only CPU
# Other arguments go to pytest, e.g.  bash scripts/test.sh --fast -k partition
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
fast=0
pytest_args=()
for arg in "$@"; do
  case "$arg" in
    --fast) fast=1 ;;
    *) pytest_args+=("$arg") ;;
  esac
done
started=$SECONDS
py="$(bash "$repo/scripts/setup.sh" | tail -n 1)"
setup_s=$((SECONDS - started))
cd "$repo"
echo "== R tests (testthat)"
r_started=$SECONDS
Rscript --vanilla -e 'res <- as.data.frame(testthat::test_dir("R/tests/testthat", reporter = "summary", stop_on_failure = TRUE)); cat(sprintf("R: %d passed, %d failed\n", sum(res$nb) - sum(res$failed), sum(res$failed)))'
r_s=$((SECONDS - r_started))
tmp="${TMPDIR:-/tmp}"
free_gb="$(df -Pk "$tmp" | awk 'NR == 2 {print int($4 / 1048576)}')"
tier="all"; [ "$fast" = 1 ] && tier="fast tier (-m 'not slow')"
echo "== Python tests (pytest, $tier), $free_gb GB free in $tmp"
# Tests train real models: a run's temp directories peak at a few GB (a passed test's are removed).
[ "$free_gb" -ge 5 ] || echo "warning: under 5 GB free in $tmp; tests may fail writing checkpoints: free space or set TMPDIR" >&2
# One pytest worker per core (at most 4): most tests train or decode on one thread.
workers="$("$py" -c 'import os; print(max(1, min(4, len(os.sched_getaffinity(0)))))')"
# Each worker's torch, BLAS and OpenMP get cores / workers threads: two workers each spinning two
# OpenMP threads on two cores made an in-process training 7x slower (5 s alone, 37 s in the suite).
# A test or documented command that passes --threads still gets its own count.
threads_per_worker="$("$py" -c "import os; print(max(1, len(os.sched_getaffinity(0)) // $workers))")"
for var in OMP_NUM_THREADS MKL_NUM_THREADS OPENBLAS_NUM_THREADS; do
  [ -n "${!var:-}" ] || export "$var=$threads_per_worker"
done
marker=()
[ "$fast" = 1 ] && marker=(-m "not slow")
py_started=$SECONDS
status=0
"$py" -m pytest -q -p no:cacheprovider -n "$workers" --dist worksteal --durations=30 ${marker[@]+"${marker[@]}"} \
  ${pytest_args[@]+"${pytest_args[@]}"} || status=$?
py_s=$((SECONDS - py_started))
echo "== timings: setup ${setup_s}s, R tests ${r_s}s, pytest ${py_s}s ($workers workers, $OMP_NUM_THREADS threads each, $tier), total $((SECONDS - started))s"
exit "$status"
