"""medclf test: predictions of a run's best checkpoint (logic in medclf.infer.predict)."""

from medclf.commands.compute import add_compute_arguments, apply_threads

HELP = "predict a split with a run's best.pt; writes predictions_<split>.json (and predictions_val.json)"
DESCRIPTION = (
    "Load results/NAME/best.pt safely (torch.load(weights_only=True)) and write "
    "predictions_<split>.json (medclf.predictions/1) for the run's own split (the copy of splits.csv "
    "that `medclf train` keeps in the run folder). Testing on `test` also writes "
    "predictions_val.json, for choosing thresholds on validation."
)


def add_arguments(parser):
    parser.add_argument("--run", required=True, help="run folder written by `medclf train` (results/NAME)")
    parser.add_argument("--split", default="test", choices=["train", "val", "test"])
    parser.add_argument("--splits", help="another splits file to score (default: the run's own copy, <run>/splits.csv); "
                        "images the run trained or selected on are refused, also copies of them under other names "
                        "(by content)")
    parser.add_argument("--external", metavar="NAME",
                        help="with --splits: external validation on another dataset (another site, scanner): score "
                             "its --split into <run>/external_NAME/ (the run's own predictions stay), with a copy of "
                             "the splits file; `medclf report --run <run>/external_NAME` marks the result external")
    parser.add_argument("--data-root", help="image root (default: the run's)")
    parser.add_argument("--batch-size", type=int, help="default: the run's")
    parser.add_argument("--use_GPU", "-use_GPU", dest="use_gpu", action="store_true", help="alias of --device cuda")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--quality-gate", dest="quality_gate", metavar="QUALITY_JSON",
                        help="quality.json from `medclf quality`: mark each prediction 'passed' or "
                             "'rejected: reason' (field `quality`; no row is dropped)")
    parser.add_argument("--mc-dropout", dest="mc_dropout", type=int, default=0, metavar="K",
                        help="K stochastic passes with dropout on (architectures with dropout only): probabilities "
                             "= their mean, plus per-image predictive entropy and mutual information; written to "
                             "<run>/mc_dropout_K/")
    parser.add_argument("--tta", default="none", metavar="none|hflip|flips|dihedral|K",
                        help="test-time augmentation: mean of the softmax probabilities over the views (hflip: 2, "
                             "flips: 4, dihedral: the 8 flips and rotations, K: the first K of those); the views go "
                             "into the file's model.tta; written to <run>/tta_<name>/ (default: none)")
    add_compute_arguments(parser, amp_default="as the run was trained (fp32 if trained with --no-amp, else on where "
                                              "supported)")


def run(args):
    from medclf.infer.predict import run_test

    apply_threads(args)
    written = run_test(args.run, args.split, args.splits, args.data_root,
                       "cuda" if args.use_gpu else args.device, args.batch_size, args.workers, args.progress,
                       mc_dropout=args.mc_dropout, tta=args.tta, amp=args.amp, external=args.external)
    if args.quality_gate:
        from medclf.quality.gate import gate_predictions

        gate_predictions(args.run, written, args.quality_gate, args.data_root, args.progress)
    for path in written:
        print(path)
    return 0
