"""`medclf explain`: heat maps of a run's best.pt on images of a split, with faithfulness checks.

Reads `results/<run>/config.json`, best.pt (through `predict.load_run`) and
`predictions_<split>.json` (written by `medclf test`), picks images (round-robin over TP / FP /
FN / TN for a binary run, over true classes for a multi-class run; or `--paths`) and writes into
`results/<run>/explain/<split>/<method>/` (or --out):

  overlays/NNN_<name>.png   original, heat map, overlay; predicted and true class with probability
  contact_sheet.png         every overlay, one row per group
  faithfulness.png          deletion and insertion curves, map order vs random order
  explain.json              medclf.explain/1: method, target_layer, target, images[{path, label,
                            prediction, probability, target_class, group, file}], faithfulness,
                            sanity_check {stages[{randomised, rank_correlation}], passed},
                            arguments, library_versions, git_commit
"""

import sys
from pathlib import Path

import numpy as np
import torch

from medclf.core import schemas
from medclf.core.errors import MedclfError, UnreadableImageError
from medclf.core.fileio import atomic_path, write_json
from medclf.core.predictions import read_run_predictions
from medclf.core.splits import read_splits
from medclf.data import transforms
from medclf.data.imageio import read_image
from medclf.data.preprocess import resize_and_crop
from medclf.engine.precision import select_device
from medclf.explain import faithfulness as F
from medclf.explain import heatmap
from medclf.infer.predict import inference_precision, load_run
from medclf.models import metadata

BINARY_GROUPS = ("TP", "FP", "FN", "TN")


def _log(message):
    print(f"medclf explain: {message}", file=sys.stderr, flush=True)


def positive_index(record):
    classes = [str(c) for c in record["classes"]]
    positive = record.get("positive_class")
    return classes.index(str(positive)) if positive is not None and str(positive) in classes else len(classes) - 1


def image_groups(record):
    """One group name per image: TP/FP/FN/TN (binary, against the positive class) or the true class."""
    classes = [str(c) for c in record["classes"]]
    if len(classes) != 2:
        return [classes[y] for y in record["labels"]]
    pos = positive_index(record)
    return [("T" if (p == pos) == (y == pos) else "F") + ("P" if p == pos else "N")
            for y, p in zip(record["labels"], record["predictions"])]


def select_images(record, n=24, paths=None):
    """Indices into the predictions file: the named paths, else round-robin over the groups
    (in file order inside a group) until n are taken."""
    if paths:
        where = {p: i for i, p in enumerate(record["paths"])}
        missing = [p for p in paths if p not in where]
        if missing:
            raise MedclfError(f"--paths {missing[0]}: not in predictions_{record['split']}.json; give paths as "
                              "they appear in splits.csv (relative to the data root)")
        return [where[p] for p in paths]
    groups = image_groups(record)
    order = list(BINARY_GROUPS) if len(record["classes"]) == 2 else [str(c) for c in record["classes"]]
    queues = [[i for i, g in enumerate(groups) if g == name] for name in order]
    chosen = []
    while len(chosen) < n and any(queues):
        for queue in queues:
            if queue and len(chosen) < n:
                chosen.append(queue.pop(0))
    return sorted(chosen, key=lambda i: (order.index(groups[i]), i))


def target_classes(record, indices, target):
    """Class index explained for each image: predicted, true, or one named class."""
    if target == "predicted":
        return [record["predictions"][i] for i in indices]
    if target == "true":
        return [record["labels"][i] for i in indices]
    classes = [str(c) for c in record["classes"]]
    if target not in classes:
        raise MedclfError(f"--target {target}: not a class of this run; use predicted, true or one of {', '.join(classes)}")
    return [classes.index(target)] * len(indices)


def load_images(config, rel_paths):
    """(normalised float tensor (N, 3, S, S), uint8 display array (N, S, S, 3)) as the model saw them."""
    args = config["arguments"]
    table = read_splits(config.get("splits_file") or args["splits"], data_root=config.get("data_root"))
    run_input = transforms.eval_input(config)
    side, transform, view = run_input.side, run_input.transform, run_input.view
    tensors, display = [], []
    for rel in rel_paths:
        try:
            img = resize_and_crop(read_image(table.resolve(rel)), side)
        except UnreadableImageError as exc:
            raise MedclfError(f"{exc}; restore the file or leave it out with --paths") from exc
        pixels = torch.from_numpy(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1).copy())
        tensors.append(transform(pixels))
        display.append(view(pixels))
    shown = (torch.stack(display).permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    return torch.stack(tensors), shown


def overlay(image, heat):
    """The image (uint8) at 55% under the jet-coloured map at 45%, as float RGB in [0, 1]."""
    import matplotlib

    colours = matplotlib.colormaps["jet"](heat)[..., :3]
    return (0.55 * image / 255.0 + 0.45 * colours).clip(0, 1)


def _caption(record, i, target):
    classes = [str(c) for c in record["classes"]]
    pred, true = record["predictions"][i], record["labels"][i]
    return (f"pred {classes[pred]} {record['probabilities'][i][pred]:.2f}\ntrue {classes[true]}"
            f" | map: {classes[target]}")


def _save(fig, path):
    """Atomic PNG with an adaptive 256-colour palette: a 24-image contact sheet stays ~100 KB."""
    import io

    from matplotlib import pyplot as plt
    from PIL import Image

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    buffer.seek(0)
    with Image.open(buffer) as img, atomic_path(path) as tmp:
        img.convert("RGB").quantize(256).save(tmp, format="PNG", optimize=True)


def write_overlay(path, image, heat, caption):
    """One PNG: original, heat map, overlay, with the caption above."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(6.0, 2.4), dpi=100)
    for ax, (title, shown) in zip(axes, [("image", image), ("heat map", heat), ("overlay", overlay(image, heat))]):
        ax.imshow(shown, cmap="jet" if shown is heat else None, vmin=0, vmax=1 if shown is heat else None)
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    fig.suptitle(caption.replace("\n", "; "), fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def write_contact_sheet(path, images, maps, groups, captions, title):
    """Every overlay in a grid, one row per group (TP/FP/FN/TN or class), at most 8 per row."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    names = list(dict.fromkeys(groups))
    per_row = max(1, min(8, max(groups.count(g) for g in names)))
    fig, axes = plt.subplots(len(names), per_row, figsize=(1.35 * per_row + 0.4, 1.5 * len(names) + 0.4),
                             dpi=80, squeeze=False)
    for row, name in enumerate(names):
        members = [i for i, g in enumerate(groups) if g == name][:per_row]
        for col in range(per_row):
            ax = axes[row][col]
            ax.axis("off")
            if col < len(members):
                ax.imshow(overlay(images[members[col]], maps[members[col]]))
                ax.set_title(captions[members[col]].split("\n")[0], fontsize=6)
        axes[row][0].text(-0.08, 0.5, name, transform=axes[row][0].transAxes, ha="right", va="center", fontsize=9)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def write_faithfulness_plot(path, result, title):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(6.4, 2.8), dpi=80)
    for ax, curve in zip(axes, ("deletion", "insertion")):
        for source, style in (("map", "-"), ("random", "--")):
            r = result[source]
            ax.plot(r["fractions"], r[curve], style, label=f"{source} (area {r[curve + '_auc']:.3f})")
        ax.set_xlabel(f"fraction of pixels {'removed' if curve == 'deletion' else 'inserted'}")
        ax.set_ylabel("P(explained class)")
        ax.set_title(curve, fontsize=9)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def _batched_maps(scorers, images, targets, method, layer, batch=16):
    """Maps in batches of `batch`, or one image at a time when each has its own model (metadata runs)."""
    if len({id(m) for m in scorers}) > 1:
        return np.concatenate([heatmap.heatmaps(m, images[i:i + 1], targets[i:i + 1], method, layer)
                               for i, m in enumerate(scorers)])
    return np.concatenate([heatmap.heatmaps(scorers[0], images[i:i + batch], targets[i:i + batch], method, layer)
                           for i in range(0, len(images), batch)])


def _mean(values):
    """Element-wise mean of equally shaped JSON records (numbers averaged, anything else from the first)."""
    first = values[0]
    if isinstance(first, dict):
        return {k: _mean([v[k] for v in values]) for k in first}
    if isinstance(first, list) and first and all(isinstance(v, list) and len(v) == len(first) for v in values):
        return [_mean(list(column)) for column in zip(*values)]
    if isinstance(first, (int, float)) and not isinstance(first, bool):
        return float(np.mean(values))
    return first


def _check(scorers, check, images, targets, maps):
    """`check(model, images, targets, maps)` on the batch, or per image (each with its own
    model) averaged over the images: the batched checks' means, image by image."""
    if len({id(m) for m in scorers}) == 1:
        return check(scorers[0], images, targets, maps)
    return _mean([check(m, images[i:i + 1], targets[i:i + 1], maps[i:i + 1]) for i, m in enumerate(scorers)])


def _image_entries(record, indices, groups, targets, files):
    classes = [str(c) for c in record["classes"]]
    return [{"path": record["paths"][i], "label": classes[record["labels"][i]],
             "prediction": classes[record["predictions"][i]],
             "probability": float(record["probabilities"][i][record["predictions"][i]]),
             "target_class": classes[t], "group": g, "file": f}
            for i, g, t, f in zip(indices, groups, targets, files)]


def write_pictures(out, record, indices, targets, shown, maps, title, progress=True):
    """Overlays (one per image) and the contact sheet; returns the overlay names relative to out."""
    from tqdm import tqdm

    groups = [image_groups(record)[i] for i in indices]
    captions = [_caption(record, i, t) for i, t in zip(indices, targets)]
    files = []
    for k, i in enumerate(tqdm(indices, desc="overlays", disable=not progress, leave=False, file=sys.stderr)):
        name = f"overlays/{k:03d}_{Path(record['paths'][i]).stem}.png"
        write_overlay(out / name, shown[k], maps[k], captions[k])
        files.append(name)
    write_contact_sheet(out / "contact_sheet.png", shown, maps, groups, captions, title)
    return _image_entries(record, indices, groups, targets, files)


def run_checks(summary, scorers, images, targets, maps, out, title, steps, seed, sanity_threshold, faithfulness,
               sanity, precision):
    """Deletion/insertion (with faithfulness.png; its forward passes in `precision`) and the
    cascading-randomisation check, into summary."""
    method, layer = summary["method"], summary["target_layer"]
    if faithfulness:
        with precision.autocast():
            summary["faithfulness"] = _check(scorers, lambda m, x, t, h: F.faithfulness(m, x, t, h, steps, seed),
                                             images, targets, maps)
        summary["faithfulness"]["n_images"] = len(images)
        write_faithfulness_plot(out / "faithfulness.png", summary["faithfulness"], title)
    if sanity:
        check = _check(scorers, lambda m, x, t, h: F.sanity_check(m, x, t, h, method, layer, seed, sanity_threshold),
                       images, targets, maps)
        check["passed"] = bool(abs(check["final_rank_correlation"]) < sanity_threshold)
        summary["sanity_check"] = check
        if not check["passed"]:
            _log(f"warning: {method} FAILED the randomisation sanity check (rank correlation "
                 f"{check['final_rank_correlation']:.3f}, |rho| >= {sanity_threshold} with every block "
                 "randomised): its maps do not depend on what the model learned")


def run_explain(run_dir, split="test", method="gradcam", n=24, paths=None, target="predicted", target_layer=None,
                out_dir=None, device="auto", faithfulness=True, sanity=True, sanity_threshold=F.SANITY_THRESHOLD,
                steps=F.DEFAULT_STEPS, seed=0, progress=True, amp=None):
    """Write overlays, the contact sheet, faithfulness.png and explain.json into
    RUN/explain/SPLIT/METHOD (or out_dir); returns (explain.json, contact_sheet.png, summary).
    amp (--amp/--no-amp, None = as the run was trained) sets the precision of the deletion/insertion
    forward passes; the maps are computed in fp32 (the CAM library reads activations and gradients
    as numpy arrays, which have no bf16)."""
    from medclf.core.provenance import git_commit, library_versions

    run_dir = Path(run_dir)
    record = read_run_predictions(run_dir, split)
    device = select_device(device)
    model, config, _ = load_run(run_dir, device)
    precision = inference_precision(config, device, amp)
    fused = config.get("metadata") is not None
    layer = target_layer or (heatmap.fusion_target_layer(model, config["architecture"]) if fused
                             else heatmap.find_target_layer(model, config["architecture"]))
    indices = select_images(record, n, paths)
    if not indices:
        raise MedclfError(f"{run_dir}/predictions_{split}.json: no images to explain; use --n 1 or more")
    targets = target_classes(record, indices, target)
    images, shown = load_images(config, [record["paths"][i] for i in indices])
    images = images.to(device)
    table = read_splits(config.get("splits_file") or config["arguments"]["splits"],
                        data_root=config.get("data_root")) if fused else None  # the metadata columns
    scorers = metadata.image_only_models(model, config, table, [record["paths"][i] for i in indices])
    _log(f"{method} on {len(indices)} {split} images, target layer {layer}")
    maps = _batched_maps(scorers, images, targets, method, layer)
    out = Path(out_dir) if out_dir else run_dir / "explain" / split / method
    title = f"{method}, {config['architecture']} {run_dir.name}, {split} split"
    summary = {"schema": schemas.EXPLAIN, "run": str(run_dir), "split": split, "method": method,
               "target_layer": layer, "target": target, "architecture": config["architecture"],
               "images": write_pictures(out, record, indices, targets, shown, maps, title, progress),
               "faithfulness": None, "sanity_check": None,
               "inference": {**precision.record(), "maps": "fp32"},
               "arguments": {"n": n, "paths": paths, "steps": steps, "seed": seed,
                             "sanity_threshold": sanity_threshold},
               "library_versions": _versions(library_versions()), "git_commit": git_commit()}
    run_checks(summary, scorers, images, targets, maps, out, title, steps, seed, sanity_threshold, faithfulness, sanity,
               precision)
    write_json(out / "explain.json", summary)
    return out / "explain.json", out / "contact_sheet.png", summary


def _versions(base):
    from importlib.metadata import PackageNotFoundError, version

    for name in ("grad-cam", "captum"):
        try:
            base[name] = version(name)
        except PackageNotFoundError:
            base[name] = None
    return base
