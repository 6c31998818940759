"""Exact and near-duplicate detection."""

import numpy as np
from PIL import Image

from medclf.dedup import UnionFind, dhash, find_duplicates, hamming, near_pairs
from medclf.fileio import sha256_file as file_sha256


def test_dhash_of_hand_made_gradient():
    # Brightness falls from left to right: every left pixel is brighter -> all 64 bits set.
    falling = Image.fromarray(np.tile(np.linspace(255, 0, 90).astype(np.uint8), (80, 1)))
    assert dhash(falling) == 2**64 - 1
    rising = Image.fromarray(np.tile(np.linspace(0, 255, 90).astype(np.uint8), (80, 1)))
    assert dhash(rising) == 0


def test_dhash_survives_resize_and_reencode(tmp_path):
    rng = np.random.default_rng(1)
    base = Image.fromarray(np.kron(rng.integers(0, 255, (9, 9), dtype=np.uint8), np.ones((20, 20), np.uint8)))
    base.save(tmp_path / "a.png")
    base.resize((150, 150)).save(tmp_path / "b.jpg", quality=80)
    other = Image.fromarray(np.kron(rng.integers(0, 255, (9, 9), dtype=np.uint8), np.ones((20, 20), np.uint8)))
    a, b, c = dhash(Image.open(tmp_path / "a.png")), dhash(Image.open(tmp_path / "b.jpg")), dhash(other)
    assert hamming(a, b) <= 3
    assert hamming(a, c) > 10


def test_hamming_and_near_pairs():
    assert hamming(0b1011, 0b0001) == 2
    hashes = [0b0000, 0b0011, 0b1111, 2**63 + 0b0000]
    # distances: (0,1)=2 (0,2)=4 (0,3)=1 (1,2)=2 (1,3)=3 (2,3)=5
    assert near_pairs(hashes, 2) == [(0, 1, 2), (0, 3, 1), (1, 2, 2)]
    assert near_pairs(hashes, 0) == []


def test_union_find_is_order_independent():
    a, b = UnionFind(5), UnionFind(5)
    for i, j in [(3, 4), (1, 3)]:
        a.union(i, j)
    for i, j in [(1, 3), (4, 3)]:
        b.union(i, j)
    assert a.components() == b.components() == [[0], [1, 3, 4], [2]]


def test_find_duplicates_exact_and_near_merge_transitively():
    sha = ["x", "y", "x", "z", "w"]
    dh = [0b0, 0b1111_0000, 0b0, 0b1111_0001, 2**64 - 1]
    report = find_duplicates(sha, dh, near_distance=1)
    assert report.exact_clusters == [[0, 2]]
    assert report.clusters == [[0, 2], [1, 3]]
    assert report.near_pairs == [(1, 3, 1)]
    exact_only = find_duplicates(sha, dh, near_distance=-1)
    assert exact_only.clusters == [[0, 2]]


def test_file_sha256(tmp_path):
    (tmp_path / "f").write_bytes(b"abc")
    assert file_sha256(tmp_path / "f") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_brain_mri_duplicate_counts(brain_mri_root):
    """SOURCE.md: 22 md5 groups (47 files); with dHash <= 3 merged: 36 groups, 83 files."""
    from medclf.imageio import read_image

    files = sorted(p for p in brain_mri_root.rglob("*") if p.is_file() and p.suffix.lower() != ".md")
    assert len(files) == 253
    report = find_duplicates([file_sha256(p) for p in files], [dhash(read_image(p)) for p in files], 3)
    assert (len(report.exact_clusters), sum(map(len, report.exact_clusters))) == (22, 47)
    assert (len(report.clusters), sum(map(len, report.clusters))) == (36, 83)
    assert all(len({files[i].parent.name for i in c}) == 1 for c in report.clusters)
