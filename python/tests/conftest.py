"""Shared fixtures: the real datasets in ../shared/data (beside the repository)."""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = Path(os.environ.get("MEDCLF_SHARED_DATA", REPO.parent / "shared" / "data"))


def _dataset(name):
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"{path} not present (set MEDCLF_SHARED_DATA)")
    return path


@pytest.fixture(scope="session")
def repo_root():
    return REPO


@pytest.fixture(scope="session")
def brain_mri_root():
    """253 real MRI slices in yes/ and no/ (read-only; copy before changing anything)."""
    return _dataset("brain_mri")


@pytest.fixture(scope="session")
def ham_root():
    """1,983 HAM10000 images in images/ plus HAM10000_metadata.csv (read-only)."""
    return _dataset("ham10000_dev")
