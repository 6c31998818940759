"""medclf calibrate: recalibrate a run's probabilities on validation (logic in medclf.evaluate.calibration)."""

HELP = "fit temperature, Platt or isotonic calibration on predictions_val.json; write calibrated predictions"
DESCRIPTION = (
    "Fit a calibration map on the run's validation predictions only (predictions_val.json), apply it to "
    "validation and test, and write <run>/calibrated_<method>/predictions_{val,test}.json in the standard "
    "medclf.predictions/1 contract (with a 'calibration' provenance block) plus calibration.json. Then "
    "`medclf report --run <run>/calibrated_<method>` shows the calibrated test metrics (Brier, ECE, slope, "
    "intercept) next to the uncalibrated report. See docs/report.md."
)


def add_arguments(parser):
    parser.add_argument("--run", required=True, help="folder with predictions_val.json and predictions_test.json")
    parser.add_argument("--method", default="temperature", choices=["temperature", "isotonic", "platt"],
                        help="temperature (one T, decisions unchanged), isotonic or platt (one-vs-rest per class)")
    parser.add_argument("--out", help="output folder (default: <run>/calibrated_<method>)")


def run(args):
    from medclf.evaluate.calibration import run_calibrate

    for path in run_calibrate(args.run, args.method, args.out):
        print(path)
    return 0
