"""Whole groups (patients, lesions, duplicate clusters) to splits or folds, at random within strata.

A group's chance of landing in a split is the split's ratio, whatever the group's size:
 1. each group gets a stratum: its class (the most frequent label of its images), its size band
    (1, 2, 3-4, 5-8, ... images) and, with --stratify-by COL, its value of that column;
 2. the groups of each class are put in a random order within their stratum, the class's strata one
    after another in a random order;
 3. the class's groups are dealt out in that order, each to the split furthest below its share of the
    class's images dealt so far (ties at random), starting from a random point of that dealing cycle
    (a random number of imaginary one-image groups dealt first). This is systematic sampling from a
    stratified list with a random start: each class, and each stratum within it, is divided in the
    ratios to within about one group, while where a group lands depends only on its random place in
    the order, so its chance of landing in a split is (up to that one-group rounding) the ratio;
 4. a repair pass puts at least one group of each class into every split where the class has enough
    groups (the smallest group of the class moves from the split holding most of it).
Everything is drawn from one generator seeded with the partition seed, after sorting, so the result
depends only on the groups and the seed.

Before, groups were placed greedily, largest first (partition.json without an `assignment` record).
The largest groups all lowered the cost most in the train bin, so val and test were filled with
single-image groups: on 8,032 HAM10000 images 89 % of the multi-image lesions went to train, and the
test set had another case mix. `ASSIGNMENT` names the current method.
"""

import numpy as np

ASSIGNMENT = "stratified-random/1"
PREVIOUS_ASSIGNMENT = "greedy-largest-first"
TIE = 1e-9


def outdated_assignment(info):
    """Why a partition.json's split must be made again (None when it need not): a split made by the
    greedy assignment that routed multi-image groups to train."""
    method = (info.get("assignment") or {}).get("method")
    if method == ASSIGNMENT:
        return None
    return (f"its groups were assigned by {method or 'the earlier greedy, largest-first method'}, which sent "
            f"multi-image groups to train; medclf now assigns them by {ASSIGNMENT}")


def size_band(n_images):
    """0 for 1 image, 1 for 2, 2 for 3-4, 3 for 5-8, ... (powers of two)."""
    return int(np.ceil(np.log2(n_images))) if n_images > 1 else 0


def size_band_label(band):
    if band <= 1:
        return str(band + 1)
    low, high = 2 ** (band - 1) + 1, 2 ** band
    return f"{low}-{high}"


def size_band_labels(group_counts):
    """The size bands present among the groups, smallest first ("1", "2", "3-4", ...)."""
    sizes = np.asarray(group_counts, dtype=np.float64).sum(axis=1)
    return [size_band_label(b) for b in sorted({size_band(n) for n in sizes})]


def assign_groups(group_counts, ratios, seed, strata=None):
    """Bin index (0..len(ratios)-1) of each group; `group_counts` holds a row of per-class image
    counts per group, `strata` an optional extra stratum value per group (a string; --stratify-by)."""
    counts = np.asarray(group_counts, dtype=np.float64)
    n_groups = counts.shape[0]
    ratios = np.asarray(ratios, dtype=np.float64) / float(sum(ratios))
    active = [b for b in range(len(ratios)) if ratios[b] > 0]
    rng = np.random.default_rng(seed)
    sizes = counts.sum(axis=1)
    major = counts.argmax(axis=1) if n_groups else np.zeros(0, dtype=int)
    extra = [""] * n_groups if strata is None else [str(s) for s in strata]
    cells = {}
    for g in range(n_groups):
        cells.setdefault((int(major[g]), size_band(sizes[g]), extra[g]), []).append(g)
    assignment = np.full(n_groups, -1, dtype=int)
    for c in sorted({key[0] for key in cells}):
        keys = sorted(key for key in cells if key[0] == c)
        order = [g for k in rng.permutation(len(keys)) for g in np.asarray(cells[keys[k]])[
            rng.permutation(len(cells[keys[k]]))]]
        deal = Dealer(ratios, active, rng)
        for g in order:
            assignment[g] = deal(sizes[g])
    alloc = np.zeros((len(ratios), counts.shape[1]))
    for g in range(n_groups):
        alloc[assignment[g]] += counts[g]
    repair_empty_bins(counts, assignment, alloc, active)
    return assignment


class Dealer:
    """Deals items of a size to the bin furthest below its ratio of everything dealt so far,
    starting at a random point of the cycle (RANDOM_START one-unit items dealt first, at most)."""

    RANDOM_START = 1000

    def __init__(self, ratios, active, rng):
        self.ratios, self.active, self.rng = ratios, active, rng
        self.dealt, self.taken = 0.0, np.zeros(len(ratios))
        for _ in range(int(rng.integers(self.RANDOM_START))):
            self(1.0, random_ties=False)

    def __call__(self, size, random_ties=True):
        self.dealt += size
        deficit = {b: self.ratios[b] * self.dealt - self.taken[b] for b in self.active}
        most = max(deficit.values())
        candidates = [b for b in self.active if deficit[b] >= most - TIE]
        chosen = candidates[0] if len(candidates) == 1 or not random_ties else int(self.rng.choice(candidates))
        self.taken[chosen] += size
        return chosen


def repair_empty_bins(counts, assignment, alloc, active):
    """Give every class with at least one group per bin a group in each bin (in place)."""
    for c in range(counts.shape[1]):
        groups_of_c = [g for g in range(len(counts)) if counts[g, c] > 0]
        if len(groups_of_c) < len(active):
            continue
        for b in active:
            if alloc[b, c] > 0:
                continue
            donor = max(active, key=lambda d: (alloc[d, c], -d))
            candidates = [g for g in groups_of_c if assignment[g] == donor]
            if len(candidates) < 2:
                continue
            g = min(candidates, key=lambda g: (counts[g].sum(), g))
            assignment[g] = b
            alloc[donor] -= counts[g]
            alloc[b] += counts[g]


def class_share_deviation(group_counts, assignment, ratios, names, class_names):
    """{class: {bin name: share of the class's images in the bin minus the bin's ratio}} and the
    largest absolute deviation: how close the split came to the ratios, for partition.json."""
    counts = np.asarray(group_counts, dtype=np.float64)
    ratios = np.asarray(ratios, dtype=np.float64) / float(sum(ratios))
    totals = counts.sum(axis=0)
    deviation, largest = {}, 0.0
    for c, name in enumerate(class_names):
        if totals[c] == 0:
            continue
        per_bin = {}
        for b, bin_name in enumerate(names):
            share = counts[assignment == b, c].sum() / totals[c]
            per_bin[bin_name] = round(float(share - ratios[b]), 4)
            largest = max(largest, abs(per_bin[bin_name]))
        deviation[name] = per_bin
    return deviation, round(largest, 4)
