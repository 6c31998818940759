"""Run `medclf sweep ...` and SIGKILL the process after N saved epochs over all its trials (a fault
injected from outside medclf, for the sweep resume test):

    python sweep_killed_after_epochs.py N sweep STUDY.yaml --trials 3 ...

The wrapper replaces medclf.train.training.save_epoch with one that calls the real function and kills the
process after the Nth call: the trial then running has a last.pt and the storage still says it runs.
"""

import os
import signal
import sys

from medclf import cli
from medclf.train import training


def main():
    limit = int(sys.argv[1])
    real_save_epoch = training.save_epoch
    saved = {"epochs": 0}

    def save_epoch(trainer, row):
        real_save_epoch(trainer, row)
        saved["epochs"] += 1
        if saved["epochs"] >= limit:
            os.kill(os.getpid(), signal.SIGKILL)

    training.save_epoch = save_epoch
    return cli.main(sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
