"""`medclf lr-find`: the learning-rate range test (L. N. Smith, "Cyclical learning rates for training
neural networks", 2017; fastai's `lr_find`).

The model, loss, augmentation and optimiser are the ones `medclf train` builds from the same
arguments (training.prepare_trainer). One batch is trained at each of `steps` learning rates
that grow by a constant factor from --start-lr to --end-lr; the loss is smoothed (exponential
moving average, bias-corrected) and the test stops once the smoothed loss exceeds DIVERGE_FACTOR
times its best value. The model and optimiser are given back as they were (`restored`).

Outputs in OUT/ (written atomically):
  lr_find.csv   step, lr, loss, smoothed: one row per batch trained
  lr_find.png   loss and smoothed loss against lr (log axis), the suggestion marked
  lr_find.json  medclf.lr-find/1: the suggestion and the rule behind it, the arguments, why it stopped
"""

import contextlib
import copy
import csv
import io
import math
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from medclf.core import schemas
from medclf.core.errors import MedclfError
from medclf.core.fileio import atomic_path, write_json, write_text
from medclf.engine.steps import FP32_CPU, train_one_epoch

BETA = 0.98  # smoothing of the loss: each batch weighs 2% (fastai's default)
DIVERGE_FACTOR = 4.0  # stop once the smoothed loss is this many times its best value
SUGGESTION_RULE = "minimum/10"
SUGGESTION_WHY = (
    "a tenth of the learning rate at the minimum of the smoothed loss: at the minimum the largest rates "
    "already stop helping, a tenth of it lies on the falling part of the curve with a margin (Smith 2017; "
    "fastai's lr_min). The steepest descent is reported too but not suggested: on a few hundred images the "
    "slope of the smoothed curve is noisy and its steepest point can fall on an early bump."
)


# ---------------------------------------------------------------- pure pieces

def lr_schedule(start_lr, end_lr, steps):
    """`steps` learning rates from `start_lr` to `end_lr`, each the previous one times
    (end_lr / start_lr) ** (1 / (steps - 1))."""
    if not start_lr > 0:
        raise MedclfError(f"--start-lr {start_lr}: a learning rate must be above 0")
    if not end_lr > start_lr:
        raise MedclfError(f"--end-lr {end_lr}: must be above --start-lr {start_lr}")
    if not isinstance(steps, int) or steps < 2:
        raise MedclfError(f"--steps {steps}: give a whole number of at least 2")
    ratio = end_lr / start_lr
    return [start_lr * ratio ** (i / (steps - 1)) for i in range(steps)]


class SmoothedLoss:
    """Exponential moving average of the loss, bias-corrected: the average starts at 0, so after n
    values it is divided by 1 - beta**n (as Adam corrects its moments) and the first value is itself."""

    def __init__(self, beta=BETA):
        self.beta, self.average, self.count = beta, 0.0, 0

    def update(self, loss):
        self.count += 1
        self.average = self.beta * self.average + (1 - self.beta) * loss
        return self.average / (1 - self.beta ** self.count)


def smooth_losses(losses, beta=BETA):
    smoother = SmoothedLoss(beta)
    return [smoother.update(loss) for loss in losses]


def suggest_lr(lrs, smoothed):
    """The suggested learning rate (SUGGESTION_RULE) and what it rests on: the lr at the minimum of
    the smoothed loss, and the lr of its steepest descent (most negative slope against log lr, before
    the minimum; None when the curve never falls). `note` warns where the range missed the curve."""
    finite = [i for i, value in enumerate(smoothed) if math.isfinite(value)]
    if not finite:
        raise MedclfError("the loss was not a finite number at any step; lower --start-lr, or check the "
                          "data and the loss options")
    best = min(finite, key=lambda i: smoothed[i])
    steepest = None
    if best > 0:
        slopes = np.gradient(np.asarray(smoothed[:best + 1]), np.log10(np.asarray(lrs[:best + 1])))
        steepest = lrs[int(np.argmin(slopes))]
    note = None
    if best == 0:
        note = "the smoothed loss never fell below its first value: lower --start-lr, or check the data"
    elif best == len(smoothed) - 1:
        note = "the smoothed loss was still falling at the last step: raise --end-lr or --steps"
    return {"lr": lrs[best] / 10, "rule": SUGGESTION_RULE, "why": SUGGESTION_WHY, "minimum_lr": lrs[best],
            "minimum_smoothed_loss": smoothed[best], "steepest_lr": steepest, "note": note}


# ---------------------------------------------------------------- the range test

@contextlib.contextmanager
def restored(model, optimizer, scaler=None):
    """Give `model` and `optimizer` (and an fp16 `scaler`) back as they were however the block ends:
    weights, BatchNorm statistics, optimiser state and hyper-parameters (lr), train/eval mode."""
    model_state = copy.deepcopy(model.state_dict())
    optimizer_state = copy.deepcopy(optimizer.state_dict())
    scaler_state = copy.deepcopy(scaler.state_dict()) if scaler is not None else None
    training = model.training
    try:
        yield
    finally:
        model.load_state_dict(model_state)
        optimizer.load_state_dict(optimizer_state)
        if scaler is not None:
            scaler.load_state_dict(scaler_state)
        model.train(training)


def endless_batches(loader):
    """The loader's batches, pass after pass."""
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise MedclfError("the train split gives no batch (fewer images than --batch-size with drop_last)")


def range_test(model, criterion, optimizer, loader, lrs, reference_lr, precision=FP32_CPU, scaler=None,
               progress=None, diverge_factor=DIVERGE_FACTOR, beta=BETA, mixer=None):
    """Train one batch at each learning rate of `lrs` (in the units of `reference_lr`, --lr: every
    parameter group keeps its ratio to it) with medclf.engine.steps's training step, until the smoothed
    loss exceeds `diverge_factor` times its best value or the loss is not finite.
    `criterion` and `mixer` are the run's training loss and batch mixing (label smoothing, mixup,
    cutmix), so the curve is the loss that training will descend.
    Returns (rows [{step, lr, loss, smoothed}], stop reason). Changes model and optimiser: see `restored`."""
    scales = [group["lr"] / reference_lr for group in optimizer.param_groups]
    smoother, best, rows = SmoothedLoss(beta), math.inf, []
    for step, (lr, batch) in enumerate(zip(lrs, endless_batches(loader)), start=1):
        for group, scale in zip(optimizer.param_groups, scales):
            group["lr"] = lr * scale
        loss = train_one_epoch(model, criterion, optimizer, [batch], precision, scaler=scaler, mixer=mixer)["loss"]
        smoothed = smoother.update(loss)
        rows.append({"step": step, "lr": lr, "loss": loss, "smoothed": smoothed})
        if progress is not None:
            progress.update(1)
            progress.set_postfix(lr=f"{lr:.1e}", loss=f"{smoothed:.4f}")
        if not math.isfinite(smoothed) or smoothed > diverge_factor * best:
            return rows, f"diverged at step {step} (lr {lr:.3g})"
        best = min(best, smoothed)
    return rows, "reached --end-lr"


# ---------------------------------------------------------------- outputs

def csv_text(rows):
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["step", "lr", "loss", "smoothed"], lineterminator="\n")
    writer.writeheader()
    writer.writerows({**row, "lr": f"{row['lr']:.6g}", "loss": f"{row['loss']:.6g}",
                      "smoothed": f"{row['smoothed']:.6g}"} for row in rows)
    return buffer.getvalue()


def plot(path, rows, suggestion, title):
    """lr_find.png: loss and smoothed loss against lr (log axis), the minimum and the suggestion marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lrs = [row["lr"] for row in rows]
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    ax.plot(lrs, [row["loss"] for row in rows], color="lightgrey", label="loss per batch")
    ax.plot(lrs, [row["smoothed"] for row in rows], color="C0", label="smoothed loss")
    ax.axvline(suggestion["minimum_lr"], color="grey", linestyle=":",
               label=f"minimum ({suggestion['minimum_lr']:.2g})")
    ax.axvline(suggestion["lr"], color="C3", linestyle="--",
               label=f"suggested --lr {suggestion['lr']:.2g} ({suggestion['rule']})")
    finite = [row["smoothed"] for row in rows if math.isfinite(row["smoothed"])]
    if finite:  # the diverging tail would squash the interesting part of the curve
        low = min(finite)
        ax.set_ylim(low - 0.05 * abs(low), min(max(finite), DIVERGE_FACTOR * low) * 1.05 + 1e-12)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (--lr)")
    ax.set_ylabel("training loss")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def check_out_dir(out):
    """An earlier range test in `out` is never overwritten."""
    out = Path(out)
    if (out / "lr_find.json").exists():
        raise MedclfError(f"{out}: holds an earlier range test (lr_find.json); choose another --out or remove it")
    return out


def run_lr_find(config, out, start_lr=1e-7, end_lr=10.0, steps=100):
    """The range test on the model, data and optimiser `medclf train` builds from `config` (keys of
    training.DEFAULTS); writes OUT/lr_find.{csv,png,json} and returns the lr_find.json record."""
    from tqdm import tqdm

    from medclf.engine import distributed
    from medclf.engine.precision import choose_precision, log_precision
    from medclf.train import training

    out = check_out_dir(out)
    lrs = lr_schedule(start_lr, end_lr, steps)
    # The range test sets the learning rate itself: a schedule would rescale it at construction.
    cfg = training.resolve_config({**config, "scheduler": "none", "resume": False})
    with training.preserved_torch_state():
        precision = choose_precision(training.setup_torch(cfg), cfg["amp"])
        trainer = training.prepare_trainer(cfg, out, False, distributed.World(), precision)
        log_precision("lr-find", precision)
        bar = tqdm(total=len(lrs), desc="lr-find", unit="batch", disable=not cfg["progress"], leave=False,
                   file=sys.stderr)
        with restored(trainer.model, trainer.optimizer, trainer.scaler):
            rows, stopped = range_test(trainer.net, trainer.train_criterion, trainer.optimizer,
                                       trainer.data.train_loader, lrs, cfg["lr"], precision, trainer.scaler, bar,
                                       mixer=trainer.mixer)
        bar.close()
    suggestion = suggest_lr([row["lr"] for row in rows], [row["smoothed"] for row in rows])
    record = lr_find_record(cfg, precision, start_lr, end_lr, steps, rows, stopped, suggestion)
    write_text(out / "lr_find.csv", csv_text(rows))
    splits = Path(cfg["splits"])
    plot(out / "lr_find.png", rows, suggestion, f"LR range test: {splits.parent.name}/{splits.name}, train split, "
                                                f"{cfg['arch']} {cfg['img_size']} px, seed {cfg['seed']}")
    write_json(out / "lr_find.json", record)
    return record


def lr_find_record(cfg, precision, start_lr, end_lr, steps, rows, stopped, suggestion):
    from medclf.core.provenance import git_commit, library_versions

    return {
        "schema": schemas.LR_FIND, "suggestion": suggestion, "start_lr": start_lr, "end_lr": end_lr,
        "steps": steps, "steps_run": len(rows), "stopped": stopped, "beta": BETA, "diverge_factor": DIVERGE_FACTOR,
        "arguments": {k: (str(v) if isinstance(v, Path) else v) for k, v in cfg.items()},
        "precision": precision.record(), "versions": library_versions(), "git_commit": git_commit(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
