"""Duplicate detection on real images: synthetic copies are grouped, different pictures are not."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medclf.core.errors import MedclfError
from medclf.data.imageio import read_image
from medclf.prepare import dedup
from medclf.prepare import duplicates_review as review
from medclf.prepare.dedup import UnionFind, find_duplicates, fingerprint_files
from medclf.prepare.duplicate_copies import FAMILIES, encode, synthetic_copy

# Pairs of different lesions in ham10000_dev whose 64-bit dHashes (9x8 gray, Lanczos) are
# identical: the old detector grouped them at any distance. Checked by eye: different pictures.
SAME_DHASH_DIFFERENT_LESIONS = [
    ("ISIC_0031309", "ISIC_0027458"),  # df / nv
    ("ISIC_0033120", "ISIC_0024969"),  # mel / nv
    ("ISIC_0024402", "ISIC_0034301"),  # vasc / nv
    ("ISIC_0033213", "ISIC_0032328"),  # nv / nv
]


def reference_dhash(image):
    """The 64-bit difference hash the detector used before (and brain_mri/SOURCE.md used)."""
    gray = np.asarray(image.convert("L").resize((9, 8), Image.Resampling.LANCZOS), dtype=np.int16)
    value = 0
    for bit in (gray[:, :-1] > gray[:, 1:]).flatten():
        value = (value << 1) | int(bit)
    return value


def test_union_find_is_order_independent():
    a, b = UnionFind(5), UnionFind(5)
    for i, j in [(3, 4), (1, 3)]:
        a.union(i, j)
    for i, j in [(1, 3), (4, 3)]:
        b.union(i, j)
    assert a.components() == b.components() == [[0], [1, 3, 4], [2]]


def test_group_size_limit():
    assert dedup.group_size_limit(253) == 20
    assert dedup.group_size_limit(10_015) == 100


@pytest.fixture(scope="module")
def real_pool(ham_root, brain_mri_root):
    """40 dermoscopy images of 40 different lesions and 4 MRI slices (distinct pictures)."""
    meta = pd.read_csv(ham_root / "HAM10000_metadata.csv", dtype=str).drop_duplicates("lesion_id")
    ham = [ham_root / "images" / f"{i}.jpg" for i in meta["image_id"].iloc[::37][:40]]
    brain = [brain_mri_root / "yes" / "Y1.jpg", brain_mri_root / "yes" / "Y100.JPG",
             brain_mri_root / "no" / "N1.JPG", brain_mri_root / "no" / "15 no.jpg"]
    return ham + brain


@pytest.mark.parametrize("family", FAMILIES)
def test_synthetic_copies_of_real_images_join_their_original(real_pool, family, tmp_path):
    rng = np.random.default_rng(FAMILIES.index(family))
    originals = real_pool[:8] + real_pool[-2:]  # 8 dermoscopy, 2 MRI
    copies = []
    for k, source in enumerate(originals):
        copy, description = synthetic_copy(read_image(source), family, rng, variant=k % 8)
        copies.append(tmp_path / f"copy{k}.jpg")
        copies[-1].write_bytes(encode(copy, description))
    fingerprints = fingerprint_files(real_pool + copies, workers=1)
    report = find_duplicates(fingerprints, workers=1)
    uf = report.union_find
    found = [uf.find(len(real_pool) + k) == uf.find(real_pool.index(source)) for k, source in enumerate(originals)]
    assert sum(found) >= 9, f"{family}: {sum(found)}/10 copies joined their original"
    # ... and nothing else: no group holds two of the (distinct) originals.
    roots = [uf.find(i) for i in range(len(real_pool))]
    assert len(set(roots)) == len(real_pool)


@pytest.mark.parametrize("pair", SAME_DHASH_DIFFERENT_LESIONS)
def test_different_dermoscopy_images_with_identical_dhash_are_not_grouped(ham_root, pair):
    paths = [ham_root / "images" / f"{name}.jpg" for name in pair]
    assert reference_dhash(read_image(paths[0])) == reference_dhash(read_image(paths[1]))
    report = find_duplicates(fingerprint_files(paths, workers=1), workers=1)
    # They were examined (each is the other's nearest neighbour) and rejected.
    assert [(c.i, c.j, c.verdict) for c in report.candidates] == [(0, 1, "different")]
    assert report.candidates[0].inliers < dedup.DEFAULT_MIN_INLIERS
    assert report.clusters == []


def test_chain_through_an_unverified_link_does_not_join(ham_root, tmp_path):
    """A ~ B (B is A at half size) verifies; B's nearest neighbour C is another lesion: the pair
    B, C is examined but not verified, so C stays out of A's group."""
    a, c = ham_root / "images" / "ISIC_0033120.jpg", ham_root / "images" / "ISIC_0024969.jpg"
    b = tmp_path / "b.jpg"
    b.write_bytes(encode(*synthetic_copy(read_image(a), "half", np.random.default_rng(0))))
    report = find_duplicates(fingerprint_files([a, b, c], workers=1), workers=1)
    verdicts = {(x.i, x.j): x.verdict for x in report.candidates}
    assert verdicts[(0, 1)] == "duplicate" and verdicts[(1, 2)] == "different"
    assert report.clusters == [[0, 1]]


@pytest.mark.parametrize("links, clusters", [
    ({(0, 1): 40, (1, 2): 3, (0, 2): 2}, [[0, 1]]),  # only A~B verifies
    ({(0, 1): 40, (1, 2): 30, (0, 2): 2}, [[0, 1, 2]]),  # both links verify: one group, A and C too
    ({(0, 1): 3, (1, 2): 3, (0, 2): 3}, []),
])
def test_groups_are_unions_of_verified_pairs_only(ham_root, monkeypatch, links, clusters):
    paths = [ham_root / "images" / f"{n}.jpg" for n in ("ISIC_0031309", "ISIC_0027458", "ISIC_0033120")]
    fingerprints = fingerprint_files(paths, workers=1)
    index = {f.path: k for k, f in enumerate(fingerprints)}
    monkeypatch.setattr(dedup, "verify_pair", lambda fa, fb, *_: links[(index[fa.path], index[fb.path])])
    report = find_duplicates(fingerprints, min_inliers=25, workers=1)
    assert len(report.candidates) == 3
    assert report.clusters == clusters


def test_identical_bytes_and_identical_pixels_are_exact(ham_root, tmp_path):
    source = ham_root / "images" / "ISIC_0031309.jpg"
    (tmp_path / "a.jpg").write_bytes(source.read_bytes())
    (tmp_path / "b.jpg").write_bytes(source.read_bytes())
    read_image(source).save(tmp_path / "c.png")  # same decoded pixels, other bytes
    gray = np.full((40, 40, 3), 90, np.uint8)  # flat pictures: no keypoints at all
    Image.fromarray(gray).save(tmp_path / "flat1.png")
    Image.fromarray(gray).save(tmp_path / "flat2.bmp")
    Image.fromarray(gray + 1).save(tmp_path / "flat3.png")
    names = ["a.jpg", "b.jpg", "c.png", "flat1.png", "flat2.bmp", "flat3.png"]
    report = find_duplicates(fingerprint_files([tmp_path / n for n in names], workers=1), workers=1)
    assert report.exact_clusters == [[0, 1]]
    verdicts = {(c.i, c.j): c.verdict for c in report.candidates}
    assert verdicts[(0, 2)] == "exact_pixels" and verdicts[(3, 4)] == "exact_pixels"
    assert verdicts.get((3, 5), "different") == "different"
    assert report.clusters == [[0, 1, 2], [3, 4]]


def test_decisions_override_verdicts(ham_root, tmp_path):
    a, c = ham_root / "images" / "ISIC_0033120.jpg", ham_root / "images" / "ISIC_0024969.jpg"
    b = tmp_path / "b.jpg"
    b.write_bytes(encode(*synthetic_copy(read_image(a), "half", np.random.default_rng(0))))
    paths = [str(a), str(b), str(c)]
    decisions_csv = tmp_path / "decisions.csv"
    decisions_csv.write_text(f"path_a,path_b,decision\n{b},{a},different\n{a},{c},same\n")
    decisions = review.read_decisions(decisions_csv, {p: k for k, p in enumerate(paths)})
    assert decisions == {(0, 1): "different", (0, 2): "same"}
    report = find_duplicates(fingerprint_files(paths, workers=1), decisions=decisions, workers=1)
    by_pair = {(x.i, x.j): x for x in report.candidates}
    assert (by_pair[(0, 1)].verdict, by_pair[(0, 1)].decided_by) == ("different", "decisions file")
    assert (by_pair[(0, 2)].verdict, by_pair[(0, 2)].decided_by) == ("duplicate", "decisions file")
    assert report.clusters == [[0, 2]]


@pytest.mark.parametrize("text, message", [
    ("x.jpg,nowhere.jpg,same\n", "line 1: 'nowhere.jpg' is not one of the images"),
    ("x.jpg,y.jpg,maybe\n", "line 1: expected `path_a,path_b,same|different`"),
    ("x.jpg,y.jpg\n", "line 1: expected"),
    ("x.jpg,x.jpg,same\n", "line 1: both paths name the same image"),
])
def test_bad_decisions_file(tmp_path, text, message):
    path = tmp_path / "d.csv"
    path.write_text(text)
    with pytest.raises(MedclfError, match=message):
        review.read_decisions(path, {"x.jpg": 0, "y.jpg": 1})
    with pytest.raises(MedclfError, match="decisions file not found"):
        review.read_decisions(tmp_path / "missing.csv", {})


def test_oversized_group_warning_names_the_pairs():
    paths = ["a.jpg", "b.jpg", "c.jpg", "d.jpg"]
    warnings = review.oversized_groups([[0, 1, 2], [3]], paths, [(0, 1, "40 inliers"), (1, 2, "identical bytes")], 2)
    assert warnings == ["group a.jpg holds 3 images (more than 2), joined by a.jpg~b.jpg (40 inliers); "
                        "b.jpg~c.jpg (identical bytes); check these pairs in duplicates.csv and override wrong "
                        "ones with --duplicate-decisions"]


def test_worker_pool_starts_after_opencv_threads_ran_in_the_parent(brain_mri_root):
    # A fork taken while OpenCV's thread pool exists used to hang the workers (seen as a test
    # suite that never finished); run in a subprocess so a hang fails by timeout here.
    code = f"""
import cv2, numpy as np, pathlib
from medclf.prepare import dedup
cv2.setNumThreads(2)
cv2.GaussianBlur(np.zeros((2048, 2048), np.uint8), (0, 0), 3)  # the parent's pool now exists
paths = sorted(p for p in pathlib.Path({str(brain_mri_root)!r}).rglob("*") if p.is_file())[:80]
prints = dedup.fingerprint_files(paths, workers=2)
print(sum(not isinstance(p, Exception) for p in prints))
"""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.split()[-1]) >= 75


def test_an_unreadable_file_among_many_is_reported_not_fatal(tmp_path, brain_mri_root):
    import shutil

    images = sorted(p for p in brain_mri_root.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:70]
    for k, path in enumerate(images):
        shutil.copy(path, tmp_path / f"{k:03d}{path.suffix}")
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    from medclf.core.errors import UnreadableImageError
    from medclf.prepare import dedup

    prints = dedup.fingerprint_files(sorted(tmp_path.iterdir()), workers=2)  # >= 64 files: the worker pool
    broken = [p for p in prints if isinstance(p, UnreadableImageError)]
    assert len(prints) == 71 and len(broken) == 1 and broken[0].path.endswith("broken.jpg")
