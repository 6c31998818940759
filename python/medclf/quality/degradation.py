"""Degradation study: how the quality measures, the model and the gate respond to synthetic damage.

Each test image (full resolution, as read by `imageio.read_image`) is degraded by one kind at one
strength, then measured (`quality.measure_image`), predicted by the run's best.pt (the same resize,
crop and normalisation as `medclf test`) and judged by the gate. Kinds and strengths (the first of
each is the clean image):
  blur      Gaussian sigma 0, 0.5, 1, 2, 4, in pixels of the 128-px measuring scale (multiplied by
            shorter side / 128 on the file), so the same sigma blurs a small and a large file alike
  gamma     out = in ** gamma on [0, 1]: 1, 1.5, 2, 3, 4 (darker)
  contrast  PIL ImageEnhance.Contrast factor 1, 0.75, 0.5, 0.25, 0.1 (towards the mean grey)
  jpeg      re-encoded at JPEG quality 95, 50, 20, 10, 5
The false-reject rate is the fraction of clean test images the gate rejects, with its exact
Clopper-Pearson 95% interval.
"""

import io
import sys

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageFilter

from medclf.data import transforms
from medclf.data.imageio import read_image
from medclf.data.preprocess import resize_and_crop
from medclf.engine.steps import probabilities_from_logits
from medclf.evaluate import metrics
from medclf.quality import gate as quality

DEGRADATIONS = {
    "blur": [0, 0.5, 1, 2, 4],
    "gamma": [1, 1.5, 2, 3, 4],
    "contrast": [1, 0.75, 0.5, 0.25, 0.1],
    "jpeg": [95, 50, 20, 10, 5],
}
PLOTTED_MEASURES = ("laplacian_var", "tenengrad", "contrast_range", "contrast_rms", "mean_luminance")


def degrade(img, kind, strength):
    """One degraded copy of an RGB PIL image (the original is not changed)."""
    if kind == "blur":
        sigma = strength * min(img.size) / quality.MEASURE_SIDE
        return img.copy() if sigma == 0 else img.filter(ImageFilter.GaussianBlur(sigma))
    if kind == "gamma":
        table = [round(255 * (v / 255) ** strength) for v in range(256)] * 3
        return img.point(table)
    if kind == "contrast":
        return ImageEnhance.Contrast(img).enhance(strength)
    if kind == "jpeg":
        buffer = io.BytesIO()
        img.save(buffer, format="JPEG", quality=int(strength))
        buffer.seek(0)
        with Image.open(buffer) as out:
            return out.convert("RGB")
    raise ValueError(f"unknown degradation {kind!r}")


def _model_input(config):
    run_input = transforms.eval_input(config)
    side, transform = run_input.side, run_input.transform

    def to_tensor(img):
        pixels = np.asarray(resize_and_crop(img, side), dtype=np.uint8).transpose(2, 0, 1).copy()
        return transform(torch.from_numpy(pixels))
    return to_tensor


def score(labels, probabilities, positive):
    """(AUC, balanced accuracy): binary AUC of the positive class, else macro one-vs-rest."""
    labels = np.asarray(labels)
    probabilities = np.asarray(probabilities)
    if probabilities.shape[1] == 2:
        auc = metrics.roc_auc(labels == positive, probabilities[:, positive])
    else:
        auc = metrics.roc_auc_ovr_macro(labels, probabilities)
    return auc, metrics.balanced_accuracy(labels, probabilities.argmax(1), probabilities.shape[1])


def _condition(model, images, labels, to_tensor, gate, positive, kind, strength, precision):
    rows, tensors = [], []
    for img in images:
        damaged = degrade(img, kind, strength)
        rows.append(quality.measure_image(damaged))
        tensors.append(to_tensor(damaged))
    with torch.no_grad(), precision.autocast():
        logits = torch.cat([model(precision.to_device(torch.stack(tensors[i:i + 64]))).float().cpu()
                            for i in range(0, len(tensors), 64)])
    probs = probabilities_from_logits(logits).numpy()
    auc, bacc = score(labels, probs, positive)
    verdicts = [quality.gate_verdict(r, gate["rules"]) for r in rows]
    out = {"kind": kind, "strength": strength, "n": len(images), "auc": auc, "balanced_accuracy": bacc,
           "rejected_fraction": float(np.mean([v != "passed" for v in verdicts]))}
    out.update({m: float(np.mean([r[m] for r in rows])) for m in PLOTTED_MEASURES})
    return out, verdicts


def run_degradation(model, config, files, labels, gate, positive, precision, progress=True):
    """(rows, false_reject): one row per (kind, strength) and the clean gate's false-reject rate; the
    model (on precision.device) predicts in `precision` (an engine.precision.Precision)."""
    from tqdm import tqdm

    images = [read_image(f) for f in files]
    to_tensor = _model_input(config)
    rows, clean_verdicts = [], None
    steps = [(k, s) for k, strengths in DEGRADATIONS.items() for s in strengths]
    for kind, strength in tqdm(steps, desc="degradation", disable=not progress, leave=False, file=sys.stderr):
        row, verdicts = _condition(model, images, labels, to_tensor, gate, positive, kind, strength, precision)
        rows.append(row)
        if clean_verdicts is None:
            clean_verdicts = verdicts  # blur sigma 0 is the clean image
    rejected = sum(v != "passed" for v in clean_verdicts)
    false_reject = metrics.proportion(rejected, len(clean_verdicts), "no test images")
    false_reject.update({"rejected": int(rejected), "n": len(clean_verdicts)})
    return rows, false_reject


def write_degradation_plot(path, rows, false_reject, title):
    """One row of panels per kind: measures relative to clean, AUC and balanced accuracy, rejected fraction."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    from medclf.core.fileio import atomic_path

    kinds = list(DEGRADATIONS)
    fig, axes = plt.subplots(len(kinds), 3, figsize=(9.5, 2.2 * len(kinds) + 0.6), dpi=80, squeeze=False)
    for r, kind in enumerate(kinds):
        sub = [row for row in rows if row["kind"] == kind]
        x = [row["strength"] for row in sub]
        for m in PLOTTED_MEASURES:
            base = sub[0][m] or 1.0
            axes[r][0].plot(x, [row[m] / base for row in sub], marker="o", label=m)
        axes[r][1].plot(x, [row["auc"] for row in sub], marker="o", label="AUC")
        axes[r][1].plot(x, [row["balanced_accuracy"] for row in sub], marker="s", label="balanced accuracy")
        axes[r][2].plot(x, [row["rejected_fraction"] for row in sub], marker="o", color="C3")
        axes[r][0].set_ylabel(f"{kind}\nmeasure / clean", fontsize=8)
        axes[r][1].set_ylim(0, 1.02)
        axes[r][2].set_ylim(-0.02, 1.02)
        for ax in axes[r]:
            ax.set_xlabel(kind if kind != "blur" else "blur sigma (128-px scale)", fontsize=7)
            ax.tick_params(labelsize=7)
    axes[0][0].legend(fontsize=6)
    axes[0][1].legend(fontsize=6)
    axes[0][0].set_title("quality measures", fontsize=9)
    axes[0][1].set_title("model", fontsize=9)
    fr = false_reject
    axes[0][2].set_title(f"rejected by the gate\n(clean: {fr['rejected']}/{fr['n']}, CI "
                         f"{fr['lower']:.3f}-{fr['upper']:.3f})", fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
