"""medclf demo: the pipeline end to end on generated data (no download needed)."""

from pathlib import Path

HELP = "run the pipeline on a generated two-class MRI-like dataset (no download needed)"
DESCRIPTION = (
    "Generate a deterministic synthetic dataset (MRI-like phantoms with and without a lesion) "
    "under OUT/data, partition it into OUT/partition and organize it into OUT/organized."
)


def add_arguments(parser):
    parser.add_argument("--out", type=Path, default=Path("results/demo"), help="output folder")
    parser.add_argument("--n-per-class", type=int, default=60, help="images generated per class")
    parser.add_argument("--seed", type=int, default=0, help="seed for data generation and the split")
    parser.add_argument("--quiet", action="store_true", help="less output")


def run(args):
    from medclf.demo import run_demo

    run_demo(args.out, n_per_class=args.n_per_class, seed=args.seed, quiet=args.quiet)
    return 0
