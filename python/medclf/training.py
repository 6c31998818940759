"""`run_training(config)`: train a torchvision classifier on a splits.csv into a run folder.

Run folder (results/<run>/):
  config.json   every argument, library versions, git commit, seed, classes, normalisation stats
  history.csv   one row per epoch
  best.pt       {"state_dict", "epoch", ...}: weights at the best monitored value
  last.pt       everything to resume (model, optimizer, scheduler, early stopping, RNG, history)
  curves.png    loss and monitored metric, train and val, best epoch marked
Checkpoints hold tensors and plain data only (torch.load(weights_only=True)) and are written
atomically. The random stream of epoch e depends only on (seed, e): the global torch, numpy and
python RNGs and the sampler's generator are re-seeded at the start of every epoch, so a run
resumed from last.pt after a kill replays exactly what an uninterrupted run does (on CPU with
--deterministic).
"""

import csv
import io
import math
import platform
import random
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from medclf import data as data_mod
from medclf import imbalance, models, transforms
from medclf.early_stopping import MONITOR_MODES, EarlyStopping
from medclf.engine import evaluate, train_one_epoch
from medclf.errors import MedclfError
from medclf.fileio import atomic_path, read_json, write_json, write_text
from medclf.run_config import read_run_config
from medclf.splits import read_splits

CONFIG_SCHEMA = "medclf.run-config/1"
HISTORY_COLUMNS = ["epoch", "train_loss", "train_accuracy", "train_auc", "train_balanced_accuracy",
                   "val_loss", "val_accuracy", "val_auc", "val_balanced_accuracy", "lr", "seconds", "best"]

DEFAULTS = {
    "splits": None, "data_root": None, "arch": "resnet18", "epochs": 50, "patience": 5, "min_delta": 0.0,
    "monitor": "val_loss", "lr": 1e-3, "batch_size": 32, "img_size": 224, "weights": "none", "device": "auto",
    "run_name": None, "out": "results", "freeze_backbone": False, "augment": "none", "optimizer": "adam",
    "weight_decay": 0.0, "scheduler": "none", "warmup_epochs": 0, "warmup_fraction": 0.1, "resume": False,
    "seed": 0, "deterministic": False, "tensorboard": False, "amp": None, "balance": "none",
    "focal_gamma": 2.0, "focal_alpha": None, "head": "softmax", "workers": "auto", "cache": "auto",
    "threads": None, "progress": True,
}
# Arguments that may differ on --resume without changing the run's results.
_RESUME_FREE = {"resume", "progress", "tensorboard", "cache", "device", "out", "run_name"}


# ---------------------------------------------------------------- environment and seeding

def select_device(requested):
    if requested in ("cuda", "gpu") and not torch.cuda.is_available():
        print("medclf train: warning: CUDA requested but not available; running on CPU", file=sys.stderr)
        return torch.device("cpu")
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested not in ("cpu", "cuda", "gpu"):
        raise MedclfError(f"--device {requested}: use auto, cpu or cuda")
    return torch.device("cuda" if requested in ("cuda", "gpu") else "cpu")


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed, epoch):
    """The seed of epoch `epoch` (1-based): every random draw of an epoch derives from it."""
    return (int(seed) * 1_000_003 + int(epoch)) % 2**63


def git_commit():
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def library_versions():
    import torchvision

    return {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
            "numpy": np.__version__, "medclf": __import__("medclf").__version__}


def _rng_state(generator):
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {"name": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "loader_generator": generator.get_state(),
    }


def _set_rng_state(state, generator):
    python_state = state["python"]
    random.setstate((python_state[0], tuple(python_state[1]), python_state[2]))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    generator.set_state(state["loader_generator"])


# ---------------------------------------------------------------- optimiser and schedule

def build_optimizer(name, params, lr, weight_decay):
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    raise MedclfError(f"--optimizer {name}: use adam, adamw or sgd")


def warmup_cosine_factor(step, warmup_steps, total_steps):
    """Linear warm-up from 0 over `warmup_steps`, then cosine decay to 0 at `total_steps`
    (transformers' get_scheduler('cosine'), the lesion classifier's schedule)."""
    if step < warmup_steps:
        return step / max(1, warmup_steps)
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress))))


class WarmupCosine:
    """A picklable-free LR lambda (plain attributes only, so scheduler.state_dict() stays plain data)."""

    def __init__(self, warmup_steps, total_steps):
        self.warmup_steps, self.total_steps = int(warmup_steps), int(total_steps)

    def __call__(self, step):
        return warmup_cosine_factor(step, self.warmup_steps, self.total_steps)


def build_scheduler(config, optimizer, steps_per_epoch):
    """Returns (scheduler, per_batch)."""
    name = config["scheduler"]
    total = max(1, config["epochs"] * steps_per_epoch)
    if name == "none":
        return None, False
    if name == "cosine":
        warmup = int(config["warmup_epochs"]) * steps_per_epoch
        return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(warmup, total)), True
    if name == "warmup-cosine":
        warmup = int(round(float(config["warmup_fraction"]) * total))
        return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(warmup, total)), True
    if name == "plateau":
        mode = MONITOR_MODES[config["monitor"]]
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode=mode, factor=0.1,
                                                          patience=max(1, config["patience"] // 2)), False
    raise MedclfError(f"--scheduler {name}: use none, cosine, plateau or warmup-cosine")


# ---------------------------------------------------------------- checkpoints and outputs

def save_checkpoint(path, obj):
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_checkpoint(path):
    path = Path(path)
    if not path.is_file():
        raise MedclfError(f"{path}: checkpoint not found; train first (`medclf train`)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle.UnpicklingError, RuntimeError ...
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise MedclfError(
            f"{path}: refused to load, the checkpoint holds a pickled object, not only tensors and plain data "
            f"({first_line}); medclf only loads checkpoints with torch.load(weights_only=True). "
            "Re-create it with `medclf train`, or save a plain state dict: torch.save(model.state_dict(), path)"
        ) from exc


def history_csv_text(history):
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(HISTORY_COLUMNS)
    for row in history:
        writer.writerow([_fmt(row.get(c)) for c in HISTORY_COLUMNS])
    return buffer.getvalue()


def _fmt(value):
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, float):
        return "" if math.isnan(value) else repr(value)
    return "" if value is None else value


def plot_curves(path, history, monitor, best_epoch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in history]
    metric = monitor[len("val_"):]
    fig, axes = plt.subplots(1, 2 if metric != "loss" else 1, figsize=(11 if metric != "loss" else 6, 4),
                             squeeze=False)
    panels = [("loss", "loss")] + ([(metric, metric.replace("_", " "))] if metric != "loss" else [])
    for ax, (key, title) in zip(axes[0], panels):
        ax.plot(epochs, [r[f"train_{key}"] for r in history], "o-", label="train")
        ax.plot(epochs, [r[f"val_{key}"] for r in history], "o-", label="val")
        if best_epoch is not None:
            ax.axvline(best_epoch, color="grey", linestyle="--", label=f"best epoch ({best_epoch})")
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------- the run

def resolve_config(config):
    cfg = dict(DEFAULTS)
    cfg.update({k: v for k, v in config.items() if v is not None or k not in DEFAULTS})
    if cfg["monitor"] not in MONITOR_MODES:
        raise MedclfError(f"--monitor {cfg['monitor']}: use one of {', '.join(MONITOR_MODES)}")
    if cfg["head"] not in ("softmax", "single-logit"):
        raise MedclfError(f"--head {cfg['head']}: use softmax or single-logit")
    transforms.check_preset(cfg["augment"])
    cfg["workers"] = resolve_workers(cfg["workers"], cfg["augment"])
    if cfg["run_name"] is None:
        cfg["run_name"] = f"{models.canonical_name(cfg['arch'])}_{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    return cfg


def resolve_workers(workers, augment):
    """--workers auto: one worker process for the presets with an affine warp, none otherwise.
    Measured on the 2-core machine (docs/training.md): a per-image affine warp in the main process
    runs with torch's intra-op threads, which contend with the model's; a worker runs it with one
    thread. Flips and normalisation are cheap enough in the main process, where a worker's start-up
    each epoch would cost more than it saves."""
    if workers in (None, "auto"):
        return 1 if augment in ("standard", "lesion") else 0
    try:
        workers = int(workers)
    except ValueError:
        raise MedclfError(f"--workers {workers}: give a number or auto") from None
    if workers < 0:
        raise MedclfError(f"--workers {workers}: must be 0 or more")
    return workers


def run_folder(config):
    return Path(config["out"]) / config["run_name"]


def _prepare_config(config):
    cfg = resolve_config(config)
    run_dir = run_folder(cfg)
    config_path, last_path = run_dir / "config.json", run_dir / "last.pt"
    if cfg["resume"]:
        if not config_path.is_file():
            raise MedclfError(f"{run_dir}: no config.json to resume from; start the run without --resume")
        saved = read_run_config(config_path)["arguments"]
        changed = {k: (saved.get(k), v) for k, v in cfg.items()
                   if k not in _RESUME_FREE and k in config and config[k] is not None and k in saved
                   and saved.get(k) != v and config[k] != DEFAULTS.get(k)}
        if changed:
            print(f"medclf train: --resume keeps the saved arguments; ignoring {sorted(changed)}", file=sys.stderr)
        free = {k: cfg[k] for k in _RESUME_FREE}
        cfg = dict(DEFAULTS)
        cfg.update(saved)
        cfg.update(free)
        return cfg, run_dir, last_path.is_file()
    if last_path.is_file() or (run_dir / "best.pt").is_file():
        raise MedclfError(f"{run_dir}: a run with this name exists; continue it with --resume, "
                          "or choose another --run-name")
    return cfg, run_dir, False


def run_training(config):
    """Train per `config` (keys of DEFAULTS). Returns a summary dict (run folder, epochs, best
    epoch and value, why it stopped, and the model holding the best weights)."""
    deterministic_before = torch.are_deterministic_algorithms_enabled()
    threads_before = torch.get_num_threads()
    try:
        return _run_training(config)
    finally:
        # Both are process-wide; callers running several stages in one process get theirs back.
        torch.use_deterministic_algorithms(deterministic_before)
        torch.set_num_threads(threads_before)


def _run_training(config):
    cfg, run_dir, resuming = _prepare_config(config)
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg["threads"]))  # part of the run's arguments: sums may depend on it
    run_dir.mkdir(parents=True, exist_ok=True)
    device = select_device(cfg["device"])
    amp = (device.type == "cuda") if cfg["amp"] is None else bool(cfg["amp"] and device.type == "cuda")
    if cfg["deterministic"]:
        torch.use_deterministic_algorithms(True)
        if device.type == "cuda":
            import os

            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.backends.cudnn.benchmark = False
    seed_everything(cfg["seed"])

    # ---- data
    if not cfg["splits"]:
        raise MedclfError("--splits is required (the splits.csv written by `medclf partition`)")
    table = read_splits(cfg["splits"], data_root=cfg["data_root"])
    classes = [str(c) for c in table.classes]
    n_classes = len(classes)
    single_logit = cfg["head"] == "single-logit"
    model, model_info = models.build_model(cfg["arch"], 1 if single_logit else n_classes, cfg["weights"])
    if single_logit and n_classes != 2:
        raise MedclfError(f"--head single-logit needs exactly 2 classes (found {n_classes}); use --head softmax")
    side = transforms.cache_side(cfg["augment"], cfg["img_size"])
    train_files, train_labels, train_rel = data_mod.split_paths(table, "train")
    val_files, val_labels, val_rel = data_mod.split_paths(table, "val")
    if not train_files or not val_files:
        raise MedclfError(f"{table.source}: train and val splits must both be non-empty "
                          f"(train {len(train_files)}, val {len(val_files)})")
    cache_dir = run_dir / "cache"
    train_cache = data_mod.build_cache(train_files, side, cfg["cache"], cache_dir, "train", cfg["progress"])
    val_cache = data_mod.build_cache(val_files, side, cfg["cache"], cache_dir, "val", cfg["progress"])
    if model_info["mean"] is not None:
        mean, std, norm_source = model_info["mean"], model_info["std"], "imagenet weights"
    elif resuming:
        saved = read_json(run_dir / "config.json")["normalisation"]
        mean, std, norm_source = saved["mean"], saved["std"], saved["source"]
    else:
        mean, std = data_mod.channel_stats(train_cache)
        norm_source = "train split"
    train_set = data_mod.CachedImageDataset(train_cache, train_labels,
                                            transforms.train_transform(cfg["augment"], cfg["img_size"], mean, std))
    val_set = data_mod.CachedImageDataset(val_cache, val_labels,
                                          transforms.eval_transform(cfg["augment"], cfg["img_size"], mean, std))
    generator = torch.Generator()
    generator.manual_seed(epoch_seed(cfg["seed"], 0))
    sampler = imbalance.make_sampler(train_labels, n_classes, generator) if cfg["balance"] == "sampler" else None
    train_loader = data_mod.make_loader(train_set, cfg["batch_size"], shuffle=True, sampler=sampler,
                                        workers=int(cfg["workers"]), generator=generator,
                                        drop_last=len(train_set) % cfg["batch_size"] == 1)
    # Evaluation transforms are a crop and a normalisation: cheaper than starting a worker.
    val_loader = data_mod.make_loader(val_set, cfg["batch_size"], workers=0)
    criterion = imbalance.build_criterion(cfg["balance"], train_labels, n_classes, single_logit,
                                          cfg["focal_gamma"], cfg["focal_alpha"]).to(device)

    # ---- model, optimiser, schedule
    model.to(device)
    if cfg["freeze_backbone"]:
        models.set_backbone_trainable(model, False)
        models.freeze_batchnorm_stats(model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(cfg["optimizer"], params, cfg["lr"], cfg["weight_decay"])
    scheduler, per_batch = build_scheduler(cfg, optimizer, len(train_loader))
    scaler = torch.amp.GradScaler("cuda") if amp else None
    stopper = EarlyStopping(cfg["patience"], MONITOR_MODES[cfg["monitor"]], cfg["min_delta"])
    history, start_epoch = [], 1

    config_record = {
        "schema": CONFIG_SCHEMA,
        "arguments": {k: (str(v) if isinstance(v, Path) else v) for k, v in cfg.items()},
        "architecture": model_info["architecture"], "weights": model_info["weights"],
        "classes": classes, "positive_class": table.positive_class, "n_outputs": 1 if single_logit else n_classes,
        "splits_file": str(Path(cfg["splits"]).resolve()),  # as given: a seed-002 csv/ folder stays a folder
        "data_root": str(Path(table.data_root).resolve()),
        "counts": {s: int((table.frame["split"] == s).sum()) for s in ("train", "val", "test")},
        "normalisation": {"mean": list(mean), "std": list(std), "source": norm_source},
        "cache_side": side, "seed": cfg["seed"], "device": str(device), "amp": amp,
        "versions": library_versions(), "git_commit": git_commit(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if resuming:
        state = load_checkpoint(run_dir / "last.pt")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state.get("scheduler") is not None:
            scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        stopper.load_state_dict(state["early_stopping"])
        history = list(state["history"])
        start_epoch = int(state["epoch"]) + 1
        _set_rng_state(state["rng"], generator)
        config_record["created"] = read_json(run_dir / "config.json").get("created", config_record["created"])
        print(f"medclf train: resuming {run_dir} after epoch {state['epoch']}", file=sys.stderr)
    write_json(run_dir / "config.json", config_record)

    writer = None
    if cfg["tensorboard"]:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise MedclfError("--tensorboard needs the tensorboard package: pip install tensorboard") from exc
        writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    from tqdm import tqdm

    stop_reason = "max epochs"
    epoch = start_epoch - 1
    try:
        if stopper.should_stop:
            stop_reason = "patience"
        for epoch in range(start_epoch, cfg["epochs"] + 1):
            if stopper.should_stop:
                break
            # Every random draw of this epoch derives from (seed, epoch): exact resume.
            seed_everything(epoch_seed(cfg["seed"], epoch))
            generator.manual_seed(epoch_seed(cfg["seed"], epoch))
            started = time.perf_counter()
            lr = optimizer.param_groups[0]["lr"]
            bar = tqdm(total=len(train_loader.dataset) if sampler is None else len(sampler),
                       desc=f"epoch {epoch}/{cfg['epochs']}", unit="img", disable=not cfg["progress"], leave=False)
            train_m = train_one_epoch(model, criterion, optimizer, train_loader, device,
                                      scheduler if per_batch else None, scaler, amp, bar)
            bar.close()
            val_m = evaluate(model, criterion, val_loader, device, amp)
            monitored = val_m[cfg["monitor"][len("val_"):]]
            if scheduler is not None and not per_batch:
                scheduler.step(monitored)
            improved = stopper.step(monitored)
            row = {"epoch": epoch, **{f"train_{k}": v for k, v in train_m.items()},
                   **{f"val_{k}": v for k, v in val_m.items()}, "lr": lr,
                   "seconds": round(time.perf_counter() - started, 3), "best": improved}
            history.append(row)
            if improved:
                save_checkpoint(run_dir / "best.pt", {
                    "schema": "medclf.checkpoint/1", "state_dict": model.state_dict(), "epoch": epoch,
                    "architecture": model_info["architecture"], "classes": classes,
                    "n_outputs": config_record["n_outputs"], "monitor": cfg["monitor"], "value": float(monitored)})
            save_checkpoint(run_dir / "last.pt", {
                "schema": "medclf.checkpoint/1", "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                "scaler": scaler.state_dict() if scaler is not None else None,
                "early_stopping": stopper.state_dict(), "rng": _rng_state(generator), "epoch": epoch,
                "history": history})
            write_text(run_dir / "history.csv", history_csv_text(history))
            if writer is not None:
                for key, value in row.items():
                    if key not in ("epoch", "best") and isinstance(value, float):
                        writer.add_scalar(key.replace("_", "/", 1), value, epoch)
            print(f"epoch {epoch:3d}  train loss {train_m['loss']:.4f} acc {train_m['accuracy']:.3f}  "
                  f"val loss {val_m['loss']:.4f} acc {val_m['accuracy']:.3f} auc {val_m['auc']:.3f} "
                  f"bal.acc {val_m['balanced_accuracy']:.3f}  lr {lr:.2e}  {row['seconds']:.1f}s"
                  f"{'  *best' if improved else ''}", file=sys.stderr, flush=True)
            if stopper.should_stop:
                stop_reason = "patience"
                break
    except KeyboardInterrupt:
        stop_reason = "interrupted"
        _finish(run_dir, model, history, cfg, stopper, stop_reason, writer)
        raise
    return _finish(run_dir, model, history, cfg, stopper, stop_reason, writer)


def _finish(run_dir, model, history, cfg, stopper, stop_reason, writer):
    """Restore the best weights into `model` and write the curves, however training ended."""
    if writer is not None:
        writer.close()
    best_path = run_dir / "best.pt"
    if best_path.is_file():
        model.load_state_dict(load_checkpoint(best_path)["state_dict"])
    if history:
        plot_curves(run_dir / "curves.png", history, cfg["monitor"], stopper.best_epoch)
    summary = {"run": str(run_dir), "epochs": len(history), "best_epoch": stopper.best_epoch,
               "best_value": stopper.best, "monitor": cfg["monitor"], "stopped": stop_reason}
    print(f"medclf train: {stop_reason} after {len(history)} epoch(s); best {cfg['monitor']} "
          f"{stopper.best if stopper.best is not None else float('nan'):.4f} at epoch {stopper.best_epoch}; "
          f"best weights restored in {best_path}", file=sys.stderr)
    summary["model"] = model
    return summary
