#!/usr/bin/env bash
# Set up everything, then run the whole pipeline on generated demo data:
# partition -> organize -> train -> test -> report. Output goes to results/demo/.
# Extra arguments go to `medclf demo` (see `medclf demo --help`).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="$(bash "$repo/scripts/setup.sh" | tail -n 1)"
cd "$repo"
"$py" -m medclf demo "$@"
