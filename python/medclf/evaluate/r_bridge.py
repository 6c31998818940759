"""One engine fallback for `medclf report` and `medclf compare`: R through rpy2 (embedded), else R
through an `Rscript --vanilla` subprocess, else the pure-Python mirror.

A task names its R entry point (a function taking and returning one JSON string, sourced from a
file in R/), the R script that runs the same function from the command line, and the Python
mirror. Only JSON strings cross the bridge. An engine that cannot run here (no rpy2, no R, a
missing R package, an R error inside rpy2) raises EngineUnavailable and the next one is tried;
input errors (R's medclf.error/1 answer, or the script's "<script>: error: " line) are never a
reason to fall back: they stop as MedclfError. The result's "engine" records which route ran
("route": "rpy2" | "Rscript" | "Python").
"""

import contextlib
import json
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from medclf.core import schemas
from medclf.core.errors import MedclfError

ENGINES = ("auto", "rpy2", "rscript", "python")
ROUTE_NAMES = {"rpy2": "rpy2", "rscript": "Rscript", "python": "Python"}


class EngineUnavailable(Exception):
    """An R route cannot run here (no rpy2, no R, missing package); the next route is tried."""


@dataclass(frozen=True)
class Task:
    command: str                     # "report" | "compare", for messages
    r_file: str                      # R/<r_file> defines r_function
    r_function: str                  # request JSON string -> result JSON string
    script: str                      # R/<script>: the same computation from the command line
    script_argv: Callable            # (request, out_path) -> arguments after the script path
    python: Callable                 # request -> result (the pure-Python mirror)
    r_packages: tuple = ("pROC", "jsonlite")


def r_dir():
    """The R/ folder shipped inside the package (every install has it), or $MEDCLF_R_DIR."""
    import medclf

    override = os.environ.get("MEDCLF_R_DIR")
    return Path(override) if override else Path(medclf.__file__).resolve().parent / "R"


def python_engine_info():
    import numpy
    import scipy
    import sklearn

    return {"name": "python", "python": platform.python_version(), "numpy": numpy.__version__,
            "scipy": scipy.__version__, "sklearn": sklearn.__version__}


def decode_r_result(text):
    result = json.loads(text)
    if isinstance(result, dict) and result.get("schema") == schemas.ERROR:
        raise MedclfError(result["error"])
    return result


@contextlib.contextmanager
def keep_library_path():
    """Importing rpy2 starts embedded R, which writes R's LD_LIBRARY_PATH (R's lib and the system
    library folders) into this process's environment. Children started later inherit it and may
    load another Python's libpython (a pyenv python then fails at `import ssl`). R's libraries
    are loaded by then, so the variable is put back as it was."""
    before = os.environ.get("LD_LIBRARY_PATH")
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("LD_LIBRARY_PATH", None)
        else:
            os.environ["LD_LIBRARY_PATH"] = before


def quiet_r_console():
    """Route embedded R's console output (e.g. start-up notes about empty site libraries) into a
    list instead of stderr; returns the list."""
    from rpy2.rinterface_lib import callbacks

    captured = []
    callbacks.consolewrite_warnerror = captured.append
    callbacks.consolewrite_print = captured.append
    return captured


def rpy2_errors():
    """Exceptions that mean "the rpy2 route cannot run": rpy2's RRuntimeError is not a RuntimeError."""
    basic = (ImportError, OSError, ValueError, RuntimeError)
    try:
        with keep_library_path():
            from rpy2.rinterface_lib.embedded import RRuntimeError
    except basic:
        return basic
    return basic + (RRuntimeError,)


_RPY2_FUNCTIONS = {}  # R function name -> the sourced function (R is embedded once per process)


def _rpy2_function(task):
    if task.r_function in _RPY2_FUNCTIONS:
        return _RPY2_FUNCTIONS[task.r_function]
    with keep_library_path():
        quiet_r_console()
        import rpy2.robjects as ro

    for package in task.r_packages:
        if not ro.r(f'isTRUE(suppressWarnings(requireNamespace("{package}", quietly = TRUE)))')[0]:
            raise EngineUnavailable(f"R package {package} is not installed")
    source = r_dir() / task.r_file
    if not source.is_file():
        raise EngineUnavailable(f"{source} not found (set MEDCLF_R_DIR)")
    ro.r.source(str(source))
    _RPY2_FUNCTIONS[task.r_function] = ro.globalenv[task.r_function]
    return _RPY2_FUNCTIONS[task.r_function]


def run_rpy2(task, request):
    """The task's R function in embedded R."""
    try:
        text = _rpy2_function(task)(json.dumps(request))[0]
    except EngineUnavailable:
        raise
    except rpy2_errors() as exc:
        raise EngineUnavailable(f"rpy2: {type(exc).__name__}: {str(exc).strip()[:300]}") from exc
    return decode_r_result(str(text))


def run_rscript(task, request):
    """The task's R script in an `Rscript --vanilla` subprocess; its output file is the result."""
    script = r_dir() / task.script
    if not script.is_file():
        raise EngineUnavailable(f"{script} not found (set MEDCLF_R_DIR)")
    rscript = shutil.which("Rscript")
    if rscript is None:
        raise EngineUnavailable("Rscript is not on PATH")
    error_prefix = f"{task.script}: error: "
    with tempfile.TemporaryDirectory(prefix=f"medclf-{task.command}-") as tmp:
        out_path = Path(tmp) / "result.json"
        argv = [rscript, "--vanilla", str(script), *task.script_argv(request, out_path)]
        try:
            proc = subprocess.run(argv, capture_output=True, text=True)
        except OSError as exc:
            raise EngineUnavailable(f"Rscript: {exc}") from exc
        if proc.returncode != 0:
            lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
            user = [ln for ln in lines if ln.startswith(error_prefix)]
            if user:
                raise MedclfError(user[-1][len(error_prefix):])
            raise EngineUnavailable("Rscript failed: " + " | ".join(lines[-3:]))
        return decode_r_result(out_path.read_text(encoding="utf-8"))


def run_python(task, request):
    return task.python(request)


def run(task, request, engine="auto"):
    """(result, notes): the result of the first route that runs, in the order rpy2, Rscript,
    Python (or only `engine`); notes say why earlier routes were skipped."""
    if engine not in ENGINES:
        raise MedclfError(f"--engine {engine}: choose one of {', '.join(ENGINES)}")
    order = ("rpy2", "rscript", "python") if engine == "auto" else (engine,)
    routes = {"rpy2": run_rpy2, "rscript": run_rscript, "python": run_python}
    notes = []
    for name in order:
        try:
            result = routes[name](task, request)
        except EngineUnavailable as exc:
            if engine != "auto":
                raise MedclfError(f"--engine {engine} is unavailable here: {exc}; "
                                  "use --engine auto (falls back to Python) or see docs/report.md") from exc
            notes.append(f"{name} unavailable: {exc}")
            warnings.warn(f"medclf {task.command}: {name} unavailable ({exc}); trying the next engine", stacklevel=2)
            continue
        if isinstance(result, dict) and isinstance(result.get("engine"), dict):
            result["engine"]["route"] = ROUTE_NAMES[name]
        return result, notes
    raise MedclfError(f"no {task.command} engine could run")  # unreachable: Python always runs


def describe_engine(engine):
    """'Rscript (R 4.2.2, pROC 1.18.0, jsonlite 1.8.4)' from a result's "engine" record."""
    details = ", ".join(f"{k} {v}" for k, v in engine.items() if k not in ("name", "route"))
    return f"{engine.get('route') or engine.get('name')} ({details})"
