"""Duplicate detection on real images: recall per transform family, false merges, speed.

    PYTHONPATH=python .venv/bin/python benchmarks/duplicates.py [--data ../shared/data] [--out results/bench_duplicates]

1. Recall: every image of ham10000_dev (1,983) and brain_mri (253) gets one synthetic copy, the
   families taking turns (medclf.prepare.duplicate_copies: the 8 flips/rotations, crops keeping 80-95 %,
   zoom 0.9-1.1, rotation up to 15 degrees, brightness/contrast +-15 %, JPEG quality 60-90, half
   size). Originals and copies (4,472 images) go through the detector together; a copy counts
   as found when it lands in its original's duplicate group.
2. False merges: the detector on ham10000_dev alone; every verified pair of images with
   different lesion_ids is listed and drawn in OUT/false_merges.png, to be judged by eye.
3. Speed: --n-speed images (ham10000_dev plus synthetic copies of it, written as JPEG files),
   fingerprinting (decoding included) and detection timed with --workers processes; peak
   resident memory of the main process and of the largest worker.
"""

import argparse
import os
import resource
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pandas as pd

from medclf.data.imageio import read_image
from medclf.prepare import dedup
from medclf.prepare import duplicates_review as review
from medclf.prepare.duplicate_copies import FAMILIES, encode, synthetic_copy


def make_copies(sources, folder, rng, families=None):
    """One copy per source (families in turn, or `families[k]`), written as JPEG files.
    Returns [(copy path, source index, family, description)]."""
    folder.mkdir(parents=True, exist_ok=True)
    made = []
    for k, source in enumerate(sources):
        family = families[k] if families else FAMILIES[k % len(FAMILIES)]
        variant = (k // len(FAMILIES)) % 8 if family == "dihedral" else None
        copy, description = synthetic_copy(read_image(source), family, rng, variant=variant)
        path = folder / f"copy{k:05d}.jpg"
        path.write_bytes(encode(copy, description))
        made.append((path, k, family, description))
    return made


def recall(data, tmp, rng, workers, limit=None):
    ham = sorted((data / "ham10000_dev" / "images").glob("*.jpg"))[:limit]
    brain = sorted(p for p in (data / "brain_mri").glob("*/*") if p.is_file())[:limit]
    sources = ham + brain
    copies = make_copies(sources, tmp / "recall", rng)
    paths = sources + [c[0] for c in copies]
    fingerprints = dedup.fingerprint_files(paths, workers=workers)
    report = dedup.find_duplicates(fingerprints, workers=workers)
    found, total = Counter(), Counter()
    missed = []
    for n, (path, source, family, description) in enumerate(copies):
        dataset = "ham10000_dev" if source < len(ham) else "brain_mri"
        hit = report.union_find.find(len(sources) + n) == report.union_find.find(source)
        for key in ((family, dataset), (family, "both")):
            total[key] += 1
            found[key] += hit
        if not hit:
            missed.append(f"{sources[source].name} ({description})")
    print("recall per transform family (copies in their original's group / copies):")
    print(f"{'family':<20} {'ham10000_dev':>14} {'brain_mri':>12} {'both':>14}")
    for family in FAMILIES:
        cells = [f"{found[(family, d)]}/{total[(family, d)]} {found[(family, d)] / max(1, total[(family, d)]):.3f}"
                 for d in ("ham10000_dev", "brain_mri", "both")]
        print(f"{family:<20} {cells[0]:>14} {cells[1]:>12} {cells[2]:>14}")
    print(f"candidate pairs {len(report.candidates)}; missed: {', '.join(missed[:30]) or 'none'}")


def false_merges(data, out, workers, limit=None):
    meta = pd.read_csv(data / "ham10000_dev" / "HAM10000_metadata.csv", dtype=str)[:limit]
    image_dir = data / "ham10000_dev" / "images"
    paths = [f"{i}.jpg" for i in meta["image_id"]]
    fingerprints = dedup.fingerprint_files([image_dir / p for p in paths], workers=workers)
    report = dedup.find_duplicates(fingerprints, workers=workers)
    rows = review.candidate_rows(report, paths, list(meta["dx"]), list(meta["lesion_id"]))
    review.write_duplicates_csv(out / "ham10000_dev_duplicates.csv", rows)
    merges = [r for r in review.pairs_to_review(rows) if r["groups_differ"]]
    review.write_contact_sheet(out / "false_merges.png", merges, image_dir)
    verdicts = Counter(r["verdict"] for r in rows)
    same_lesion = [r for r in rows if not r["groups_differ"]]
    print(f"\nham10000_dev: {len(rows)} candidate pairs ({dict(verdicts)}); candidate pairs within one lesion: "
          f"{len(same_lesion)}, verified {sum(r['verdict'] != 'different' for r in same_lesion)}")
    print(f"verified pairs joining different lesion_ids: {len(merges)} (contact sheet {out / 'false_merges.png'})")
    for r in merges:
        print(f"  {r['path_a']} {r['group_a']} {r['label_a']} ~ {r['path_b']} {r['group_b']} {r['label_b']}: "
              f"{r['verification_inliers']} inliers")


def peak_memory_mib():
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return own, workers


def cpu_seconds():
    """CPU time (user + system) of this process and of its finished workers: on a busy machine
    the wall time says more about the other jobs than about this one."""
    own, workers = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + workers.ru_utime + workers.ru_stime


def speed(data, tmp, rng, n_images, workers):
    ham = sorted((data / "ham10000_dev" / "images").glob("*.jpg"))
    n_copies = max(0, n_images - len(ham))
    sources = [ham[k] for k in rng.integers(0, len(ham), n_copies)]
    families = [FAMILIES[k] for k in rng.integers(0, len(FAMILIES), n_copies)]
    copies = make_copies(sources, tmp / "speed", rng, families)
    paths = ham + [c[0] for c in copies]
    cpu_start = cpu_seconds()
    start = time.perf_counter()
    fingerprints = dedup.fingerprint_files(paths, workers=workers)
    decoded = time.perf_counter()
    report = dedup.find_duplicates(fingerprints, workers=workers)
    done = time.perf_counter()
    cpu = cpu_seconds() - cpu_start
    own, child = peak_memory_mib()
    print(f"\nspeed: {len(paths)} images ({len(ham)} ham10000_dev + {len(copies)} copies), {workers} worker(s): "
          f"fingerprints (decoding included) {decoded - start:.1f} s, candidates + verification "
          f"{done - decoded:.1f} s, total {done - start:.1f} s (CPU time of all processes {cpu:.1f} s; load average "
          f"{os.getloadavg()[0]:.1f}); {len(report.candidates)} candidate pairs, "
          f"{len(report.clusters)} groups; peak memory {own:.0f} MiB (main process), {child:.0f} MiB (largest worker)")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"),
                        help="folder with ham10000_dev/ and brain_mri/")
    parser.add_argument("--out", type=Path, default=Path("results/bench_duplicates"), help="contact sheet and CSV")
    parser.add_argument("--n-speed", type=int, default=10_000, help="images in the speed run (0 = skip it)")
    parser.add_argument("--workers", type=int, default=2, help="processes for decoding and verification")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-per-dataset", type=int, default=None, metavar="N",
                        help="use only the first N images of each dataset in the recall and false-merge parts "
                        "(a quick check; default: all)")
    parser.add_argument("--skip", choices=["recall", "false-merges"], action="append", default=[],
                        help="leave a part out (repeatable)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        if "recall" not in args.skip:
            recall(args.data, Path(tmp), rng, args.workers, args.max_per_dataset)
        if "false-merges" not in args.skip:
            false_merges(args.data, args.out, args.workers, args.max_per_dataset)
        if args.n_speed:
            speed(args.data, Path(tmp), rng, args.n_speed, args.workers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
