"""`run_training(config)`: train a torchvision classifier on a splits.csv into a run folder.

Run folder (results/<run>/):
  config.json   every argument, library versions, git commit, seed, classes, normalisation stats
  history.csv   one row per epoch
  best.pt       {"state_dict", "epoch", ...}: weights at the best monitored value
  last.pt       everything to resume (model, optimizer, scheduler, early stopping, RNG, history)
  curves.png    loss, AUC, balanced accuracy (and the monitored metric), train and val, best epoch marked
Checkpoints hold tensors and plain data only (torch.load(weights_only=True)) and are written
atomically. The random stream of epoch e depends only on (seed, e): the global torch, numpy and
python RNGs and the sampler's generator are re-seeded at the start of every epoch, so a run
resumed from last.pt after a kill replays exactly what an uninterrupted run does (on CPU with
--deterministic).
"""

import contextlib
import csv
import io
import math
import os
import random
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from types import MappingProxyType

import numpy as np
import torch

from medclf.core import schemas
from medclf.core.errors import MedclfError
from medclf.core.fileio import atomic_path, write_json, write_text
from medclf.core.provenance import git_commit, library_versions
from medclf.core.run_config import read_run_config
from medclf.core.splits import bind_splits_to_run, read_splits
from medclf.data import datasets as data_mod
from medclf.data import device_data, transforms
from medclf.engine import distributed, mixing
from medclf.engine.ema import attach_ema, recompute_batchnorm, swa_model
from medclf.engine.precision import choose_precision, log_precision, select_device
from medclf.engine.steps import evaluate, train_one_epoch
from medclf.models import architectures as models
from medclf.models import metadata
from medclf.train import imbalance, recipes
from medclf.train.early_stopping import MONITOR_MODES, EarlyStopping, patience_count_from

CONFIG_SCHEMA = schemas.RUN_CONFIG
# val_* are the metrics of `weights` (model, ema or swa: the candidate with the better monitored
# value that epoch); monitored_* the monitored value of each candidate (empty where it was not evaluated).
HISTORY_COLUMNS = ["epoch", "train_loss", "train_accuracy", "train_auc", "train_balanced_accuracy",
                   "val_loss", "val_accuracy", "val_auc", "val_balanced_accuracy", "weights", "monitored_model",
                   "monitored_ema", "monitored_swa", "lr", "seconds", "best"]
WEIGHT_CANDIDATES = ("model", "ema", "swa")  # on a tie the first one wins

DEFAULTS = {
    "splits": None, "data_root": None, "arch": "resnet18", "epochs": 50, "patience": 5, "min_delta": 0.0,
    "monitor": "val_loss", "lr": 1e-3, "batch_size": 32, "img_size": 224, "weights": "none", "device": "auto",
    "recipe": None, "no_decay_norm_bias": False, "ema_decay": 0.0, "swa_epochs": 0, "swa_lr": None,
    "patience_start": "warmup",
    "run_name": None, "out": "results", "freeze_backbone": False, "augment": "none", "optimizer": "adam",
    "weight_decay": 0.0, "scheduler": "none", "warmup_epochs": 0, "warmup_fraction": 0.1, "resume": False,
    "seed": 0, "deterministic": False, "tensorboard": False, "amp": None, "balance": "none",
    "focal_gamma": 2.0, "focal_alpha": None, "head": "softmax", "workers": "auto", "cache": "auto",
    "threads": None, "progress": True, "cache_dir": None, "cache_workers": "auto", "sync_bn": False,
    "metadata_features": None, "allow_feature": None, "lr_backbone": None, "lr_metadata": None, "lr_head": None,
    "label_smoothing": 0.0, "mixup_alpha": 0.0, "cutmix_alpha": 0.0, "mix_prob": 1.0,
}
# Arguments that may differ on --resume without changing the run's results.
_RESUME_FREE = {"resume", "progress", "tensorboard", "cache", "cache_dir", "cache_workers", "device", "out",
                "run_name"}


# ---------------------------------------------------------------- environment and seeding

def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed, epoch):
    """The seed of epoch `epoch` (1-based): every random draw of an epoch derives from it."""
    return (int(seed) * 1_000_003 + int(epoch)) % 2**63


def rank_seed(seed, rank):
    """The seed of one training process: rank 0 keeps `seed` (a one-process run is unchanged), other
    ranks get their own streams, so their augmentations differ."""
    return (int(seed) + 7_919 * int(rank)) % 2**63


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


NORM_LAYERS = (torch.nn.modules.batchnorm._BatchNorm, torch.nn.modules.instancenorm._InstanceNorm,
               torch.nn.LayerNorm, torch.nn.GroupNorm, torch.nn.LocalResponseNorm,
               *((torch.nn.RMSNorm,) if hasattr(torch.nn, "RMSNorm") else ()))


def no_decay_parameters(model):
    """{id: name} of the parameters --no-decay-norm-bias exempts from weight decay: every parameter
    of a normalisation layer and every bias; the weights of convolution and linear layers keep it
    (decaying a norm layer's scale or a bias only limits what the layer can express)."""
    exempt = {}
    for module_name, module in model.named_modules():
        for name, param in module.named_parameters(recurse=False):
            if isinstance(module, NORM_LAYERS) or name.endswith("bias"):
                exempt[id(param)] = f"{module_name}.{name}" if module_name else name
    return exempt


def split_weight_decay(model, groups, weight_decay):
    """Each optimiser group (models.parameter_groups: one per learning-rate role) split in two:
    its decayed parameters with `weight_decay`, its norm and bias parameters with 0. Empty halves
    are dropped; the order is fixed (decay first), so last.pt's optimiser state matches on --resume."""
    exempt = no_decay_parameters(model)
    split = []
    for group in groups:
        role = group.get("name")
        for kind, keep, decay in (("decay", False, weight_decay), ("no_decay", True, 0.0)):
            params = [p for p in group["params"] if (id(p) in exempt) == keep]
            if params:
                name = f"{role}/{kind}" if role else kind
                split.append({**group, "params": params, "weight_decay": float(decay), "name": name})
    return split


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


def curve_panels(monitor):
    """(metric, title) of each curves.png panel: loss, AUC and balanced accuracy always, plus the
    monitored metric when it is another one. Each is a train_/val_ pair of history.csv columns."""
    metrics = ["loss", "auc", "balanced_accuracy"]
    monitored = monitor[len("val_"):]
    if monitored not in metrics:
        metrics.append(monitored)
    titles = {"loss": "loss", "auc": "ROC-AUC (macro one-vs-rest)", "balanced_accuracy": "balanced accuracy",
              "accuracy": "accuracy"}
    return [(m, titles[m] + ("  (monitored)" if m == monitored else "")) for m in metrics]


def plot_curves(path, history, monitor, best_epoch):
    """curves.png: one panel per `curve_panels(monitor)`, train and val per epoch, best epoch marked.
    Returns the metrics plotted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = curve_panels(monitor)
    epochs = [r["epoch"] for r in history]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 4), squeeze=False)
    for ax, (key, title) in zip(axes[0], panels):
        ax.plot(epochs, [_number(r.get(f"train_{key}")) for r in history], "o-", label="train")
        ax.plot(epochs, [_number(r.get(f"val_{key}")) for r in history], "o-", label="val")
        if best_epoch is not None:
            ax.axvline(best_epoch, color="grey", linestyle="--", label=f"best epoch ({best_epoch})")
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return [key for key, _ in panels]


def _number(value):
    return float("nan") if value is None else float(value)


# ---------------------------------------------------------------- configuration

def config_from_arguments(args):
    """The training config of parsed `medclf train` arguments (on --resume only what was typed)."""
    config = {k: v for k, v in vars(args).items()
              if not k.startswith("_") and k not in ("command", "use_gpu", "nproc")}
    if getattr(args, "use_gpu", False):
        config["device"] = "cuda"
    if args.resume:
        # The saved arguments rule on --resume; argparse defaults must not look like changes, while
        # anything else typed is reported as ignored by run_training.
        keep = ("out", "run_name", "resume", "progress", "device", "cache", "cache_dir", "cache_workers",
                "tensorboard")
        config = {k: v for k, v in config.items() if k in keep or (k in DEFAULTS and v != DEFAULTS[k])}
    return config


def resolve_config(config):
    """The run's arguments with the recipe and the defaults applied, resolved once into a read-only
    mapping; every value that can be checked without data or training is checked here (names with a
    suggestion), so a typo fails at once."""
    cfg = dict(DEFAULTS)
    cfg.update(recipes.recipe_values(config.get("recipe"), DEFAULTS))  # explicit arguments win over the recipe
    cfg.update({k: v for k, v in config.items() if v is not None or k not in DEFAULTS})
    if cfg["monitor"] not in MONITOR_MODES:
        raise MedclfError(f"--monitor {cfg['monitor']}: use one of {', '.join(MONITOR_MODES)}")
    if cfg["head"] not in ("softmax", "single-logit"):
        raise MedclfError(f"--head {cfg['head']}: use softmax or single-logit")
    for key, smallest in (("epochs", 1), ("patience", 1), ("batch_size", 1), ("img_size", 8), ("threads", 1)):
        if cfg[key] is not None and (not isinstance(cfg[key], int) or cfg[key] < smallest):
            raise MedclfError(f"--{key.replace('_', '-')} {cfg[key]}: give a whole number of at least {smallest}")
    for key in ("lr", "lr_backbone", "lr_metadata", "lr_head"):
        if cfg[key] is not None and not cfg[key] > 0:
            raise MedclfError(f"--{key.replace('_', '-')} {cfg[key]}: a learning rate must be above 0")
    cfg["patience_start"] = check_averaging(cfg)
    if cfg["lr_metadata"] is not None and not cfg["metadata_features"]:
        raise MedclfError(f"--lr-metadata {cfg['lr_metadata']}: there is no metadata branch without "
                          "--metadata-features; add the columns or drop --lr-metadata")
    arch = models.canonical_name(cfg["arch"])
    models.check_weights(cfg["weights"], arch)
    transforms.check_preset(cfg["augment"])
    imbalance.check_label_smoothing(cfg["label_smoothing"], cfg["balance"])
    mixing.check_options(cfg["mixup_alpha"], cfg["cutmix_alpha"], cfg["mix_prob"])
    cfg["workers"] = resolve_workers(cfg["workers"], cfg["augment"])
    data_mod.resolve_cache_workers(cfg["cache_workers"])
    distributed.check_sync_bn(cfg["sync_bn"], cfg["device"])
    if cfg["tensorboard"]:
        _tensorboard_writer_class()
    if cfg["run_name"] is None:
        cfg["run_name"] = f"{arch}_{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    return MappingProxyType(cfg)


def check_averaging(cfg):
    """Check --ema-decay, --swa-epochs, --swa-lr and --patience-start; returns --patience-start as
    it resolves: "warmup", or N as an int."""
    if not 0 <= float(cfg["ema_decay"]) < 1:
        raise MedclfError(f"--ema-decay {cfg['ema_decay']}: give a decay in [0, 1), e.g. 0.999 (0 = off)")
    swa = cfg["swa_epochs"]
    if not isinstance(swa, int) or isinstance(swa, bool) or not 0 <= swa <= cfg["epochs"]:
        raise MedclfError(f"--swa-epochs {swa}: give a whole number from 0 (off) to --epochs ({cfg['epochs']})")
    if cfg["swa_lr"] is not None and not (swa and float(cfg["swa_lr"]) > 0):
        raise MedclfError(f"--swa-lr {cfg['swa_lr']}: needs --swa-epochs above 0 and a learning rate above 0")
    start = cfg["patience_start"]
    if start == "warmup":
        return start
    try:
        epochs = int(start)
    except (TypeError, ValueError):
        epochs = -1
    if isinstance(start, bool) or epochs < 0:
        raise MedclfError(f"--patience-start {start}: use warmup or a whole number of epochs (0 or more)")
    return epochs


def resolve_workers(workers, augment):
    """--workers auto: one worker process for the presets with an affine warp, none otherwise.
    Measured on the 2-core machine (docs/training.md): a per-image affine warp in the main process
    runs with torch's intra-op threads, which contend with the model's; a worker runs it with one
    thread. Flips and normalisation are cheap enough in the main process, where a worker's start-up
    each epoch would cost more than it saves."""
    if workers in (None, "auto"):
        return 1 if transforms.base_preset(augment) in ("standard", "lesion") else 0
    try:
        workers = int(workers)
    except ValueError:
        raise MedclfError(f"--workers {workers}: give a number or auto") from None
    if workers < 0:
        raise MedclfError(f"--workers {workers}: must be 0 or more")
    return workers


def _tensorboard_writer_class():
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        raise MedclfError("--tensorboard needs the tensorboard package: pip install tensorboard") from exc
    return SummaryWriter


def run_folder(config):
    return Path(config["out"]) / config["run_name"]


def _prepare_config(config):
    cfg = resolve_config(config)
    run_dir = run_folder(cfg)
    config_path, last_path = run_dir / "config.json", run_dir / "last.pt"
    if cfg["resume"]:
        if not config_path.is_file():
            raise MedclfError(f"{run_dir}: no config.json to resume from; start the run without --resume")
        record = read_run_config(config_path)  # the one read of the saved config.json on --resume
        saved = record["arguments"]
        changed = {k: (saved.get(k), v) for k, v in cfg.items()
                   if k not in _RESUME_FREE and k in config and config[k] is not None and k in saved
                   and saved.get(k) != v and config[k] != DEFAULTS.get(k)}
        if changed:
            print(f"medclf train: --resume keeps the saved arguments; ignoring {sorted(changed)}", file=sys.stderr)
        free = {k: cfg[k] for k in _RESUME_FREE}
        return MappingProxyType({**DEFAULTS, **saved, **free}), run_dir, record if last_path.is_file() else None
    if last_path.is_file() or (run_dir / "best.pt").is_file():
        raise MedclfError(f"{run_dir}: a run with this name exists; continue it with --resume, "
                          "or choose another --run-name")
    return cfg, run_dir, None


@contextlib.contextmanager
def preserved_torch_state():
    """Training flips process-wide torch switches (deterministic algorithms, intra-op threads,
    cuDNN benchmark); give the caller its own back however the run ends, so stages run in one
    process (a study, the demo, tests) behave like the same commands run alone."""
    deterministic = torch.are_deterministic_algorithms_enabled()
    threads = torch.get_num_threads()
    benchmark = torch.backends.cudnn.benchmark
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(deterministic)
        torch.set_num_threads(threads)
        torch.backends.cudnn.benchmark = benchmark


def setup_torch(cfg):
    """Threads, device and determinism of the run; returns its device (precision is chosen once the
    process knows its own device: medclf.engine.distributed.start)."""
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg["threads"]))  # part of the run's arguments: sums may depend on it
    device = select_device(cfg["device"])
    if device.type == "cuda":
        # cuDNN's autotuner picks the fastest kernels for the fixed input size, not a reproducible one.
        torch.backends.cudnn.benchmark = not cfg["deterministic"]
    if cfg["deterministic"]:
        torch.use_deterministic_algorithms(True)
        if device.type == "cuda":
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    seed_everything(cfg["seed"])
    return device


# ---------------------------------------------------------------- data

@dataclass
class RunData:
    """What the training loop reads: loaders over the decode-once caches, and what produced them."""

    table: object
    classes: list
    train_labels: list
    train_loader: object
    val_loader: object
    sampler: object
    generator: object
    side: int
    normalisation: dict
    metadata: dict = None  # the metadata encoder (medclf.models.metadata), None for an image-only run


def read_run_splits(cfg):
    """The splits the run trains on, with non-empty train and val splits."""
    if not cfg["splits"]:
        raise MedclfError("--splits is required (the splits.csv written by `medclf partition`)")
    table = read_splits(cfg["splits"], data_root=cfg["data_root"])
    counts = {s: int((table.frame["split"] == s).sum()) for s in ("train", "val")}
    if not counts["train"] or not counts["val"]:
        raise MedclfError(f"{table.source}: train and val splits must both be non-empty "
                          f"(train {counts['train']}, val {counts['val']})")
    if cfg["head"] == "single-logit" and len(table.classes) != 2:
        raise MedclfError(f"--head single-logit needs exactly 2 classes (found {len(table.classes)}); "
                          "use --head softmax")
    return table


def load_caches(cfg, files_by_split, side, run_dir, world):
    """The decoded-image cache of each split. With several processes the caches are the shared
    memory-mapped files: local rank 0 of each machine builds them while the others wait, then
    every process maps the same files."""
    mode = "disk" if world.distributed and cfg["cache"] == "auto" else cfg["cache"]
    if world.distributed and mode == "memory" and world.is_main:
        print("medclf train: --cache memory with several processes: each decodes its own copy", file=sys.stderr)
    cache_dir = data_mod.cache_root(cfg["cache_dir"], run_dir.parent)

    def build():
        return {name: data_mod.build_cache(files, side, mode, cache_dir, name, cfg["progress"] and world.is_main,
                                           workers=data_mod.resolve_cache_workers(cfg["cache_workers"]))
                for name, files in files_by_split.items()}

    caches = build() if world.local_rank == 0 else None
    distributed.barrier(world)
    return caches if caches is not None else build()


def run_normalisation(cfg, model_info, run_dir, train_cache, resuming):
    """ImageNet statistics for ImageNet weights, else the train split's (kept in config.json:
    `resuming`, the saved config.json of a resumed run, or None)."""
    if model_info["mean"] is not None:
        return {"mean": model_info["mean"], "std": model_info["std"], "source": "imagenet weights"}
    if resuming:
        return resuming["normalisation"]
    mean, std = data_mod.channel_stats(train_cache)
    return {"mean": mean, "std": std, "source": "train split"}


def build_train_sampler(cfg, train_set, train_labels, n_classes, generator, world):
    """None (a shuffling loader), the class-balanced sampler, or with several processes a
    distributed sampler (each process its share; `set_epoch` reshuffles)."""
    if cfg["balance"] == "sampler":
        return imbalance.make_sampler(train_labels, n_classes, generator, world.size, world.rank)
    if world.distributed:
        return torch.utils.data.DistributedSampler(train_set, world.size, world.rank, shuffle=True, seed=0)
    return None


def load_data(cfg, table, run_dir, model_info, resuming, world=distributed.World(), images=None, encoder=None):
    """Decode each image once into the cache, fix the normalisation, build the loaders.
    `images(files, side, name)`, when given, supplies the decoded images instead (medclf.workflows.cv:
    one cache shared by every fold)."""
    side = transforms.cache_side(cfg["augment"], cfg["img_size"])
    train_files, train_labels, _ = data_mod.split_paths(table, "train")
    val_files, val_labels, _ = data_mod.split_paths(table, "val")
    files_by_split = {"train": train_files, "val": val_files}
    caches = ({name: images(files, side, name) for name, files in files_by_split.items()} if images is not None
              else load_caches(cfg, files_by_split, side, run_dir, world))
    norm = run_normalisation(cfg, model_info, run_dir, caches["train"], resuming)
    mean, std = norm["mean"], norm["std"]
    train_set = data_mod.CachedImageDataset(caches["train"], train_labels,
                                            transforms.train_transform(cfg["augment"], cfg["img_size"], mean, std))
    val_set = data_mod.CachedImageDataset(caches["val"], val_labels,
                                          transforms.eval_transform(cfg["augment"], cfg["img_size"], mean, std))
    train_set, val_set = (metadata.attach(encoder, table, s, d) for s, d in (("train", train_set), ("val", val_set)))
    generator = torch.Generator()
    generator.manual_seed(epoch_seed(cfg["seed"], 0))
    sampler = build_train_sampler(cfg, train_set, train_labels, len(table.classes), generator, world)
    per_process = len(sampler) if sampler is not None else len(train_set)
    train_loader = data_mod.make_loader(train_set, cfg["batch_size"], shuffle=True, sampler=sampler,
                                        workers=int(cfg["workers"]), generator=generator,
                                        drop_last=per_process % cfg["batch_size"] == 1)
    # Each process evaluates its share of val in order (padded to equal shares); the outputs are
    # gathered back into the split's order (distributed.gather_in_order).
    val_sampler = (torch.utils.data.DistributedSampler(val_set, world.size, world.rank, shuffle=False)
                   if world.distributed else None)
    # Evaluation transforms are a crop and a normalisation: cheaper than starting a worker.
    val_loader = data_mod.make_loader(val_set, cfg["batch_size"], sampler=val_sampler, workers=0)
    return RunData(table, [str(c) for c in table.classes], train_labels, train_loader, val_loader, sampler,
                   generator, side, {"mean": list(mean), "std": list(std), "source": norm["source"]}, encoder)


# ---------------------------------------------------------------- the run

@dataclass
class Trainer:
    """Everything one epoch reads and updates."""

    cfg: dict
    run_dir: Path
    precision: object  # medclf.engine.precision.Precision: device, autocast, memory layout
    data: RunData
    model: object
    model_info: dict
    criterion: object
    optimizer: object
    scheduler: object
    per_batch: bool
    scaler: object
    stopper: EarlyStopping
    history: list
    ema: object = None  # AveragedModel of --ema-decay (medclf.engine.ema), updated after every optimiser step
    swa: object = None  # AveragedModel of --swa-epochs, updated at the end of each averaging epoch
    writer: object = None
    world: distributed.World = distributed.World()
    net: object = None  # what trains: the model, or its DistributedDataParallel wrapper
    train_criterion: object = None  # the training loss (label smoothing); `criterion` scores val
    mixer: object = None  # medclf.engine.mixing.Mixer of --mixup-alpha/--cutmix-alpha, or None

    @property
    def device(self):
        return self.precision.device

    @property
    def n_outputs(self):
        return 1 if self.cfg["head"] == "single-logit" else len(self.data.classes)


def build_trainer(cfg, run_dir, precision, data, model, model_info, world=distributed.World()):
    """Loss, optimiser, schedule, scaler and early stopping for `model`, on the precision's device;
    with several processes the model trains through DistributedDataParallel (SyncBatchNorm with --sync-bn)."""
    device = precision.device
    n_classes = len(data.classes)
    if cfg["sync_bn"]:
        model = distributed.sync_batchnorm(model)
    single_logit = cfg["head"] == "single-logit"
    criterion, train_criterion = (
        imbalance.build_criterion(cfg["balance"], data.train_labels, n_classes, single_logit, cfg["focal_gamma"],
                                  cfg["focal_alpha"], data.classes, data.table.positive_class, data.table.source,
                                  label_smoothing=eps).to(device)
        for eps in (0.0, cfg["label_smoothing"]))
    precision.prepare_model(model)
    if cfg["freeze_backbone"]:
        models.set_backbone_trainable(model, False)
        models.freeze_batchnorm_stats(model)
    lr_by_role = {"backbone": cfg["lr_backbone"], "metadata": cfg["lr_metadata"], "head": cfg["lr_head"]}
    params = models.parameter_groups(model, cfg["lr"], lr_by_role)
    if cfg["no_decay_norm_bias"]:
        params = split_weight_decay(model, params, cfg["weight_decay"])
    optimizer = build_optimizer(cfg["optimizer"], params, cfg["lr"], cfg["weight_decay"])
    scheduler, per_batch = build_scheduler(cfg, optimizer, len(data.train_loader))
    scaler = precision.grad_scaler()
    stopper = EarlyStopping(cfg["patience"], MONITOR_MODES[cfg["monitor"]], cfg["min_delta"], patience_count_from(cfg))
    return Trainer(cfg, run_dir, precision, data, model, model_info, criterion, optimizer, scheduler, per_batch,
                   scaler, stopper, history=[], world=world, net=distributed.wrap_model(model, world),
                   train_criterion=train_criterion, mixer=mixing.build_mixer(cfg))


def add_weight_averages(trainer):
    """The EMA (--ema-decay) and SWA (--swa-epochs) copies of the model, when asked for."""
    cfg = trainer.cfg
    if cfg["ema_decay"]:
        trainer.ema = attach_ema(trainer.optimizer, trainer.model, cfg["ema_decay"])
    if cfg["swa_epochs"]:
        trainer.swa = swa_model(trainer.model)
        if trainer.world.is_main:
            print(f"medclf train: --swa-epochs {cfg['swa_epochs']}: the run trains all {cfg['epochs']} epochs "
                  f"(no early stopping) and averages the weights of epochs {swa_first_epoch(cfg)}-{cfg['epochs']}",
                  file=sys.stderr)
    return trainer


def swa_first_epoch(cfg):
    return cfg["epochs"] - cfg["swa_epochs"] + 1


def start_swa_lr(trainer):
    """--swa-lr, from the first averaging epoch on: a constant learning rate (SWALR without
    annealing) replaces the run's schedule; groups of --lr get --swa-lr, groups of --lr-backbone,
    --lr-metadata or --lr-head keep their ratio to --lr."""
    from torch.optim.swa_utils import SWALR

    cfg = trainer.cfg
    rates = []
    for group in trainer.optimizer.param_groups:
        role = (group.get("name") or "").split("/")[0]
        rates.append(float(cfg["swa_lr"]) * (cfg.get(f"lr_{role}") or cfg["lr"]) / cfg["lr"])
    SWALR(trainer.optimizer, rates, anneal_epochs=0)  # sets every group's lr now
    trainer.scheduler = None


def config_record(trainer, split_binding):
    cfg, table, data = trainer.cfg, trainer.data.table, trainer.data
    return {
        "schema": CONFIG_SCHEMA,
        "arguments": {k: (str(v) if isinstance(v, Path) else v) for k, v in cfg.items()},
        "architecture": trainer.model_info["architecture"], "weights": trainer.model_info["weights"],
        "classes": data.classes, "positive_class": table.positive_class, "n_outputs": trainer.n_outputs,
        "splits_file": str(Path(cfg["splits"]).resolve()),  # as given: a seed-002 csv/ folder stays a folder
        **split_binding,
        "data_root": str(Path(table.data_root).resolve()),
        "counts": {s: int((table.frame["split"] == s).sum()) for s in ("train", "val", "test")},
        "normalisation": data.normalisation, "metadata": data.metadata,
        "cache_side": data.side, "seed": cfg["seed"], "device": str(trainer.device),
        "amp": trainer.precision.amp, "precision": trainer.precision.name, "world_size": trainer.world.size,
        "patience_counts_after_epoch": trainer.stopper.count_from,
        "versions": library_versions(), "git_commit": git_commit(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def restore_from_last(trainer):
    """Continue where last.pt left off: weights, optimiser, schedule, early stopping, history, RNG.
    Returns the next epoch."""
    state = load_checkpoint(trainer.run_dir / "last.pt")
    trainer.model.load_state_dict(state["model"])
    trainer.optimizer.load_state_dict(state["optimizer"])
    if trainer.scheduler is not None and state.get("scheduler") is not None:
        trainer.scheduler.load_state_dict(state["scheduler"])
    if trainer.scaler is not None and state.get("scaler"):
        trainer.scaler.load_state_dict(state["scaler"])
    trainer.stopper.load_state_dict(state["early_stopping"])
    for name in ("ema", "swa"):
        if getattr(trainer, name) is not None:
            getattr(trainer, name).load_state_dict(state[name])
    trainer.history = list(state["history"])
    _set_rng_state(state["rng"], trainer.data.generator)
    if trainer.world.is_main:
        print(f"medclf train: resuming {trainer.run_dir} after epoch {state['epoch']}", file=sys.stderr)
    return int(state["epoch"]) + 1


def write_run_config(trainer, resuming, split_binding):
    record = config_record(trainer, split_binding)
    if resuming:
        record["created"] = resuming.get("created", record["created"])
    write_json(trainer.run_dir / "config.json", record)


def run_training(config, on_epoch=None, images=None):
    """Train per `config` (keys of DEFAULTS). Returns a summary dict (run folder, epochs, best
    epoch and value, why it stopped, and the model holding the best weights).
    on_epoch(row, best): called after each epoch is saved with its history row and the best
    monitored value so far (a sweep reports it to its pruner, which may stop the run by raising).
    `images`: see load_data."""
    with preserved_torch_state():
        return _run_training(config, on_epoch, images)


def _run_training(config, on_epoch=None, images=None):
    cfg, run_dir, resuming = _prepare_config(config)
    world = distributed.start(distributed.world_from_env(), setup_torch(cfg))  # a CUDA rank: its own GPU
    precision = choose_precision(world.device, cfg["amp"])
    try:
        if world.distributed:  # every process names the run as rank 0 does (the default holds the time)
            cfg = MappingProxyType({**cfg, "run_name": distributed.broadcast_object(world, cfg["run_name"])})
            run_dir = run_folder(cfg)
        return _train_in_world(cfg, run_dir, resuming, world, precision, on_epoch, images)
    finally:
        distributed.stop(world)


def prepare_trainer(cfg, run_dir, resuming, world, precision, images=None):
    """Splits, model, data and Trainer of a run in `run_dir` (medclf train; `medclf lr-find` builds
    the same from the same arguments)."""
    table = read_run_splits(cfg)
    single_logit = cfg["head"] == "single-logit"
    n_outputs = 1 if single_logit else len(table.classes)
    model, model_info = models.build_model(cfg["arch"], n_outputs, cfg["weights"])
    encoder = metadata.fit_run_encoder(cfg, table)  # train rows only
    model = metadata.fuse(model, encoder, n_outputs)
    run_dir.mkdir(parents=True, exist_ok=True)
    data = load_data(cfg, table, run_dir, model_info, resuming, world, images, encoder)
    data.train_loader = device_data.for_device(data.train_loader, precision.device)  # CUDA: see device_data
    data.val_loader = device_data.for_device(data.val_loader, precision.device)
    return build_trainer(cfg, run_dir, precision, data, model, model_info, world)


def _train_in_world(cfg, run_dir, resuming, world, precision, on_epoch=None, images=None):
    """The run on this process: rank 0 alone writes the run folder and prints."""
    trainer = add_weight_averages(prepare_trainer(cfg, run_dir, resuming, world, precision, images))
    table = trainer.data.table
    if world.is_main:  # once the images and the loss were accepted: a refusal stays one line
        log_precision("train", precision)
    start_epoch = restore_from_last(trainer) if resuming else 1
    if resuming and world.is_main:
        trained_with = resuming.get("world_size", 1)
        if trained_with != world.size:
            print(f"medclf train: warning: resuming with {world.size} process(es), the run was trained with "
                  f"{trained_with}: later epochs sample and batch differently", file=sys.stderr)
    if world.is_main:
        # After the images and the loss were accepted: a refused run leaves no copy behind.
        split_binding = bind_splits_to_run(table, run_dir)  # the run carries its own split (config.json)
        write_run_config(trainer, resuming, split_binding)
        if cfg["tensorboard"]:
            trainer.writer = _tensorboard_writer_class()(log_dir=str(run_dir / "tensorboard"))
    try:
        stop_reason = train_epochs(trainer, start_epoch, on_epoch)
    except KeyboardInterrupt:
        if world.is_main:
            _finish(trainer, "interrupted")
        raise
    if not world.is_main:
        return {"run": str(run_dir), "rank": world.rank, "epochs": len(trainer.history), "stopped": stop_reason}
    return _finish(trainer, stop_reason)


# ---------------------------------------------------------------- epochs

def train_epochs(trainer, start_epoch, on_epoch=None):
    """Epochs `start_epoch`..epochs until early stopping; returns why training stopped."""
    cfg = trainer.cfg
    for epoch in range(start_epoch, cfg["epochs"] + 1):
        if trainer.stopper.should_stop:
            break
        row = agree_on_epoch(trainer, run_epoch(trainer, epoch))
        trainer.history.append(row)
        if trainer.world.is_main:
            save_epoch(trainer, row)
        if on_epoch is not None:
            on_epoch(row, trainer.stopper.best)
    return "patience" if trainer.stopper.should_stop else "max epochs"


def agree_on_epoch(trainer, row):
    """With several processes, rank 0's history row and early-stopping verdict hold on every rank,
    so all stop together (their gathered validation values are the same; the time is rank 0's)."""
    if not trainer.world.distributed:
        return row
    row, stopper_state = distributed.broadcast_object(trainer.world, (row, trainer.stopper.state_dict()))
    trainer.stopper.load_state_dict(stopper_state)
    return row


def run_epoch(trainer, epoch):
    """Train one epoch, evaluate on val, step the schedule and early stopping; the history row."""
    from tqdm import tqdm

    cfg, data, world = trainer.cfg, trainer.data, trainer.world
    # Every random draw of this epoch derives from (seed, epoch, rank): exact resume.
    seed_everything(rank_seed(epoch_seed(cfg["seed"], epoch), world.rank))
    data.generator.manual_seed(rank_seed(epoch_seed(cfg["seed"], epoch), world.rank))
    if hasattr(data.sampler, "set_epoch"):  # distributed samplers: the same permutation on every rank
        data.sampler.set_epoch(epoch_seed(cfg["seed"], epoch))
    averaging = trainer.swa is not None and epoch >= swa_first_epoch(cfg)
    if averaging and cfg["swa_lr"] is not None:
        start_swa_lr(trainer)
    started = time.perf_counter()
    lr = trainer.optimizer.param_groups[0]["lr"]
    bar = tqdm(total=len(data.train_loader.dataset) if data.sampler is None else len(data.sampler),
               desc=f"epoch {epoch}/{cfg['epochs']}", unit="img", disable=not (cfg["progress"] and world.is_main),
               leave=False)
    gather_train, gather_val = distributed.epoch_gatherers(world, len(data.val_loader.dataset))
    train_m = train_one_epoch(trainer.net, trainer.train_criterion, trainer.optimizer, data.train_loader,
                              trainer.precision, trainer.scheduler if trainer.per_batch else None, trainer.scaler,
                              bar, gather=gather_train, mixer=trainer.mixer)
    bar.close()
    if averaging:
        trainer.swa.update_parameters(trainer.model)
    weights, val_m, monitored_by = validate_candidates(trainer, epoch, gather_val)
    monitored = val_m[cfg["monitor"][len("val_"):]]
    if trainer.scheduler is not None and not trainer.per_batch:
        trainer.scheduler.step(monitored)
    improved = trainer.stopper.step(monitored)
    return {"epoch": epoch, **{f"train_{k}": v for k, v in train_m.items()},
            **{f"val_{k}": v for k, v in val_m.items()}, "weights": weights,
            **{f"monitored_{name}": monitored_by.get(name) for name in WEIGHT_CANDIDATES}, "lr": lr,
            "seconds": round(time.perf_counter() - started, 3), "best": improved}


def validate_candidates(trainer, epoch, gather=None):
    """Every set of weights of this epoch evaluated on val: the model, its EMA, and after the last
    epoch the SWA average (BatchNorm statistics recomputed on the train loader first). Returns
    (name of the one with the best monitored value, its val metrics, {name: monitored value})."""
    cfg = trainer.cfg
    candidates = {"model": trainer.model}
    if trainer.ema is not None:
        candidates["ema"] = trainer.ema.module
    if trainer.swa is not None and epoch == cfg["epochs"]:
        recompute_batchnorm(trainer.swa.module, trainer.data.train_loader, trainer.precision)
        candidates["swa"] = trainer.swa.module
    metrics = {}
    for name, module in candidates.items():
        distributed.share_buffers(trainer.world, module)  # every rank validates rank 0's BatchNorm statistics
        metrics[name] = evaluate(module, trainer.criterion, trainer.data.val_loader, trainer.precision, gather=gather)
    values = {name: m[cfg["monitor"][len("val_"):]] for name, m in metrics.items()}
    best = pick_weights(values, MONITOR_MODES[cfg["monitor"]])
    return best, metrics[best], values


def pick_weights(values, mode):
    """The candidate ({name: monitored value}) with the best value; NaN never wins, and on a tie
    the one first in WEIGHT_CANDIDATES does (an average must be better to replace the model)."""
    best = "model"
    for name in WEIGHT_CANDIDATES:
        value = values.get(name, math.nan)
        if math.isnan(value):
            continue
        current = values.get(best, math.nan)
        if math.isnan(current) or (value < current if mode == "min" else value > current):
            best = name
    return best


def weights_module(trainer, name):
    """The module holding weights `name` (a history row's `weights`)."""
    return {"model": trainer.model, "ema": getattr(trainer.ema, "module", None),
            "swa": getattr(trainer.swa, "module", None)}[name]


def save_epoch(trainer, row):
    """best.pt (when improved), last.pt, history.csv, tensorboard and the epoch's line on stderr."""
    epoch, run_dir = row["epoch"], trainer.run_dir
    model, cfg = trainer.model, trainer.cfg
    if row["best"]:
        save_checkpoint(run_dir / "best.pt", {
            "schema": schemas.CHECKPOINT, "state_dict": weights_module(trainer, row["weights"]).state_dict(),
            "epoch": epoch, "weights": row["weights"],
            "architecture": trainer.model_info["architecture"], "classes": trainer.data.classes,
            "n_outputs": trainer.n_outputs, "monitor": cfg["monitor"], "value": float(row[cfg["monitor"]])})
    save_checkpoint(run_dir / "last.pt", {
        "schema": schemas.CHECKPOINT, "model": model.state_dict(), "optimizer": trainer.optimizer.state_dict(),
        "scheduler": trainer.scheduler.state_dict() if trainer.scheduler is not None else None,
        "scaler": trainer.scaler.state_dict() if trainer.scaler is not None else None,
        "early_stopping": trainer.stopper.state_dict(), "rng": _rng_state(trainer.data.generator), "epoch": epoch,
        "history": trainer.history, "ema": trainer.ema.state_dict() if trainer.ema is not None else None,
        "swa": trainer.swa.state_dict() if trainer.swa is not None else None})
    write_text(run_dir / "history.csv", history_csv_text(trainer.history))
    if trainer.writer is not None:
        for key, value in row.items():
            if key not in ("epoch", "best") and isinstance(value, float):
                trainer.writer.add_scalar(key.replace("_", "/", 1), value, epoch)
    if row["monitored_swa"] is not None:
        print(f"medclf train: SWA average of epochs {swa_first_epoch(cfg)}-{epoch} (BatchNorm recomputed on the "
              f"train split): {cfg['monitor']} {row['monitored_swa']:.4f}; "
              + ("kept as best.pt" if row["best"] and row["weights"] == "swa" else
                 f"best.pt stays at {trainer.stopper.best:.4f} (epoch {trainer.stopper.best_epoch})"),
              file=sys.stderr)
    source = "" if row["weights"] == "model" else f"({row['weights']}) "
    print(f"epoch {epoch:3d}  train loss {row['train_loss']:.4f} acc {row['train_accuracy']:.3f}  "
          f"val {source}loss {row['val_loss']:.4f} acc {row['val_accuracy']:.3f} auc {row['val_auc']:.3f} "
          f"bal.acc {row['val_balanced_accuracy']:.3f}  lr {row['lr']:.2e}  {row['seconds']:.1f}s"
          f"{'  *best' if row['best'] else ''}", file=sys.stderr, flush=True)


def _finish(trainer, stop_reason):
    """Restore the best weights into the model and write the curves, however training ended.
    A run whose monitored value was never a finite number has no best weights: that is an error
    (exit 1), stated with the epochs, never reported as 'best weights restored'."""
    cfg, run_dir, stopper, history = trainer.cfg, trainer.run_dir, trainer.stopper, trainer.history
    if trainer.writer is not None:
        trainer.writer.close()
    if history:
        plot_curves(run_dir / "curves.png", history, cfg["monitor"], stopper.best_epoch)
    best_path = run_dir / "best.pt"
    if stopper.best_epoch is None or not best_path.is_file():
        if stop_reason == "interrupted":
            return None
        raise MedclfError(
            f"{run_dir}: {cfg['monitor']} was not a finite number in any of the {len(history)} epoch(s) "
            f"(see history.csv), so no best.pt was written and there are no weights to use; check the val "
            f"split (val_auc is NaN when it holds one class), lower --lr, or monitor another value (--monitor)")
    trainer.model.load_state_dict(load_checkpoint(best_path)["state_dict"])
    non_finite = [r["epoch"] for r in history if not math.isfinite(float(r[cfg["monitor"]]))]
    note = f"; {cfg['monitor']} was NaN in epoch(s) {non_finite} (counted as no improvement)" if non_finite else ""
    weights = history[stopper.best_epoch - 1].get("weights", "model")
    source = "" if weights == "model" else f" ({weights.upper()} weights)"
    print(f"medclf train: {stop_reason} after {len(history)} epoch(s); best {cfg['monitor']} "
          f"{stopper.best:.4f} at epoch {stopper.best_epoch}{source}; best weights restored from {best_path}{note}",
          file=sys.stderr)
    return {"run": str(run_dir), "epochs": len(history), "best_epoch": stopper.best_epoch, "weights": weights,
            "best_value": stopper.best, "monitor": cfg["monitor"], "stopped": stop_reason, "model": trainer.model}
