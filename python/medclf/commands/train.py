"""medclf train: train a torchvision classifier on a splits.csv (logic in medclf.train.training)."""

HELP = "train a torchvision classifier on splits.csv; writes results/<run>/ (best.pt, last.pt, history)"
DESCRIPTION = (
    "Train any torchvision classification model on the train split, select it on the val split "
    "(early stopping restores the best weights) and write a run folder: config.json, history.csv, "
    "best.pt, last.pt, curves.png. A killed run continues with --resume (same --out/--run-name)."
)


def add_arguments(parser):
    from medclf.commands.compute import add_compute_arguments
    from medclf.train.recipes import RECIPES  # no torch: --help stays fast

    data = parser.add_argument_group("data")
    data.add_argument("--splits", help="splits.csv from `medclf partition` (or a seed split file/folder)")
    data.add_argument("--data-root", help="folder the splits paths are relative to (default: partition.json's)")
    data.add_argument("--img-size", type=int, help="square input size in pixels (default 224)")
    data.add_argument("--augment", metavar="PRESET[+STEP]",
                      help="augmentation of the train split: preset none|flip|flips|standard|lesion, optionally "
                           "+hair (synthetic hair, e.g. flips+hair), +trivialaugment, +randaugment (torchvision's "
                           "policies, e.g. flips+trivialaugment); lesion-hair = lesion+hair "
                           "(see docs/training.md, docs/derm_models.md); default none")
    data.add_argument("--balance", default="none", choices=["none", "sampler", "loss-weights", "focal"],
                      help="class-imbalance handling, computed from the train split only")
    data.add_argument("--focal-gamma", type=float, default=2.0, help="focal loss gamma")
    data.add_argument("--focal-alpha", default=None,
                      help="focal loss alpha: positive-class weight in (0,1) for binary studies, or `balanced`")
    data.add_argument("--label-smoothing", type=float, default=None, metavar="EPS",
                      help="label smoothing of the training loss (val/test loss unsmoothed); not with --balance "
                           "focal; default 0 (off), e.g. 0.1")
    data.add_argument("--mixup-alpha", type=float, default=None, metavar="A",
                      help="mixup of training batches, lam ~ Beta(A, A); default 0 (off), e.g. 0.2")
    data.add_argument("--cutmix-alpha", type=float, default=None, metavar="A",
                      help="cutmix of training batches, box area from lam ~ Beta(A, A); default 0 (off), e.g. 1.0")
    data.add_argument("--mix-prob", type=float, default=None, metavar="P",
                      help="probability that a training batch is mixed (mixup or cutmix, 1/2 each when both "
                           "alphas are above 0); default 1.0")
    data.add_argument("--cache", default="auto", choices=["auto", "memory", "disk"],
                      help="decoded-image cache: memory, or disk: a memory-mapped file shared by the processes "
                           "of a run and by later runs on the same images and size; auto = disk above 1 GiB "
                           "or with several processes")
    data.add_argument("--cache-dir", default=None,
                      help="folder of the disk caches (default: OUT/image-cache); one cache per file contents "
                           "and preprocessing")
    data.add_argument("--cache-workers", default="auto",
                      help="processes decoding images into a disk cache; auto = one per CPU core, at most 8")
    data.add_argument("--workers", default="auto",
                      help="DataLoader worker processes; auto = 1 for standard/lesion augmentation, else 0 "
                           "(measured on 2 cores, see docs/training.md)")
    model = parser.add_argument_group("model")
    model.add_argument("--arch", default="resnet18",
                       help="any torchvision classification model (resnet18, vgg11_bn, densenet121, "
                            "efficientnet_b0, ...); aliases vgg, densenet")
    model.add_argument("--weights", help="none | imagenet | PATH to a state dict (default none)")
    model.add_argument("--freeze-backbone", action="store_true", help="train the classifier head only")
    model.add_argument("--head", default="softmax", choices=["softmax", "single-logit"],
                       help="K logits with cross-entropy, or one logit with BCEWithLogits (binary)")
    model.add_argument("--metadata-features", metavar="COL,COL",
                       help="splits.csv columns fused with the image (e.g. age,sex,localization): numbers "
                            "standardised + a missing indicator, categories one-hot + a missing level, fitted on "
                            "the train split; test and explain then need the same columns (docs/derm_models.md)")
    model.add_argument("--allow-feature", action="append", metavar="COL",
                       help="accept a --metadata-features column refused for leaking the label (e.g. dx_type); "
                            "repeat for several")
    opt = parser.add_argument_group("optimisation (a --recipe sets several; an option given here wins over it)")
    opt.add_argument("--recipe", choices=list(RECIPES),
                     help="named set of the options below (medclf/recipes.py, docs/recipes.md): plain = the "
                          "defaults; cpu-small = from scratch at 64 px on a CPU; gpu-imagenet = fine-tuning ImageNet "
                          "weights at 224 px; values provisional until measured")
    opt.add_argument("--epochs", type=int, help="maximum number of epochs (default 50)")
    opt.add_argument("--patience", type=int, help="epochs without improvement before stopping (default 5)")
    opt.add_argument("--patience-start", metavar="warmup|N",
                     help="epochs up to this one never count towards --patience: warmup (default) = the schedule's "
                          "warm-up epochs (0 without one), or a number of epochs (docs/training.md)")
    opt.add_argument("--min-delta", type=float, default=0.0, help="smallest change that counts as improvement")
    opt.add_argument("--monitor", default="val_loss", choices=["val_loss", "val_auc", "val_balanced_accuracy"],
                     help="validation value for early stopping and best.pt")
    opt.add_argument("--lr", type=float, help="learning rate (default 1e-3)")
    for role, what in (("backbone", "the backbone (everything but the head and the metadata branch)"),
                       ("metadata", "the metadata branch (with --metadata-features)"), ("head", "the classifier head")):
        opt.add_argument(f"--lr-{role}", type=float, metavar="LR",
                         help=f"learning rate of {what}; default --lr (schedules scale every group alike)")
    opt.add_argument("--batch-size", type=int, help="images per batch (default 32)")
    opt.add_argument("--optimizer", choices=["adam", "adamw", "sgd"], help="default adam")
    opt.add_argument("--weight-decay", type=float, help="weight decay (default 0)")
    decay = opt.add_mutually_exclusive_group()
    decay.add_argument("--no-decay-norm-bias", dest="no_decay_norm_bias", action="store_true", default=None,
                       help="weight decay only on the weights of convolution and linear layers, not on "
                            "normalisation layers' parameters and biases (default: decay on all)")
    decay.add_argument("--decay-norm-bias", dest="no_decay_norm_bias", action="store_false", default=None,
                       help="weight decay on every parameter (the default; undoes a recipe's --no-decay-norm-bias)")
    opt.add_argument("--scheduler", choices=["none", "cosine", "plateau", "warmup-cosine"],
                     help="LR schedule; cosine and warmup-cosine step per batch (default none)")
    opt.add_argument("--warmup-epochs", type=int, help="linear warm-up epochs for --scheduler cosine (default 0)")
    opt.add_argument("--warmup-fraction", type=float,
                     help="warm-up fraction of all steps for --scheduler warmup-cosine (default 0.1)")
    opt.add_argument("--ema-decay", type=float, metavar="D",
                     help="keep an exponential moving average of the weights (updated every step), evaluated on "
                          "val each epoch; best.pt holds it when its monitored value is better; default 0 = off, "
                          "e.g. 0.999")
    opt.add_argument("--swa-epochs", type=int, metavar="N",
                     help="stochastic weight averaging of the last N epochs (BatchNorm recomputed on the train "
                          "split), kept as best.pt when better; the run then trains all --epochs; default 0 = off")
    opt.add_argument("--swa-lr", type=float, metavar="LR",
                     help="constant learning rate of the averaged epochs (default: the schedule goes on)")
    run = parser.add_argument_group("run")
    run.add_argument("--out", default="results", help="output root")
    run.add_argument("--run-name", help="run folder name under --out (default: ARCH_DATE-TIME)")
    run.add_argument("--resume", action="store_true", help="continue the run in --out/--run-name from last.pt")
    run.add_argument("--seed", type=int, default=0, help="seeds python, numpy, torch and DataLoader workers")
    run.add_argument("--deterministic", action="store_true", help="torch.use_deterministic_algorithms(True)")
    run.add_argument("--use_GPU", "-use_GPU", dest="use_gpu", action="store_true", help="alias of --device cuda")
    run.add_argument("--tensorboard", action="store_true", help="also log to <run>/tensorboard (needs tensorboard)")
    dist = parser.add_argument_group("several processes (see docs/training.md)")
    dist.add_argument("--nproc", type=int, default=1,
                      help="train with DistributedDataParallel in N processes on this machine (runs torchrun; "
                           "CPU: gloo, CUDA: one GPU each); --batch-size is per process")
    dist.add_argument("--sync-bn", action="store_true",
                      help="SyncBatchNorm: BatchNorm statistics over all processes' batches (CUDA only)")
    add_compute_arguments(parser, amp_default="on where supported")


def validate(args):
    """Check every value that needs no data or training (architecture, weights, workers, numbers);
    `medclf study` calls this for each run before the first stage, --dry-run included."""
    from medclf.train.training import config_from_arguments, resolve_config

    resolve_config(config_from_arguments(args))


def run(args):
    from medclf.core.errors import MedclfError
    from medclf.train.training import config_from_arguments, run_training

    if args.resume and not args.run_name:
        raise MedclfError("--resume needs --run-name (and the same --out) of the run to continue")
    if args.nproc > 1:
        launch_processes(args)
        return 0
    if args.nproc < 1:
        raise MedclfError(f"--nproc {args.nproc}: give a whole number of at least 1")
    summary = run_training(config_from_arguments(args))
    if summary.get("rank", 0) == 0:
        print(summary["run"])
    return 0


def launch_processes(args):
    """--nproc N: check the arguments here, name the run, and run torchrun with the same arguments."""
    import shlex

    from medclf.engine import distributed
    from medclf.train.training import config_from_arguments, resolve_config

    cfg = resolve_config(config_from_arguments(args))
    argv = distributed.without_option(args._argv, "--nproc")
    if not args.run_name:
        argv += ["--run-name", cfg["run_name"]]  # the processes must agree, and the user needs it to resume
    resume = ["medclf", "train", "--resume", "--out", str(cfg["out"]), "--run-name", cfg["run_name"],
              "--nproc", str(args.nproc)]
    distributed.launch(argv, args.nproc, shlex.join(resume))
