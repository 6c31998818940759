"""Seed 002 (d-f/basic-image-classification) compatibility: the logic behind
python/train_torchvision.py and python/test_torchvision.py.

They accept the original README commands unchanged (single-dash long flags, `-img_shape 3 224 224`,
`-architecture resnet18|vgg|densenet`, `-use_GPU` and `--use_GPU`), read the original project
layout (`csv/{train,val,test}.csv` headerless `filename,class_idx`, images in `bin/`), train and
test through medclf, and write the original outputs beside medclf's run folder
`<project>/results/medclf_<name>/`:
  models/<model_save_name>                 {'state_dict', 'optimizer'} (tensors and plain data)
  results/<name>_loss_values.json          [[epoch, value], ...] per key
  results/<name>_hyperparameters.json
  <project>/<result_json_name>             the four keys labels, predictions, predictive
                                           probabilities (softmax here, logits in the original),
                                           label probabilities
"""

import argparse
import sys
from pathlib import Path

from medclf.core.errors import MedclfError
from medclf.core.fileio import write_json

ARCHITECTURES = ("resnet18", "vgg", "densenet")
_KNOWN_SUFFIXES = (".pth.tar", ".pth", ".pt", ".tar", ".ckpt", ".bin")


def strip_model_suffix(name):
    """resnet_1.pth.tar -> resnet_1 (the original cut 8 characters whatever the suffix)."""
    for suffix in _KNOWN_SUFFIXES:
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def _square_size(shape, flag):
    try:
        values = [int("".join(v) if isinstance(v, list) else v) for v in shape]
    except ValueError:
        raise MedclfError(f"{flag} {' '.join(shape)}: give channels, height and width, e.g. 3 224 224") from None
    height, width = (values[-2], values[-1]) if len(values) >= 2 else (values[0], values[0])
    if height != width:
        print(f"warning: {flag} {height}x{width}: medclf uses square inputs; using {height}x{height}", file=sys.stderr)
    return height


def _layout(project_directory):
    project = Path(project_directory)
    if not (project / "csv").is_dir() or not (project / "bin").is_dir():
        raise MedclfError(f"{project}: expected the original layout with csv/ and bin/; create it with "
                          "`medclf organize --layout seed002` (or the original organize_files.sh)")
    return project


def train_parser():
    p = argparse.ArgumentParser(description="Train a torchvision model (seed 002 command line, run by medclf).")
    p.add_argument("-project_directory", "--project_directory", type=Path, required=True)
    p.add_argument("-num_epochs", "--num_epochs", type=int, required=True)
    p.add_argument("-num_classes", "--num_classes", type=int, default=None)
    p.add_argument("-learning_rate", "--learning_rate", type=float, default=1e-3)
    p.add_argument("-patience", "--patience", type=int, default=5)
    p.add_argument("-batch_size", "--batch_size", type=int, default=25)
    p.add_argument("-model_save_name", "--model_save_name", required=True)
    p.add_argument("-img_shape", "--img_shape", nargs="+", default=["3", "224", "224"])
    p.add_argument("-architecture", "--architecture", choices=ARCHITECTURES, default="resnet18")
    p.add_argument("-use_GPU", "--use_GPU", dest="use_GPU", action="store_true")
    p.add_argument("-seed", "--seed", type=int, default=0, help="(medclf) random seed")
    p.add_argument("-progress", "--progress", action="store_true", help="(medclf) show progress bars")
    return p


def _check_classes(table, num_classes, flag):
    if num_classes is not None and num_classes != len(table.classes):
        raise MedclfError(f"{flag} {num_classes}: the csv files hold {len(table.classes)} classes")


def train_main(argv=None):
    import torch

    from medclf.core.splits import read_splits
    from medclf.train.training import build_optimizer, load_checkpoint, run_training

    args = train_parser().parse_args(argv)
    project = _layout(args.project_directory)
    name = strip_model_suffix(args.model_save_name)
    table = read_splits(project / "csv", data_root=project / "bin")
    _check_classes(table, args.num_classes, "-num_classes")
    summary = run_training({
        "splits": str(project / "csv"), "data_root": str(project / "bin"), "arch": args.architecture,
        "epochs": args.num_epochs, "patience": args.patience, "lr": args.learning_rate,
        "batch_size": args.batch_size, "img_size": _square_size(args.img_shape, "-img_shape"),
        "device": "cuda" if args.use_GPU else "cpu", "out": str(project / "results"),
        "run_name": f"medclf_{name}", "seed": args.seed, "progress": args.progress,
    })
    run_dir = Path(summary["run"])
    best = load_checkpoint(run_dir / "best.pt")
    last = load_checkpoint(run_dir / "last.pt")
    (project / "models").mkdir(exist_ok=True)
    from medclf.train.training import save_checkpoint

    save_checkpoint(project / "models" / args.model_save_name,
                    {"state_dict": best["state_dict"], "optimizer": last["optimizer"]})
    history = last["history"]
    write_json(project / "results" / f"{name}_loss_values.json", {
        "loss values": [[r["epoch"], r["train_loss"]] for r in history],
        "accuracy values": [[r["epoch"], r["train_accuracy"]] for r in history],
        "val loss values": [[r["epoch"], r["val_loss"]] for r in history],
        "val accuracy values": [[r["epoch"], r["val_accuracy"]] for r in history],
    })
    defaults = build_optimizer("adam", [torch.zeros(1, requires_grad=True)], args.learning_rate, 0.0).defaults
    write_json(project / "results" / f"{name}_hyperparameters.json", {
        "batch size": args.batch_size, "model save name": args.model_save_name,
        "optimizer": {k: (list(v) if isinstance(v, tuple) else v) for k, v in defaults.items()},
        "train dataset": "train.csv", "validation dataset": "val.csv", "patience": args.patience,
    })
    print(f"saved {project / 'models' / args.model_save_name} (best epoch {best['epoch']}); run folder {run_dir}")
    return 0


def test_parser():
    p = argparse.ArgumentParser(description="Test a torchvision model (seed 002 command line, run by medclf).")
    p.add_argument("-dir", "--project_directory", dest="project_directory", type=Path, required=True)
    p.add_argument("-classes", "--num_classes", dest="num_classes", type=int, default=None)
    p.add_argument("-batch_size", "--batch_size", type=int, default=100)
    p.add_argument("-save", "--model_load_name", dest="model_load_name", required=True)
    p.add_argument("-architecture", "--architecture", choices=ARCHITECTURES, default="resnet18")
    p.add_argument("-result_json_name", "--result_json_name", required=True)
    p.add_argument("-use_GPU", "--use_GPU", dest="use_GPU", action="store_true")
    p.add_argument("-img_size", "--img_size", nargs="+", default=["3", "224", "224"])
    p.add_argument("-progress", "--progress", action="store_true", help="(medclf) show progress bars")
    return p


def four_key_predictions(record):
    """Seed 002's predictions JSON: its four keys only, in its order."""
    return {key: record[key] for key in ("labels", "predictions", "predictive probabilities", "label probabilities")}


def test_main(argv=None):
    from medclf.core.fileio import read_json
    from medclf.core.run_config import read_run_config
    from medclf.infer.predict import run_test

    args = test_parser().parse_args(argv)
    project = _layout(args.project_directory)
    name = strip_model_suffix(args.model_load_name)
    run_dir = project / "results" / f"medclf_{name}"
    if not (run_dir / "config.json").is_file():
        raise MedclfError(f"{run_dir}: no medclf run for {args.model_load_name}; train it with "
                          "python/train_torchvision.py (which writes this folder beside models/)")
    config = read_run_config(run_dir / "config.json")
    if config["architecture"] != {"vgg": "vgg11_bn", "densenet": "densenet121"}.get(args.architecture,
                                                                                   args.architecture):
        raise MedclfError(f"-architecture {args.architecture}: the model was trained as {config['architecture']}")
    if args.num_classes is not None and args.num_classes != len(config["classes"]):
        raise MedclfError(f"-classes {args.num_classes}: the model has {len(config['classes'])} classes")
    _square_size(args.img_size, "-img_size")
    written = run_test(run_dir, "test", splits=str(project / "csv"), data_root=str(project / "bin"),
                       device="cuda" if args.use_GPU else "cpu", batch_size=args.batch_size,
                       progress=args.progress)
    record = read_json(written[0])
    write_json(project / args.result_json_name, four_key_predictions(record))
    print(f"wrote {project / args.result_json_name} ({len(record['labels'])} images) and {written[0]}")
    return 0


def main(entry, argv=None):
    try:
        return entry(argv)
    except MedclfError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
