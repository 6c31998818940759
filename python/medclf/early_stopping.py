"""Early stopping on a monitored validation value: a pure class, no torch.

`step(value)` returns True when `value` improves on the best so far by more than `min_delta`
(lower for mode "min", higher for "max"). After `patience` consecutive epochs without such an
improvement `should_stop` is True. The first epoch is always an improvement, and counting starts
from the best epoch whichever it is, so a best first epoch is followed by exactly `patience`
more epochs (the seed script stopped one epoch early in that case).
"""

import math

MONITOR_MODES = {"val_loss": "min", "val_auc": "max", "val_balanced_accuracy": "max", "val_accuracy": "max"}


class EarlyStopping:
    def __init__(self, patience=5, mode="min", min_delta=0.0):
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', not {mode!r}")
        if patience < 1:
            raise ValueError("patience must be at least 1")
        self.patience = int(patience)
        self.mode = mode
        self.min_delta = float(min_delta)
        self.best = None
        self.best_epoch = None
        self.bad_epochs = 0
        self.epochs_seen = 0

    def _better(self, value):
        if self.best is None:
            return True
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def step(self, value):
        """Record one epoch's monitored value; True if it is the new best."""
        self.epochs_seen += 1
        value = float(value)
        if not math.isnan(value) and self._better(value):
            self.best = value
            self.best_epoch = self.epochs_seen
            self.bad_epochs = 0
            return True
        self.bad_epochs += 1
        return False

    @property
    def should_stop(self):
        return self.bad_epochs >= self.patience

    def state_dict(self):
        return {"patience": self.patience, "mode": self.mode, "min_delta": self.min_delta, "best": self.best,
                "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs, "epochs_seen": self.epochs_seen}

    def load_state_dict(self, state):
        for key in ("patience", "mode", "min_delta", "best", "best_epoch", "bad_epochs", "epochs_seen"):
            setattr(self, key, state[key])
