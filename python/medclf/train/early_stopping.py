"""Early stopping on a monitored validation value: a pure class, no torch.

`step(value)` returns True when `value` improves on the best so far by more than `min_delta`
(lower for mode "min", higher for "max"). After `patience` consecutive epochs without such an
improvement `should_stop` is True. The first epoch is always an improvement, and counting starts
from the best epoch whichever it is, so a best first epoch is followed by exactly `patience`
more epochs (the seed script stopped one epoch early in that case).

`count_from`: epochs up to this one never count towards the patience (improvements are still
recorded), so a warm-up, whose rising learning rate often makes the validation value worse, cannot
end a run before its schedule has started to anneal; `patience_count_from(config)` is the rule
medclf's training uses (docs/training.md, "EMA and SWA").
"""

import math

MONITOR_MODES = {"val_loss": "min", "val_auc": "max", "val_balanced_accuracy": "max", "val_accuracy": "max"}


class EarlyStopping:
    def __init__(self, patience=5, mode="min", min_delta=0.0, count_from=0):
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', not {mode!r}")
        if patience < 1:
            raise ValueError("patience must be at least 1")
        self.patience = int(patience)
        self.mode = mode
        self.min_delta = float(min_delta)
        self.count_from = int(count_from)
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
        if self.epochs_seen > self.count_from:
            self.bad_epochs += 1
        return False

    @property
    def should_stop(self):
        return self.bad_epochs >= self.patience

    def state_dict(self):
        return {"patience": self.patience, "mode": self.mode, "min_delta": self.min_delta, "best": self.best,
                "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs, "epochs_seen": self.epochs_seen,
                "count_from": self.count_from}

    def load_state_dict(self, state):
        for key in ("patience", "mode", "min_delta", "best", "best_epoch", "bad_epochs", "epochs_seen"):
            setattr(self, key, state[key])
        self.count_from = int(state.get("count_from", 0))  # last.pt of a run trained before count_from


def warmup_epochs(config):
    """Epochs of the learning-rate warm-up of a run's schedule (`config`: training arguments):
    --warmup-epochs for cosine, --warmup-fraction of --epochs rounded up for warmup-cosine, else 0."""
    scheduler = config.get("scheduler") or "none"
    if scheduler == "cosine":
        return int(config.get("warmup_epochs") or 0)
    if scheduler == "warmup-cosine":
        fraction = 0.1 if config.get("warmup_fraction") is None else float(config["warmup_fraction"])
        return math.ceil(round(fraction * int(config["epochs"]), 9))
    return 0


def patience_count_from(config):
    """The last epoch that does not count towards the patience (EarlyStopping's `count_from`):
    - --patience-start warmup (the default): the schedule's warm-up epochs (0 without a warm-up);
    - --patience-start N: epoch N;
    - with --swa-epochs every epoch: the run trains all --epochs, its last ones are the average."""
    if int(config.get("swa_epochs") or 0) > 0:
        return int(config["epochs"])
    start = config.get("patience_start", "warmup")
    return warmup_epochs(config) if start in (None, "warmup") else int(start)


def stopped_by_patience(best_flags, patience, count_from=0):
    """Whether a run whose epochs had these `best` flags (history.csv's column, epoch 1 first) had
    used up its patience: the epochs after the last best one that count (after `count_from`)."""
    last_best = max((i for i, best in enumerate(best_flags, start=1) if best), default=0)
    counted = sum(1 for epoch in range(last_best + 1, len(best_flags) + 1) if epoch > count_from)
    return counted >= patience
