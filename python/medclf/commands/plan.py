"""medclf plan: how many test images an interval needs, or how wide a split's will be (logic in
medclf.evaluate.sample_size)."""

HELP = "sample size: test images for a 95%% interval of a given width, or the widths a splits file will give"
DESCRIPTION = (
    "Before collecting or training: how many test images (and positives) a 95% interval of --width needs "
    "at the --expected value of --metric (Wilson for proportions; Buderer 1996 for sensitivity and "
    "specificity with --prevalence; Hanley & McNeil 1982 for AUC; Cohen 1960 for kappa). With --splits: "
    "how wide each metric's interval will be on that split, counted in images and in groups. See docs/report.md."
)


def add_arguments(parser):
    parser.add_argument("--metric", choices=["sensitivity", "specificity", "accuracy", "auc", "kappa"],
                        help="the metric to plan for (default: none; with --splits every metric is shown)")
    parser.add_argument("--expected", type=float, default=0.85,
                        help="the value you expect the metric to have (default: %(default)s)")
    parser.add_argument("--width", type=float, help="the whole width of the 95%% interval you want, e.g. 0.1")
    parser.add_argument("--prevalence", type=float,
                        help="share of positives among the images you will enrol (sensitivity, specificity: "
                             "Buderer's total; auc, kappa: the class ratio; default: 0.5 for auc and kappa)")
    parser.add_argument("--splits", help="instead: a splits.csv whose split's interval widths to show")
    parser.add_argument("--split", default="test", choices=["train", "val", "test"],
                        help="with --splits: which split (default: %(default)s)")


def run(args):
    from medclf.core.errors import MedclfError

    if args.splits:
        from medclf.core.splits import read_splits
        from medclf.evaluate.sample_size import split_width_lines

        for line in split_width_lines(read_splits(args.splits), args.split, args.expected):
            print(line)
        return 0
    if args.metric is None or args.width is None:
        raise MedclfError("give --metric and --width (e.g. --metric auc --expected 0.85 --width 0.1), or --splits FILE")
    from medclf.evaluate.sample_size import plan

    result = plan(args.metric, args.expected, args.width, args.prevalence)
    counts = [f"{result[k]} {k[2:]}" for k in ("n_positive", "n_negative") if result[k] is not None]
    total = f"{result['n_images']} test images" if result["n_images"] is not None else ""
    print(f"{args.metric} {args.expected:g}, 95% interval {args.width:g} wide: "
          + ", ".join([t for t in [total] if t] + counts) + f" ({result['method']})")
    return 0
