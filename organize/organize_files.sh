#!/usr/bin/env bash
# Seed 002's organize step, done safely: moves PROJ_DIR/<class>/* into PROJ_DIR/bin/, writes
# PROJ_DIR/csv/{train,val,test}.csv and creates models/ and results/. Nothing is overwritten:
# any name collision is reported before a single file moves.
# Rerunning after an interruption finishes the move; a PROJ_DIR whose bin/ or csv/ hold files
# from other splits (or files organize did not write) is refused (see docs/partition.md).
# Run partition first:
#   python partition/partition_datasets.py -proj_dir PROJ_DIR
#   bash organize/organize_files.sh PROJ_DIR
# Python: $MEDCLF_PYTHON, else the repository's .venv, else python3.
set -euo pipefail
if [ "$#" -ne 1 ]; then
    echo "usage: $0 PROJ_DIR   (the folder that holds splits.csv from partition_datasets.py)" >&2
    exit 2
fi
proj_dir="$1"
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -n "${MEDCLF_PYTHON:-}" ]; then
    py="$MEDCLF_PYTHON"
elif [ -x "$repo/.venv/bin/python" ]; then
    py="$repo/.venv/bin/python"
else
    py="python3"
fi
if [ ! -f "$proj_dir/splits.csv" ]; then
    echo "organize_files.sh: $proj_dir/splits.csv not found; run partition/partition_datasets.py -proj_dir \"$proj_dir\" first" >&2
    exit 1
fi
export PYTHONPATH="$repo/python${PYTHONPATH:+:$PYTHONPATH}"
exec "$py" -m medclf organize --splits "$proj_dir/splits.csv" --out "$proj_dir" --mode move --layout seed002
