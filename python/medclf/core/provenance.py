"""Where a result came from: the medclf commit and the library versions, recorded in every JSON
medclf writes (config.json, calibration.json, cv.json, quality.json, ...).

A library already imported reports its own `__version__` (torch's carries its build, e.g.
2.14.1+cu130); one that is not is read from its installed distribution's metadata, so recording it
imports nothing: a torch-free stage (report, calibrate, ensemble) still names the torch beside it.
"""

import importlib.metadata
import platform
import subprocess
import sys
from pathlib import Path

TRAINING_LIBRARIES = ("torch", "torchvision", "numpy")


def git_commit():
    """The commit of the medclf checkout this code runs from, or None (an installed wheel, no git)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def distribution_version(name):
    """The version of library `name`: its module's __version__ once imported, else the installed
    distribution's; None where it is not installed."""
    module = sys.modules.get(name)
    if getattr(module, "__version__", None) is not None:
        return str(module.__version__)
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def library_versions(libraries=TRAINING_LIBRARIES):
    """{"python", "medclf", and each of `libraries`: its installed version (None if absent)}."""
    from medclf import __version__

    versions = {"python": platform.python_version(), "medclf": __version__}
    versions.update({name: distribution_version(name) for name in libraries})
    return versions
