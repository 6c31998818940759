"""medclf report: metrics with intervals, operating points and plots of a run (logic in medclf.evaluate.report)."""

HELP = ("score a run's predictions (R: pROC, exact intervals); writes results_<split>.json, report_<split>.md "
        "and plots named by split")
DESCRIPTION = (
    "Read results/NAME/predictions_<split>.json and report sensitivity, specificity, PPV, NPV, accuracy, F1, "
    "balanced accuracy (Clopper-Pearson), ROC-AUC (DeLong), average precision and Cohen's kappa; per-class and "
    "macro metrics for multi-class runs; operating points. Outputs are named by split (and --tag): "
    "results_<split>[_<tag>].json, report_<split>[_<tag>].md, roc_<split>[_<tag>].png, ... The numbers come from "
    "R/report.R through rpy2, else Rscript, else the pure-Python fallback; the report names the engine that ran. "
    "See docs/report.md."
)


def add_arguments(parser):
    parser.add_argument("--run", required=True, help="run folder with predictions_<split>.json (results/NAME)")
    parser.add_argument("--split", default="test", choices=["train", "val", "test"],
                        help="which predictions to score; also names the outputs (default: test)")
    parser.add_argument("--tag", help="extra name for the outputs, so reports of one split live side by side "
                                      "(e.g. --group ... --tag grouped writes report_test_grouped.md)")
    parser.add_argument("--positive", help="positive class (default: the run's positive_class)")
    parser.add_argument("--threshold", type=float, help="fixed threshold on P(positive) (default 0.5)")
    parser.add_argument("--threshold-rule", dest="threshold_rule",
                        help="choose the threshold on predictions_val.json: youden | sensitivity:0.95 | specificity:0.9 "
                             "(used on --split val, the estimates are marked optimistic)")
    parser.add_argument("--group", help="clinical grouping of a multi-class run, e.g. malignant=mel,bcc,akiec")
    parser.add_argument("--level", default="image", choices=["image", "group"],
                        help="image: one prediction per image; group: one per group of splits.csv (patient, lesion, "
                             "duplicate cluster), written as predictions_<split>_group-<reduce>.json and reported "
                             "with the tag group-<reduce> unless --tag (default: image)")
    parser.add_argument("--group-reduce", dest="group_reduce", default="mean", choices=["mean", "max"],
                        help="with --level group: mean of the images' probabilities, or the image with the highest "
                             "probability of the positive class (default: mean)")
    parser.add_argument("--engine", default="auto", choices=["auto", "rpy2", "rscript", "python"],
                        help="auto tries rpy2, then Rscript, then Python")
    parser.add_argument("--prevalence", type=float, default=None,
                        help="decision curve: the population's prevalence of the positive class where the test split's "
                             "differs (an enriched or case-control test set); default: the test split's")
    parser.add_argument("--by", type=lambda text: text.split(","), default=None, metavar="COL[,COL...]",
                        help="subgroup analysis by these splits.csv columns (e.g. sex,localization): each subgroup's "
                             "AUC, sensitivity, specificity and calibration intercept with intervals, a heterogeneity "
                             "test and forest_<split>.png; binary reports")
    parser.add_argument("--bands", action="append", default=None, metavar="COL=EDGES",
                        help="cut a numeric --by column into bands, e.g. age=0,30,50,70 (repeat for several)")
    parser.add_argument("--boot", type=int, default=0, help="bootstrap resamples for percentile intervals (0 = none)")
    parser.add_argument("--seed", type=int, default=1, help="bootstrap seed")
    parser.add_argument("--no-plots", dest="plots", action="store_false", help="skip the PNG plots")
    parser.add_argument("--allow-uncalibrated", action="store_true",
                        help="report threshold metrics on scores that are not calibrated probabilities (a rank "
                             "ensemble, `medclf ensemble --method rank`); refused without it")


def run(args):
    from medclf.evaluate.formatting import estimate_with_interval
    from medclf.evaluate.report import report_run

    out = report_run(args.run, args.split, args.positive, args.threshold, args.threshold_rule, args.group,
                     args.engine, args.boot, args.seed, args.plots, args.tag, args.allow_uncalibrated, args.level,
                     args.group_reduce, args.prevalence, args.by, args.bands)
    result = out["result"]
    headline = ["roc_auc", "sensitivity", "specificity"] if result["task"] == "binary" else \
        ["macro_auc", "balanced_accuracy", "cohen_kappa"]
    summary = ", ".join(f"{name} {estimate_with_interval(result['metrics'][name])}" for name in headline)
    print(f"engine {result['engine']['route']}: {summary}")
    if result.get("uncalibrated_scores"):
        print(f"warning: {result['uncalibrated_scores']}")
    if result.get("threshold_optimistic"):
        print(f"warning: {result['threshold_optimistic']}")
    print(out["results"])
    print(out["report"])
    return 0
