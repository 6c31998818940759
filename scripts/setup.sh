#!/usr/bin/env bash
# Set up everything medclf needs, idempotently:
#   1. R and its Debian packages (pROC, jsonlite, optparse, testthat), unless --no-r
#   2. Debian's chromium (the browser test of `medclf serve`, driven by Playwright) and Debian's
#      PostgreSQL server (the test of `medclf sweep --storage postgresql://`; skip with --no-postgres).
#      Where they cannot be installed, those tests say why.
#   3. a Python environment with the pinned requirements and medclf itself (editable)
# Python target: the active virtualenv/conda env if there is one, else ./.venv
# (created here; Debian/Ubuntu system Pythons refuse pip installs, PEP 668).
# Usage: bash scripts/setup.sh [--no-r] [--no-postgres]     Prints the Python to use on its last line.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
want_r=1
want_postgres=1
for arg in "$@"; do
  case "$arg" in
    --no-r) want_r=0 ;;
    --no-postgres) want_postgres=0 ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown option $arg (try --help)" >&2; exit 2 ;;
  esac
done

log() { echo "[setup] $*" >&2; }

r_packages_present() {
  command -v Rscript >/dev/null 2>&1 &&
    Rscript --vanilla -e 'q(status = !all(sapply(c("pROC","jsonlite","optparse","testthat"), requireNamespace, quietly = TRUE)))' >/dev/null 2>&1
}

# apt_install PKG...: Debian packages, as root or through sudo; fails without apt-get or rights.
apt_install() {
  command -v apt-get >/dev/null 2>&1 || return 1
  local sudo=""
  if [ "$(id -u)" != 0 ]; then command -v sudo >/dev/null 2>&1 || return 1; sudo="sudo"; fi
  $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}

if [ "$want_r" = 1 ] && ! r_packages_present; then
  pkgs="r-base-core r-cran-proc r-cran-jsonlite r-cran-optparse r-cran-testthat"
  log "installing R from Debian packages: $pkgs"
  if ! apt_install $pkgs; then
    log "R with pROC, jsonlite, optparse and testthat is needed for the R report and its tests, and could not"
    log "be installed here (no apt-get, or not root): apt-get install -y $pkgs (or https://cran.r-project.org),"
    log "or run with --no-r."
    exit 1
  fi
fi

postgres_present() { compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || command -v initdb >/dev/null 2>&1; }

test_pkgs=""
[ -x /usr/bin/chromium ] || test_pkgs="chromium"
if [ "$want_postgres" = 1 ] && ! postgres_present; then test_pkgs="$test_pkgs postgresql"; fi
if [ -n "$test_pkgs" ]; then
  log "installing Debian packages that tests drive (serve's browser test, sweep's PostgreSQL storage):$test_pkgs"
  if ! apt_install $test_pkgs; then
    log "missing and not installable here (no apt-get, or not root):$test_pkgs;"
    log "the tests that need them are skipped outside CI, with the reason"
  fi
fi

if [ -n "${VIRTUAL_ENV:-}" ]; then py="$VIRTUAL_ENV/bin/python"
elif [ -n "${CONDA_PREFIX:-}" ]; then py="$CONDA_PREFIX/bin/python"
else
  venv="${MEDCLF_VENV:-$repo/.venv}"
  if [ ! -x "$venv/bin/python" ]; then
    log "creating virtual environment $venv"
    "${PYTHON:-python3}" -m venv "$venv"
  fi
  py="$venv/bin/python"
fi

req="$repo/requirements.txt"
if [ "$want_r" = 0 ]; then  # rpy2 cannot build without R
  req="$(mktemp)"; grep -v '^rpy2' "$repo/requirements.txt" > "$req"
fi
stamp="$("$py" -c 'import sys; print(sys.prefix)')/.medclf-setup-stamp"
digest="$(cat "$req" "$repo/pyproject.toml" | sha256sum | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$digest" ] && "$py" -c 'import medclf, torch' >/dev/null 2>&1; then
  log "Python environment up to date ($py)"
else
  log "installing Python packages into $("$py" -c 'import sys; print(sys.prefix)') (torch takes a few minutes the first time)"
  # grep drops pip's notes about absent local mirror folders; real errors still show.
  quiet_pip() { "$py" -m pip "$@" 2> >(grep -v 'is ignored: it is neither a file nor a directory' >&2); }
  quiet_pip install -q -r "$req"
  quiet_pip install -q --no-deps -e "$repo"
  echo "$digest" > "$stamp"
fi
echo "$py"
