"""medclf cv: repeated, grouped K-fold cross-validation (logic in medclf.workflows.cv)."""

HELP = "cross-validate: one run per fold and repeat, out-of-fold predictions, fold ensemble on test"
DESCRIPTION = (
    "Train one model per fold of a splits.csv written by `medclf partition --folds K [--repeats R]`: that fold "
    "is the val split (early stopping, best.pt), the other non-test images train; the test split is never used "
    "for training or selection. Writes <out>/<run-name>/: fold<k>[_r<j>]/ run folders, predictions_oof.json "
    "(every non-test image once per repeat), predictions_val.json (OOF averaged over repeats, for thresholds), "
    "predictions_test.json (mean of the fold models' probabilities), results_oof.json and report_oof.md (OOF "
    "metrics with intervals, mean and spread over folds and repeats). All folds share one decoded-image cache. "
    "Rerunning the same command resumes a killed CV (finished folds skipped, a started fold continues). Every "
    "option of `medclf train` applies to each fold. See docs/cv.md."
)


def add_arguments(parser):
    from medclf.commands import train

    train.add_arguments(parser)
    # The same options as `medclf train`; two mean something else for a whole CV.
    parser._option_string_actions["--run-name"].help = "CV folder name under --out (default: cv_ARCH)"
    parser._option_string_actions["--resume"].help = "accepted, and implied: rerunning the same command resumes"
    cv = parser.add_argument_group("cross-validation")
    cv.add_argument("--folds", default="all", metavar="all|K,K,...",
                    help="folds to train in this invocation (default: all); the CV outputs are written once every "
                         "fold is trained, so several invocations may share the folds")
    cv.add_argument("--repeats", type=int, default=None, metavar="R",
                    help="use the first R fold assignments of splits.csv (fold, fold_r1, ...; default: all of them)")
    cv.add_argument("--tta", default="none", metavar="none|hflip|flips|dihedral|K",
                    help="test-time augmentation of the fold models' predictions (as `medclf test --tta`); with "
                         "views the CV predictions go to <cv>/tta_<name>/ beside the plain ones")


def config_from_args(args):
    """The training options every fold shares (--resume is implied: a CV always resumes)."""
    config = {k: v for k, v in vars(args).items()
              if not k.startswith("_") and k not in ("command", "use_gpu", "folds", "repeats", "tta", "resume")}
    if getattr(args, "use_gpu", False):
        config["device"] = "cuda"
    return config


def validate(args):
    """Check the training options without data (`medclf study` calls this before any stage)."""
    from medclf.infer.predict import tta_views
    from medclf.train.training import resolve_config

    resolve_config(dict(config_from_args(args), run_name=args.run_name or "cv"))
    tta_views(args.tta)


def run(args):
    from medclf.workflows.cv import run_cv

    result = run_cv(config_from_args(args), args.folds, args.repeats, args.tta)
    for path in result["outputs"]:
        print(path)
    if not result["outputs"]:
        print(result["cv_dir"])
    return 0
