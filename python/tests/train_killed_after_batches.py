"""Run `medclf train ...` and SIGKILL the process after N training batches (a fault injected
from outside medclf, for the --resume tests):

    python train_killed_after_batches.py N train --splits ... --run-name killed
    (torchrun ...) train_killed_after_batches.py N@R train --splits ... --run-name killed

The wrapper replaces medclf.train.training.train_one_epoch with one that hands the real function a
loader counting the batches it yields; the process kills itself when asked for batch N + 1,
that is after N batches were trained, mid-epoch, before any checkpoint of that epoch is written.
With N@R the wrapper runs as one of torchrun's training processes (the test makes the --nproc
launcher start it instead of `python -m medclf`: medclf.engine.distributed.WORKER), and only the
process of rank R kills itself.
"""

import os
import signal
import sys

from medclf import cli
from medclf.train import training


def kill_after(limit):
    real_train_one_epoch = training.train_one_epoch
    batches = {"done": 0}

    def counted(loader):
        for batch in loader:
            if batches["done"] >= limit:
                os.kill(os.getpid(), signal.SIGKILL)
            yield batch
            batches["done"] += 1

    def train_one_epoch(model, criterion, optimizer, loader, *args, **kwargs):
        return real_train_one_epoch(model, criterion, optimizer, counted(loader), *args, **kwargs)

    training.train_one_epoch = train_one_epoch


def main():
    spec = sys.argv[1]
    limit, _, rank = spec.partition("@")
    if not rank or os.environ.get("RANK") == rank:
        kill_after(int(limit))
    return cli.main(sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
