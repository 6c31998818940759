"""A non-editable install finds everything it needs: the wheel carries the R engine and the web
page, and an R-engine report runs from a fresh virtual environment outside the checkout."""

import json
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

from medclf.core import schemas

pytestmark = pytest.mark.slow  # builds the wheel


@pytest.fixture(scope="module")
def wheel(repo_root, tmp_path_factory):
    pytest.importorskip("setuptools", minversion="77", reason="building the wheel offline needs setuptools >= 77")
    out = tmp_path_factory.mktemp("wheel")
    # Built from a copy: setuptools writes build/ beside the sources, and the checkout stays as it is.
    source = out / "source"
    shutil.copytree(repo_root / "python" / "medclf", source / "python" / "medclf",
                    ignore=shutil.ignore_patterns("__pycache__", "tests"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(repo_root / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(source)], check=True, capture_output=True, text=True)
    (path,) = out.glob("medclf-*.whl")
    return path


def test_the_wheel_carries_the_r_engine_and_the_web_page(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for r_file in ("report.R", "metrics.R", "io.R", "calc_model_performance.R", "compare_models.R"):
        assert f"medclf/R/{r_file}" in names
    assert "medclf/serve/web/index.html" in names
    assert not any(name.startswith("medclf/R/tests/") for name in names)


@pytest.mark.r
def test_an_r_report_runs_from_the_installed_wheel(wheel, tmp_path):
    if shutil.which("Rscript") is None:
        pytest.skip("Rscript is not installed")
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    # medclf itself from the wheel; its dependencies from this environment (read after the venv's own folder)
    (Path(site) / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    run = tmp_path / "run"
    run.mkdir()
    y = [0, 0, 0, 1, 1, 1, 0, 1]
    p = [0.1, 0.4, 0.35, 0.8, 0.7, 0.2, 0.6, 0.9]
    (run / "predictions_test.json").write_text(json.dumps({
        "schema": schemas.PREDICTIONS, "split": "test", "classes": ["no", "yes"], "positive_class": "yes",
        "labels": y, "probabilities": [[1 - v, v] for v in p], "paths": [f"img{i}.png" for i in range(len(y))]}))
    done = subprocess.run([str(python), "-m", "medclf", "report", "--run", str(run), "--engine", "rscript",
                           "--no-plots"], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    located = subprocess.run([str(python), "-c", "import medclf, medclf.evaluate.r_bridge as r; print(medclf.__file__);"
                              " print(r.r_dir())"], cwd=tmp_path, capture_output=True, text=True, check=True)
    package_file, r_dir = located.stdout.split()
    assert package_file.startswith(site) and r_dir == str(Path(site) / "medclf" / "R")
    result = json.loads((run / "results_test.json").read_text())
    assert result["engine"]["name"] == "R"
    # 16 positive-negative pairs, 13 ranked right (hand count): AUC = 13/16
    assert result["metrics"]["roc_auc"]["estimate"] == pytest.approx(13 / 16)
