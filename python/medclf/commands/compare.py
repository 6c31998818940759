"""medclf compare: paired DeLong comparison of runs on the same test images (logic in medclf.evaluate.compare)."""

HELP = "compare runs on the same test images: one row per run, pairwise paired DeLong tests"
DESCRIPTION = (
    "Join the runs' predictions_<split>.json by image path (refusing different images or labels) and write "
    "compare.json (medclf.comparison/1) and compare.md: AUC with DeLong interval per run; for each pair the AUC "
    "difference with its interval, z, p and Holm-adjusted p. Runs are labelled by the shortest path suffixes "
    "that tell them apart (results/A/resnet18 vs results/B/resnet18 -> A/resnet18, B/resnet18); a run given twice "
    "is refused. Runs through R/compare_models.R (rpy2, else "
    "Rscript), else the pure-Python fallback. A run and its external_NAME/ folder (`medclf test --external`) are "
    "two independent test sets: compared side by side with the unpaired AUC difference and a recalibration hint."
)


def add_arguments(parser):
    parser.add_argument("runs", nargs="+", metavar="RUN", help="run folders (results/NAME) or predictions files")
    parser.add_argument("--split", default="test", choices=["train", "val", "test"],
                        help="compare the runs' predictions_<split>.json (default: test)")
    parser.add_argument("--out", help="folder for compare.json and compare.md (default: print the table only)")
    parser.add_argument("--positive", help="positive class (default: the runs' positive_class)")
    parser.add_argument("--group", help="clinical grouping of multi-class runs, e.g. malignant=mel,bcc,akiec")
    parser.add_argument("--threshold", type=float, help="threshold for sensitivity/specificity (default 0.5)")
    parser.add_argument("--engine", default="auto", choices=["auto", "rpy2", "rscript", "python"],
                        help="auto tries rpy2, then Rscript, then Python")


def run(args):
    from medclf.evaluate.compare import compare_runs, markdown_table

    result, written = compare_runs(args.runs, args.split, args.out, args.positive, args.group, args.threshold,
                                   args.engine)
    print(markdown_table(result), end="")
    for path in written.values():
        print(path)
    return 0
