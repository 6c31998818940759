"""Groups to splits at random within strata (medclf.prepare.assignment): a group's chance of landing
in test must not depend on its size, class shares stay near the ratios, and the old greedy
assignment (kept below as the reference that fails) sends multi-image groups to train."""

import numpy as np
import pytest

from medclf.prepare.assignment import ASSIGNMENT, assign_groups, class_share_deviation, outdated_assignment, size_band

RATIOS = [0.65, 0.15, 0.2]
SEEDS = range(200)


def greedy_largest_first(group_counts, ratios, seed):
    """medclf's assignment before issue 22, for comparison: largest group first, to the bin whose
    per-class allocation comes closest to its targets."""
    counts = np.asarray(group_counts, dtype=np.float64)
    ratios = np.asarray(ratios) / sum(ratios)
    targets, scale = np.outer(ratios, counts.sum(0)), np.maximum(counts.sum(0), 1)
    tie = np.random.default_rng(seed).permutation(len(counts))
    alloc, out = np.zeros_like(targets), np.zeros(len(counts), dtype=int)
    for g in sorted(range(len(counts)), key=lambda g: (-counts[g].sum(), tie[g])):
        cost = [(((alloc[b] + counts[g] - targets[b]) / scale) ** 2 - ((alloc[b] - targets[b]) / scale) ** 2).sum()
                for b in range(len(ratios))]
        out[g] = int(np.argmin(cost))
        alloc[out[g]] += counts[g]
    return out


@pytest.fixture(scope="module")
def population():
    """400 groups of 1 to 6 images, 30 % positive; a column ("histology") that multi-image groups
    have far more often (80 % against 30 %), as HAM10000's dx_type does."""
    rng = np.random.default_rng(2024)
    sizes = rng.choice([1, 2, 3, 4, 6], 400, p=[0.6, 0.2, 0.1, 0.05, 0.05])
    positive = rng.random(400) < 0.3
    counts = np.zeros((400, 2))
    counts[np.arange(400), positive.astype(int)] = sizes
    histology = np.where(rng.random(400) < np.where(sizes > 1, 0.8, 0.3), "histo", "follow_up")
    return counts, sizes, histology


def split_mix(assignment, sizes, histology, split):
    """(share of the split's groups with several images, share of its images with histology)."""
    chosen = assignment == split
    return float(np.mean(sizes[chosen] > 1)), float(sizes[chosen & (histology == "histo")].sum() / sizes[chosen].sum())


def mean_mix(assign, population, **kwargs):
    counts, sizes, histology = population
    mixes = np.array([[split_mix(assign(counts, RATIOS, seed, **kwargs), sizes, histology, s) for s in range(3)]
                      for seed in SEEDS])
    return mixes.mean(axis=0)  # (split, [multi-image share, histology share])


def test_each_split_gets_the_populations_case_mix_and_the_old_greedy_did_not(population):
    counts, sizes, histology = population
    multi, histo = np.mean(sizes > 1), sizes[histology == "histo"].sum() / sizes.sum()
    new = mean_mix(assign_groups, population)
    assert np.abs(new[:, 0] - multi).max() < 0.02, new  # tolerance: 2 points, averaged over 200 seeds
    assert np.abs(new[:, 1] - histo).max() < 0.02, new
    old = mean_mix(lambda c, r, s: greedy_largest_first(c, r, s), population)
    assert old[2, 0] < multi - 0.1 and old[0, 0] > multi + 0.05  # the same check fails: test got the single images


def test_a_groups_chance_of_test_is_the_ratio_whatever_its_size(population):
    counts, sizes, _ = population
    in_test = np.array([assign_groups(counts, RATIOS, seed) == 2 for seed in SEEDS])
    for size in (1, 2, 6):
        assert in_test[:, sizes == size].mean() == pytest.approx(0.2, abs=0.03), size


def test_class_shares_stay_within_one_group_of_the_ratios_for_every_seed(population):
    counts, sizes, _ = population
    for seed in range(20):
        assignment = assign_groups(counts, RATIOS, seed)
        deviation, _ = class_share_deviation(counts, assignment, RATIOS, ["train", "val", "test"], ["neg", "pos"])
        for c, name in enumerate(["neg", "pos"]):
            largest_share = counts[:, c].max() / counts[:, c].sum()  # one group's worth of the class
            assert max(abs(d) for d in deviation[name].values()) <= 2 * largest_share, (seed, deviation)


def test_stratify_by_spreads_a_columns_values_in_the_ratios_for_every_seed(population):
    counts, sizes, histology = population
    for seed in range(20):
        assignment = assign_groups(counts, RATIOS, seed, strata=histology)
        for value in ("histo", "follow_up"):
            groups = histology == value
            shares = np.bincount(assignment[groups], minlength=3) / groups.sum()
            n_cells = 2 * len({size_band(s) for s in sizes[groups]})  # class x size band
            assert np.abs(shares - RATIOS).max() <= n_cells / groups.sum() + 0.01, (seed, value, shares)


def test_whole_groups_fixed_seed_and_empty_ratio():
    counts = [[5, 0], [3, 0], [1, 0], [1, 0], [0, 4], [0, 2], [0, 1], [0, 1], [0, 1], [0, 1]]
    first = assign_groups(counts, [0.5, 0.0, 0.5], seed=7)
    assert set(first.tolist()) <= {0, 2} and len(first) == len(counts)  # a zero ratio gets nothing
    assert assign_groups(counts, [0.5, 0.0, 0.5], seed=7).tolist() == first.tolist()
    assert any(assign_groups(counts, [0.5, 0.0, 0.5], seed=s).tolist() != first.tolist() for s in range(1, 10))


def test_ten_single_image_groups_per_class_give_six_two_two_within_one_group():
    counts = [[1, 0]] * 10 + [[0, 1]] * 10
    for seed in range(30):
        assignment = assign_groups(counts, [0.6, 0.2, 0.2], seed)
        for cls in (slice(0, 10), slice(10, 20)):
            per_bin = np.bincount(assignment[cls], minlength=3)
            assert np.abs(per_bin - [6, 2, 2]).max() <= 1 and per_bin.min() >= 1, (seed, per_bin)


def test_a_class_with_one_group_per_bin_gets_one_in_each():
    counts = [[1, 0], [1, 0], [1, 0], [0, 1], [0, 1], [0, 1], [0, 1]]
    for seed in range(30):
        assert sorted(assign_groups(counts, [0.8, 0.1, 0.1], seed)[:3].tolist()) == [0, 1, 2]


def test_class_share_deviation_by_hand():
    # class a: 4 images, 2 + 1 + 1 over three bins; ratios 1/2, 1/4, 1/4 -> deviations 0.
    counts = [[2, 0], [1, 0], [1, 0], [0, 3]]
    deviation, largest = class_share_deviation(counts, np.array([0, 1, 2, 0]), [2, 1, 1], ["t", "v", "s"], ["a", "b"])
    assert deviation["a"] == {"t": 0.0, "v": 0.0, "s": 0.0}
    assert deviation["b"] == {"t": 1 / 2, "v": -1 / 4, "s": -1 / 4} and largest == 1 / 2


def test_a_partition_without_the_current_method_is_outdated():
    assert outdated_assignment({"assignment": {"method": ASSIGNMENT}}) is None
    assert "greedy" in outdated_assignment({})
    assert size_band(1) == 0 and size_band(2) == 1 and size_band(4) == 2 and size_band(5) == 3
