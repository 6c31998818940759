"""Reviewing duplicate detection: duplicates.csv (every candidate pair and its verdict), a contact
sheet of the verified pairs worth a look, warnings for oversized groups, and the decisions file
(`--duplicate-decisions`) in which a person overrides verdicts.
"""

import csv
import math
from dataclasses import dataclass
from pathlib import Path

from medclf.core.errors import MedclfError
from medclf.core.fileio import atomic_path, sha256_file, write_text

DECISIONS = {"same", "different"}
CSV_COLUMNS = ["path_a", "path_b", "descriptor_distance", "verification_inliers", "verdict", "decided_by",
               "label_a", "label_b", "labels_differ", "group_a", "group_b", "groups_differ"]
SHEET_THUMB = 160  # pixels per image in the contact sheet
SHEET_MAX_PAIRS = 200


def read_decisions(path, index_of):
    """`path_a,path_b,same|different` rows (header optional) -> {(i, j): decision} with i < j,
    through `index_of` (path -> index). Unknown paths and other words are errors naming the line."""
    path = Path(path)
    if not path.is_file():
        raise MedclfError(f"{path}: decisions file not found; check --duplicate-decisions")
    with open(path, encoding="utf-8-sig", newline="") as fh:
        rows = list(csv.reader(fh))
    decisions = {}
    for line, row in enumerate(rows, start=1):
        cells = [c.strip() for c in row]
        if not any(cells) or (line == 1 and [c.lower() for c in cells[:3]] == ["path_a", "path_b", "decision"]):
            continue
        if len(cells) < 3 or cells[2].lower() not in DECISIONS:
            raise MedclfError(f"{path}: line {line}: expected `path_a,path_b,same|different`, got {','.join(row)!r}; "
                              "fix that line")
        unknown = [p for p in cells[:2] if p not in index_of]
        if unknown:
            raise MedclfError(f"{path}: line {line}: {unknown[0]!r} is not one of the images being partitioned; "
                              "use paths as written in splits.csv / duplicates.csv")
        i, j = sorted((index_of[cells[0]], index_of[cells[1]]))
        if i == j:
            raise MedclfError(f"{path}: line {line}: both paths name the same image; fix that line")
        decisions[(i, j)] = cells[2].lower()
    return decisions


def decisions_fingerprint(path):
    """What partition.json records about a decisions file."""
    return {"path": str(Path(path).resolve()), "sha256": sha256_file(path)}


def refuse_different_exact(decisions, report, paths, source):
    """A decision `different` on files with identical bytes cannot be honoured."""
    exact = {(a, b) for m in report.exact_clusters for k, a in enumerate(m) for b in m[k + 1:]}
    wrong = [(i, j) for (i, j), d in sorted(decisions.items()) if d == "different" and (i, j) in exact]
    if wrong:
        i, j = wrong[0]
        raise MedclfError(f"{source}: {paths[i]} and {paths[j]} have identical bytes, so they cannot be "
                          "'different'; remove that line")


def _distance(similarity):
    return "" if similarity is None or math.isnan(similarity) else f"{1.0 - similarity:.4f}"


def candidate_rows(report, paths, labels, groups=None):
    """One dict per pair (the columns of duplicates.csv): each file with identical bytes paired
    with the first of its cluster, then every candidate pair. `groups`: the --group-col values,
    or None (then the group columns are empty)."""
    from medclf.prepare.dedup import Candidate

    groups = groups or [""] * len(paths)
    exact = [Candidate(m[0], j, float("nan"), False, verdict="exact_bytes")
             for m in report.exact_clusters for j in m[1:]]
    rows = []
    for c in exact + report.candidates:
        rows.append({
            "path_a": paths[c.i], "path_b": paths[c.j], "descriptor_distance": _distance(c.similarity),
            "verification_inliers": c.inliers if c.verdict in ("duplicate", "different") else "",
            "verdict": c.verdict, "decided_by": c.decided_by,
            "label_a": labels[c.i], "label_b": labels[c.j], "labels_differ": int(labels[c.i] != labels[c.j]),
            "group_a": groups[c.i], "group_b": groups[c.j],
            "groups_differ": int(groups[c.i] != groups[c.j]) if groups[c.i] else "",
        })
    return rows


def write_duplicates_csv(path, rows):
    import io

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buffer.getvalue())


def pairs_to_review(rows):
    """Verified pairs that join different labels or different --group-col values."""
    joined = ("exact_bytes", "exact_pixels", "duplicate")
    return [r for r in rows if r["verdict"] in joined and (r["labels_differ"] or r["groups_differ"])]


def _caption_lines(row):
    second = f"labels {row['label_a']} / {row['label_b']}"
    if row["group_a"]:
        second += f"; groups {row['group_a']} / {row['group_b']}"
    second += f"; {row['verdict']}"
    if row["verification_inliers"] != "":
        second += f", {row['verification_inliers']} inliers"
    if row["decided_by"] != "detector":
        second += f" ({row['decided_by']})"
    return [f"{row['path_a']}  |  {row['path_b']}", second]


def _tile(path):
    from PIL import Image

    from medclf.core.errors import UnreadableImageError
    from medclf.data.imageio import read_image

    try:
        image = read_image(path)
    except UnreadableImageError:
        return Image.new("RGB", (SHEET_THUMB, SHEET_THUMB), (128, 128, 128))
    image.thumbnail((SHEET_THUMB, SHEET_THUMB))
    return image


def write_contact_sheet(path, rows, data_root):
    """The pairs side by side with their paths, labels, groups and score, one pair per row
    (at most SHEET_MAX_PAIRS; duplicates.csv lists them all). Returns the number shown."""
    from PIL import Image, ImageDraw

    shown = rows[:SHEET_MAX_PAIRS]
    caption = 30
    height = SHEET_THUMB + caption
    width = 2 * SHEET_THUMB + 30
    sheet = Image.new("RGB", (max(width, 640), max(1, len(shown)) * height + (20 if len(rows) > len(shown) else 0)),
                      "white")
    draw = ImageDraw.Draw(sheet)
    for k, row in enumerate(shown):
        top = k * height
        sheet.paste(_tile(Path(data_root) / row["path_a"]), (0, top))
        sheet.paste(_tile(Path(data_root) / row["path_b"]), (SHEET_THUMB + 10, top))
        for n, text in enumerate(_caption_lines(row)):
            draw.text((2, top + SHEET_THUMB + 2 + 12 * n), text, fill="black")
    if not shown:
        draw.text((2, 2), "no verified pair joins different labels or groups", fill="black")
    if len(rows) > len(shown):
        more = f"... and {len(rows) - len(shown)} more in duplicates.csv"
        draw.text((2, len(shown) * height + 4), more, fill="black")
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG")
    return len(shown)


def oversized_groups(components, paths, pairs, limit):
    """Warnings for groups above `limit` images: the group's first paths and the pairs that
    joined it (`pairs`: (i, j, why) tuples)."""
    warnings = []
    for members in components:
        if len(members) <= limit:
            continue
        inside = set(members)
        joined = [f"{paths[i]}~{paths[j]} ({why})" for i, j, why in pairs if i in inside and j in inside]
        listed = "; ".join(joined[:20]) + (f"; and {len(joined) - 20} more" if len(joined) > 20 else "")
        warnings.append(f"group {paths[members[0]]} holds {len(members)} images (more than {limit}), joined by "
                        f"{listed or 'the --group-col value alone'}; check these pairs in duplicates.csv and "
                        "override wrong ones with --duplicate-decisions")
    return warnings


# ---------------------------------------------------------------- the partition stage's duplicate step

METHOD = ("candidates: nearest neighbours of a 12x12 blurred gray thumbnail (inscribed disc, zero mean, unit "
          "norm) under 8 flips/rotations, 2 turns of 10 degrees and 18 crop windows; verification: ORB "
          "keypoints, RANSAC similarity transform, inlier count")


def detect_duplicates(fingerprints, paths, options, progress=False):
    """find_duplicates with the partition options, after reading the decisions file (if any)."""
    from medclf.prepare import dedup

    decisions = None
    if options.duplicate_decisions:
        decisions = read_decisions(options.duplicate_decisions, {p: k for k, p in enumerate(paths)})
    report = dedup.find_duplicates(fingerprints, near=options.near_dups, neighbours=options.dup_neighbours,
                                   min_inliers=options.dup_min_inliers, decisions=decisions, progress=progress)
    if decisions is not None:
        refuse_different_exact(decisions, report, paths, options.duplicate_decisions)
        report.decisions_file = {**decisions_fingerprint(options.duplicate_decisions), "pairs": len(decisions)}
    return report


def near_info(report, options):
    """partition.json's duplicates.near: the method, its settings and what it found."""
    verdicts = {}
    for c in report.candidates:
        verdicts[c.verdict] = verdicts.get(c.verdict, 0) + 1
    return {"enabled": bool(options.near_dups), "method": METHOD, "neighbours": options.dup_neighbours,
            "min_inliers": options.dup_min_inliers, "candidate_pairs": len(report.candidates),
            "verified_pairs": len(report.near_pairs), "verdicts": dict(sorted(verdicts.items())),
            "decisions": report.decisions_file}


def largest_group_info(components, group_of, items, report, options, warn):
    """The largest final group, and a warning for each group above the size limit naming the
    pairs that joined it."""
    from medclf.prepare import dedup

    limit = options.max_group_size or dedup.group_size_limit(len(items))
    paths = [i.path for i in items]
    pairs = [(m[0], j, "identical bytes") for m in report.exact_clusters for j in m[1:]]
    pairs += [(c.i, c.j, c.verdict if c.verdict == "exact_pixels" else f"{c.inliers} inliers")
              for c in report.near_pairs]
    warnings = oversized_groups(components, paths, pairs, limit)
    for text in warnings:
        warn(text)
    largest = max(components, key=len)
    return {"name": group_of[largest[0]], "size": len(largest), "limit": limit,
            "oversized": [group_of[m[0]] for m in components if len(m) > limit]}


@dataclass
class Review:
    """What a person reviews: every candidate pair (duplicates.csv) and the verified pairs that join
    different groups or labels (the contact sheet). Planned first, written once the outputs may be."""

    rows: list
    to_review: list

    @property
    def record(self):
        """What partition.json records about the review files."""
        return {"csv": "duplicates.csv", "contact_sheet": "duplicates_to_review.png",
                "pairs_to_review": len(self.to_review)}

    def write(self, out, data_root):
        write_duplicates_csv(Path(out) / "duplicates.csv", self.rows)
        write_contact_sheet(Path(out) / "duplicates_to_review.png", self.to_review, data_root)


def plan_review(report, paths, labels, group_values):
    rows = candidate_rows(report, paths, labels, group_values)
    return Review(rows, pairs_to_review(rows))
