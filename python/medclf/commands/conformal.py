"""medclf conformal: split conformal prediction sets (logic in medclf.evaluate.conformal)."""

HELP = "prediction sets with guaranteed coverage: calibrate on predictions_val.json, apply to predictions_test.json"
DESCRIPTION = (
    "Split conformal prediction: nonconformity scores of the validation images at their true class give a "
    "threshold so that each test image's set of classes contains its true class with probability >= 1 - alpha "
    "(exchangeable images). Writes <run>/conformal_<method>_a<alpha>[_mondrian]/predictions_test.json (the test "
    "predictions plus 'prediction_sets') and conformal.json (coverage with its Clopper-Pearson interval, mean "
    "set size, per class). See docs/report.md."
)


def add_arguments(parser):
    parser.add_argument("--run", required=True, help="folder with predictions_val.json and predictions_test.json "
                        "(a run, or <run>/calibrated_<method>)")
    parser.add_argument("--alpha", type=float, default=0.1, help="miscoverage rate: sets cover with probability >= 1 - alpha")
    parser.add_argument("--method", default="lac", choices=["lac", "aps", "raps"],
                        help="lac: 1 - p(y), smallest sets; aps/raps: adaptive sets (raps: lambda 0.01, k_reg 1)")
    parser.add_argument("--mondrian", choices=["class"], help="class: one threshold per true class (coverage per class)")
    parser.add_argument("--allow-empty", dest="allow_empty", action="store_true",
                        help="keep empty sets (default: an empty set gets the top class, which only adds coverage)")
    parser.add_argument("--out", help="output folder (default: <run>/conformal_<method>_a<alpha>[_mondrian])")


def run(args):
    from medclf.evaluate.conformal import run_conformal

    for path in run_conformal(args.run, args.alpha, args.method, args.mondrian, args.allow_empty, args.out):
        print(path)
    return 0
