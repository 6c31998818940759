"""medclf embed: penultimate-layer embeddings of every image of a splits file (logic in medclf.infer.embed)."""

from medclf.commands.compute import add_compute_arguments, apply_threads

HELP = "penultimate-layer embeddings of every image (paths, splits, labels) in one .npz, for `medclf probe`"
DESCRIPTION = (
    "Run a model without its classifier head over every image of a splits file and write one .npz: embeddings "
    "(N, D), paths, splits, labels, classes and a JSON meta record. The model is a run's best.pt (--run; its own "
    "split unless --splits) or a torchvision architecture with weights (--arch A --weights imagenet|PATH "
    "--splits S). See docs/derm_models.md."
)


def add_arguments(parser):
    parser.add_argument("--run", help="run folder written by `medclf train` (results/NAME)")
    parser.add_argument("--arch", help="instead of --run: a torchvision architecture (with --weights, --splits)")
    parser.add_argument("--weights", default="none", help="with --arch: none | imagenet | PATH to a state dict")
    parser.add_argument("--splits", help="splits.csv to embed (default with --run: the run's own split)")
    parser.add_argument("--data-root", help="folder the splits paths are relative to (default: partition.json's)")
    parser.add_argument("--img-size", type=int, default=224, help="with --arch: square input size in pixels")
    parser.add_argument("--out", required=True, help="the .npz file to write")
    parser.add_argument("--batch-size", type=int, default=64)
    add_compute_arguments(parser, amp_default="off (fp32 embeddings)")


def run(args):
    from medclf.infer.embed import run_embed

    apply_threads(args)
    meta = run_embed(args.out, args.run, args.arch, args.weights, args.splits, args.data_root, args.img_size,
                     args.device, args.batch_size, args.progress, bool(args.amp))
    print(f"{meta['dim']}-d embeddings of {meta['architecture']}")
    print(args.out)
    return 0
