"""`medclf embed`: penultimate-layer embeddings of every image of a splits file, in one .npz.

The model is a run's best.pt (`--run`, with the run's input size and normalisation), or any
torchvision architecture with weights (`--arch A --weights imagenet|PATH`, `--img-size`, the
weights' normalisation, else the train split's channel statistics). Its classifier head (the last
Linear, or squeezenet's 1x1 conv) is replaced by the identity, so the output is what the head
would have read: 512 numbers per image for ResNet-18.

The .npz (medclf.embeddings/1; numpy.load(path) reads it without pickle):
  embeddings  float32 (N, D)        paths   (N,) as in splits.csv     splits  (N,) train|val|test
  labels      int64 (N,) class indices      classes (K,) class names
  meta        JSON text: schema, source (run or arch/weights), architecture, img_size,
              normalisation, splits file, data_root, positive_class, checkpoint epoch,
              seconds (decoding and the forward passes), library_versions, git_commit
"""

import json
import sys
import time
from pathlib import Path

import numpy as np

from medclf.core import schemas
from medclf.core.errors import MedclfError
from medclf.core.fileio import atomic_path

ARRAYS = ("embeddings", "paths", "splits", "labels", "classes", "meta")


def _log(message):
    print(f"medclf embed: {message}", file=sys.stderr, flush=True)


def _run_source(run_dir, splits, data_root, device):
    from medclf.core.splits import load_run_splits, read_splits
    from medclf.data import transforms
    from medclf.infer.predict import load_run

    model, config, checkpoint = load_run(run_dir, device)
    args, norm = config["arguments"], config["normalisation"]
    table = (read_splits(splits, data_root=data_root or config.get("data_root")) if splits
             else load_run_splits(run_dir, config, data_root))
    run_input = transforms.eval_input(config)
    side, transform = run_input.side, run_input.transform
    meta = {"source": {"run": str(run_dir)}, "architecture": config["architecture"], "img_size": args["img_size"],
            "normalisation": norm, "checkpoint_epoch": int(checkpoint.get("epoch", 0)) or None}
    return model, table, side, transform, meta


def _weights_source(arch, weights, splits, data_root, img_size, device, progress):
    from medclf.core.splits import read_splits
    from medclf.data import datasets as data_mod
    from medclf.data import transforms
    from medclf.models import architectures as models

    if not splits:
        raise MedclfError("--arch needs --splits (the images to embed)")
    models.check_weights(weights, arch)
    table = read_splits(splits, data_root=data_root)
    model, info = models.build_model(arch, len(table.classes), weights)
    mean, std = info["mean"], info["std"]
    if mean is None:  # from-scratch or foreign weights: the train split's own statistics
        files, _, _ = data_mod.split_paths(table, "train")
        if not files:
            raise MedclfError(f"{table.source}: no train images to compute the normalisation from")
        mean, std = data_mod.channel_stats(data_mod.build_cache(files, img_size, "memory", progress=progress))
    transform = transforms.eval_transform("none", img_size, mean, std)
    meta = {"source": {"arch": info["architecture"], "weights": info["weights"]}, "architecture": info["architecture"],
            "img_size": img_size, "normalisation": {"mean": list(mean), "std": list(std)}, "checkpoint_epoch": None}
    return model.to(device).eval(), table, img_size, transform, meta


def embed_table(model, table, side, transform, precision, batch_size, progress):
    """(embeddings (N, D) float32, paths, splits, labels) over every row, in file order; the forward
    passes in `precision` (an engine.precision.Precision)."""
    import torch
    from tqdm import tqdm

    from medclf.data import datasets as data_mod

    frame = table.frame
    cache = data_mod.build_cache([table.resolve(p) for p in frame["path"]], side, "memory", progress=progress)
    loader = data_mod.make_loader(data_mod.CachedImageDataset(cache, frame["label_index"].tolist(), transform),
                                  batch_size)
    chunks = []
    with torch.inference_mode(), precision.autocast():
        for images, _ in tqdm(loader, desc="embed", unit="batch", disable=not progress, file=sys.stderr):
            chunks.append(model(precision.to_device(images)).float().flatten(1).cpu().numpy())
    return (np.concatenate(chunks).astype(np.float32), list(frame["path"]), list(frame["split"]),
            frame["label_index"].astype(np.int64).to_numpy())


def write_embeddings(path, embeddings, paths, splits, labels, classes, meta):
    """One compressed .npz, written atomically; text arrays as unicode (no pickle needed to read)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, embeddings=embeddings, paths=np.asarray(paths, dtype=str),
                            splits=np.asarray(splits, dtype=str), labels=np.asarray(labels, dtype=np.int64),
                            classes=np.asarray(classes, dtype=str), meta=np.asarray(json.dumps(meta)))


def read_embeddings(path):
    """The .npz as a dict of arrays plus `meta` (a dict), refusing another file."""
    path = Path(path)
    if not path.is_file():
        raise MedclfError(f"{path}: embeddings file not found; write it with `medclf embed --out {path}`")
    try:
        with np.load(path, allow_pickle=False) as npz:
            data = {name: npz[name] for name in ARRAYS}
    except (OSError, ValueError, KeyError) as exc:
        raise MedclfError(f"{path}: not an embeddings file of `medclf embed` ({exc}); re-create it") from exc
    data["meta"] = json.loads(str(data["meta"]))
    if data["meta"].get("schema") != schemas.EMBEDDINGS:
        raise MedclfError(f"{path}: schema {data['meta'].get('schema')!r} is not {schemas.EMBEDDINGS}; re-create it")
    return data


def run_embed(out, run_dir=None, arch=None, weights="none", splits=None, data_root=None, img_size=224,
              device="auto", batch_size=64, progress=True, amp=False):
    """Write OUT (.npz) with the embeddings of every image of the splits file; returns its meta.
    amp: False (the default) embeds in fp32, True in the device's mixed precision (--amp)."""
    from medclf.core.provenance import git_commit, library_versions
    from medclf.engine.precision import choose_precision, select_device
    from medclf.models import architectures as models  # torch: `medclf probe` reads embeddings without it

    device = select_device(device)
    if (run_dir is None) == (arch is None):
        raise MedclfError("give either --run RUN or --arch ARCH (with --weights and --splits)")
    if run_dir is not None:
        model, table, side, transform, meta = _run_source(run_dir, splits, data_root, device)
    else:
        model, table, side, transform, meta = _weights_source(arch, weights, splits, data_root, img_size, device,
                                                              progress)
    models.remove_head(model, "embed needs a torchvision classification model")
    precision = choose_precision(device, bool(amp))
    model = precision.prepare_model(model).eval()
    _log(f"{meta['architecture']} on {len(table.frame)} images of {table.source}")
    started = time.perf_counter()
    embeddings, paths, split_names, labels = embed_table(model, table, side, transform, precision, batch_size, progress)
    meta = {"schema": schemas.EMBEDDINGS, **meta, "splits_file": str(table.source),
            "data_root": str(table.data_root), "positive_class": table.positive_class, "dim": int(embeddings.shape[1]),
            "seconds": round(time.perf_counter() - started, 3), "inference": precision.record(),
            "library_versions": library_versions(), "git_commit": git_commit()}
    write_embeddings(out, embeddings, paths, split_names, labels, list(table.classes), meta)
    return meta
