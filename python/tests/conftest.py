"""Shared fixtures: the real datasets in ../shared/data (beside the repository)."""

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = Path(os.environ.get("MEDCLF_SHARED_DATA", REPO.parent / "shared" / "data"))


def _dataset(name):
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"{path} not present (set MEDCLF_SHARED_DATA)")
    return path


def pytest_addoption(parser):
    parser.addoption("--fp32", action="store_true",
                     help="run every in-process training and inference in fp32, as on a CPU without native bf16 "
                          "(AVX2 only): finds tests that depend on this CPU's arithmetic")


@pytest.fixture(scope="session", autouse=True)
def _fp32_everywhere(request):
    if not request.config.getoption("--fp32"):
        yield
        return
    from medclf.engine import precision

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(precision, "cpu_supports_bf16", lambda: False)
        yield


@pytest.fixture(scope="session")
def repo_root():
    return REPO


@pytest.fixture(scope="session")
def brain_mri_root():
    """253 real MRI slices in yes/ and no/ (read-only; copy before changing anything)."""
    return _dataset("brain_mri")


@pytest.fixture(scope="session")
def brain_partition(brain_mri_root, tmp_path_factory):
    """splits.csv of `medclf partition --seed 0` on the real brain MRI folder, made once per test
    process (read it, never write beside it: cut a copy with splits_files.subset_splits)."""
    from medclf import cli

    out = tmp_path_factory.mktemp(SESSION_PREFIX + "brain-partition")
    assert cli.main(["partition", "--data-root", str(brain_mri_root), "--out", str(out), "--quiet", "--seed", "0"]) == 0
    return out / "splits.csv"


@pytest.fixture(scope="session")
def ham_root():
    """1,983 HAM10000 images in images/ plus HAM10000_metadata.csv (read-only)."""
    return _dataset("ham10000_dev")


_MODULES_WITH_FAILURES = set()
SESSION_PREFIX = "session-"  # the session fixtures' folders, kept until the session ends


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.failed:
        _MODULES_WITH_FAILURES.add(item.module.__name__)
    return report


@pytest.fixture(scope="module", autouse=True)
def _remove_module_temp_dirs(request, tmp_path_factory):
    """A module's own fixtures (trained runs, exported models) live until the module ends; then
    their directories go unless one of its tests failed, so that disk use does not grow with the
    suite (pytest removes a passed test's own tmp_path itself)."""
    basetemp = tmp_path_factory.getbasetemp()
    before = set(basetemp.iterdir())
    yield
    if request.module.__name__ in _MODULES_WITH_FAILURES:
        return
    for path in set(basetemp.iterdir()) - before:
        if not path.name.startswith(SESSION_PREFIX):
            shutil.rmtree(path, ignore_errors=True)


def pytest_collection_modifyitems(items):
    """The docs test's per-file runs take minutes each: start them first, longest pages first, so
    that `pytest -n` spreads them over the workers instead of ending on one of them."""
    def weight(item):
        if not item.nodeid.startswith("python/tests/e2e/test_docs.py::test_every_command_block_runs["):
            return 0
        page = REPO / item.nodeid.split("[", 1)[1].rstrip("]")
        return -page.stat().st_size if page.is_file() else -1
    items.sort(key=weight)
