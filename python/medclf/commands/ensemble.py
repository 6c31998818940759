"""medclf ensemble: combine runs' predictions of the same images (logic in medclf.evaluate.ensemble)."""

HELP = "combine runs' predictions of the same images (mean, weighted, rank) into one predictions file"
DESCRIPTION = (
    "Read each member's predictions_<split>.json (run folders or predictions files), join them by image path "
    "(members must predict the same images; a mismatch names the missing paths) and write OUT/predictions_<split>.json "
    "(medclf.predictions/1, its \"model\" lists the members and weights), predictions_val.json of the same ensemble "
    "when every member has one, and ensemble.json. report, compare and the R scripts read it like any run. "
    "--method weighted fits its weights on the members' predictions_val.json only (never on the split being "
    "combined) unless --weights gives them. --method rank (two classes) averages ranks: for ROC-AUC only, the "
    "scores are not calibrated and `medclf report` refuses them without --allow-uncalibrated. See docs/sweep.md."
)


def add_arguments(parser):
    parser.add_argument("members", nargs="+", metavar="RUN_OR_PREDICTIONS",
                        help="run folders (results/NAME) or predictions_<split>.json files")
    parser.add_argument("--method", default="mean", choices=["mean", "weighted", "rank"],
                        help="mean of probabilities; weighted mean (weights fitted on val predictions, or "
                             "--weights); mean normalised rank (binary, ROC-AUC only)")
    parser.add_argument("--weights", nargs="+", type=float, metavar="W",
                        help="one weight per member, in order (normalised to sum 1); --method weighted only")
    parser.add_argument("--split", default="test", choices=["train", "val", "test"],
                        help="which predictions to combine")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="folder for the ensemble's predictions (use it as a run folder: medclf report --run DIR)")


def run(args):
    from medclf.evaluate.ensemble import run_ensemble

    for path in run_ensemble(args.members, args.method, args.weights, args.split, args.out):
        print(path)
    return 0
