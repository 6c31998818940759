"""medclf probe: a linear probe on embeddings, written as predictions files (logic in medclf.infer.probe)."""

HELP = "logistic regression or linear SVM on `medclf embed` embeddings; writes predictions_{val,test}.json"
DESCRIPTION = (
    "Fit StandardScaler + logistic regression or a linear SVM on the train rows of an embeddings file, choose C "
    "on the val rows (mean one-vs-rest ROC-AUC), map decision values to probabilities (Platt scaling fitted on "
    "val; multi-class logreg: its softmax; multi-class SVM: one-vs-rest Platt, renormalised) and write "
    "predictions_val.json, predictions_test.json and probe.json into OUT, so `medclf report --run OUT` and "
    "`medclf compare` work unchanged. See docs/derm_models.md."
)


def _grid(text):
    import argparse

    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text}: expected numbers separated by commas, e.g. 0.01,0.1,1") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"{text}: C values must be positive")
    return values


def add_arguments(parser):
    from medclf.infer.probe import DEFAULT_GRID, MODELS

    parser.add_argument("--embeddings", required=True, help=".npz written by `medclf embed`")
    parser.add_argument("--model", default="logreg", choices=MODELS)
    parser.add_argument("--C", dest="grid", type=_grid, default=list(DEFAULT_GRID),
                        help="C value(s) to choose from on val, comma-separated (default: 1e-6,1e-5,...,100)")
    parser.add_argument("--class-weight", dest="class_weight", default="none", choices=["none", "balanced"],
                        help="balanced: weights inversely proportional to the train class frequencies")
    parser.add_argument("--seed", type=int, default=0, help="seed of the linear SVM's coordinate descent")
    parser.add_argument("--out", required=True, help="folder for predictions_val.json, predictions_test.json, probe.json")


def run(args):
    from medclf.infer.probe import run_probe

    summary = run_probe(args.embeddings, args.out, args.model, args.grid,
                        None if args.class_weight == "none" else args.class_weight, args.seed)
    best = next(row for row in summary["grid"] if row["C"] == summary["C"])
    print(f"{args.model}: C = {summary['C']:g} (val score {best['val_score']:.3f}), {summary['calibration']['method']}")
    for split in ("val", "test"):
        print(f"{args.out}/predictions_{split}.json")
    return 0
