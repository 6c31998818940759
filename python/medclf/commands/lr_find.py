"""medclf lr-find: the learning-rate range test (logic in medclf.train.lr_find)."""

import argparse
import sys

from medclf.commands import train

HELP = "learning-rate range test: loss against an exponentially growing lr; suggests --lr for train"
DESCRIPTION = (
    "Train one batch at each of --steps learning rates growing exponentially from --start-lr to --end-lr, "
    "with the model, loss, augmentation and optimiser `medclf train` builds from the same options (a train "
    "command becomes a range test by writing lr-find for train and an --out folder), and stop once the smoothed "
    "loss exceeds 4 times its best value. Writes OUT/lr_find.csv, lr_find.png and lr_find.json (the suggested "
    "--lr: a tenth of the lr at the minimum of the smoothed loss; see docs/training.md). The model starts from "
    "its initial weights and nothing is kept."
)
# train options that have no effect here: accepted (a train command line runs unchanged), not listed
_NO_EFFECT = {"epochs", "patience", "min_delta", "monitor", "scheduler", "warmup_epochs", "warmup_fraction",
              "run_name", "resume", "tensorboard", "nproc", "sync_bn", "ema_decay", "swa_epochs", "swa_lr"}


def add_arguments(parser):
    train.add_arguments(parser)
    for action in parser._actions:  # argparse has no public way to re-word an inherited option
        if action.dest in _NO_EFFECT:
            action.help = argparse.SUPPRESS
        elif action.dest == "out":
            action.help = "folder for lr_find.csv, lr_find.png and lr_find.json (an earlier test there is kept)"
    parser.set_defaults(out="results/lr-find")
    test = parser.add_argument_group("range test")
    test.add_argument("--start-lr", type=float, default=1e-7, help="first learning rate")
    test.add_argument("--end-lr", type=float, default=10.0, help="last learning rate")
    test.add_argument("--steps", type=int, default=100,
                      help="batches, one per learning rate (the train split is cycled if it has fewer)")


def run(args):
    from medclf.core.errors import MedclfError
    from medclf.train.lr_find import run_lr_find
    from medclf.train.training import config_from_arguments

    if args.nproc != 1:
        raise MedclfError(f"--nproc {args.nproc}: the range test runs in one process; drop --nproc")
    config = {k: v for k, v in config_from_arguments(args).items() if k not in ("start_lr", "end_lr", "steps")}
    record = run_lr_find(config, args.out, args.start_lr, args.end_lr, args.steps)
    suggestion = record["suggestion"]
    print(f"suggested --lr {suggestion['lr']:.2g} ({suggestion['rule']}; minimum of the smoothed loss at "
          f"{suggestion['minimum_lr']:.2g}; {record['stopped']})")
    if suggestion["note"]:
        print(f"medclf lr-find: warning: {suggestion['note']}", file=sys.stderr)
    print(args.out)
    return 0
