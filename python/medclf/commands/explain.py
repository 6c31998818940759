"""medclf explain: heat maps of a run on a split, with faithfulness checks (logic in medclf.explain.run)."""

from medclf.commands.compute import add_compute_arguments, apply_threads

HELP = "heat maps (Grad-CAM & co., Captum) of a run's best.pt on a split; overlays, contact sheet, explain.json"
DESCRIPTION = (
    "Explain the predictions in results/NAME/predictions_<split>.json (run `medclf test` first): one overlay "
    "PNG per image, a contact sheet grouped by TP/FP/FN/TN (binary) or by true class, deletion/insertion "
    "curves against a random pixel order, and the cascading-randomisation sanity check of Adebayo et al. "
    "(a method whose maps survive randomising the whole model is flagged). See docs/explain.md."
)


def add_arguments(parser):
    from medclf.explain.methods import METHODS

    parser.add_argument("--run", required=True, help="run folder written by `medclf train` (results/NAME)")
    parser.add_argument("--split", default="test", choices=["train", "val", "test"])
    parser.add_argument("--method", default="gradcam", choices=METHODS,
                        help="CAM methods via pytorch-grad-cam; ig, saliency, occlusion via Captum")
    parser.add_argument("--n", type=int, default=24, help="images to explain, taken in turn from each group")
    parser.add_argument("--paths", nargs="+", help="explain these images (paths as in splits.csv) instead")
    parser.add_argument("--target", default="predicted",
                        help="class explained: predicted, true, or a class name (default: predicted)")
    parser.add_argument("--target-layer", dest="target_layer",
                        help="module name for CAM methods, e.g. layer4 (default: from the architecture table)")
    parser.add_argument("--out", help="output folder (default: RUN/explain/SPLIT/METHOD)")
    parser.add_argument("--steps", type=int, default=16, help="deletion/insertion steps")
    parser.add_argument("--no-faithfulness", dest="faithfulness", action="store_false",
                        help="skip the deletion/insertion curves")
    parser.add_argument("--no-sanity-check", dest="sanity", action="store_false",
                        help="skip the cascading-randomisation sanity check")
    parser.add_argument("--sanity-threshold", type=float, default=0.5,
                        help="fail when maps of the fully randomised model still have this rank correlation")
    parser.add_argument("--seed", type=int, default=0, help="seed of the randomisation and the random order")
    add_compute_arguments(parser, amp_default="as the run was trained; applies to the deletion/insertion forward "
                                              "passes, the maps are computed in fp32")


def run(args):
    from medclf.explain.run import run_explain

    apply_threads(args)
    summary_path, sheet, summary = run_explain(
        args.run, args.split, args.method, args.n, args.paths, args.target, args.target_layer, args.out,
        args.device, args.faithfulness, args.sanity, args.sanity_threshold, args.steps, args.seed, args.progress,
        amp=args.amp)
    f, s = summary["faithfulness"], summary["sanity_check"]
    if f:
        print(f"deletion area {f['map']['deletion_auc']:.3f} (random {f['random']['deletion_auc']:.3f}), "
              f"insertion area {f['map']['insertion_auc']:.3f} (random {f['random']['insertion_auc']:.3f})")
    if s:
        print(f"sanity check {'passed' if s['passed'] else 'FAILED'}: rank correlation with the randomised "
              f"model {s['final_rank_correlation']:.3f} (threshold {s['threshold']})")
    print(sheet)
    print(summary_path)
    return 0
