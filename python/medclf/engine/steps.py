"""One training epoch, evaluation and prediction (in the style of torchvision's references).

Outputs are accumulated on the CPU and metrics are computed once per epoch over the whole split
(AUC is not an average of per-batch AUCs). A model has either K logits (softmax) or one logit
(sigmoid, binary); `probabilities_from_logits` turns both into K columns. `precision` is a
`medclf.engine.precision.Precision` (device, autocast, memory layout); the default is fp32 on the CPU.
"""

import numpy as np
import torch
from torch.nn import functional as F

from medclf.engine import mixing
from medclf.engine.precision import Precision
from medclf.evaluate.metrics import balanced_accuracy, roc_auc_ovr_macro

FP32_CPU = Precision(torch.device("cpu"), "fp32", "default")


def probabilities_from_logits(logits):
    """(N, K) softmax, or (N, 1) -> two columns [1 - sigmoid, sigmoid]."""
    logits = torch.as_tensor(logits, dtype=torch.float64)
    if logits.ndim == 2 and logits.shape[1] == 1:
        p1 = torch.sigmoid(logits[:, 0])
        return torch.stack([1 - p1, p1], dim=1)
    return F.softmax(logits, dim=1)


def epoch_metrics(loss_sum, n, labels, logits):
    labels = np.asarray(labels)
    probs = probabilities_from_logits(logits).numpy()
    preds = probs.argmax(axis=1)
    return {
        "loss": loss_sum / max(n, 1),
        "accuracy": float((preds == labels).mean()) if n else float("nan"),
        "auc": roc_auc_ovr_macro(labels, probs) if n else float("nan"),
        "balanced_accuracy": balanced_accuracy(labels, preds, n_classes=probs.shape[1]) if n else float("nan"),
    }


def forward(model, inputs):
    """model(images), or model(images, metadata) for a batch of a metadata run (medclf.models.metadata)."""
    return model(*inputs) if isinstance(inputs, (list, tuple)) else model(inputs)


def train_one_epoch(model, criterion, optimizer, loader, precision=FP32_CPU, scheduler=None, scaler=None,
                    progress=None, gather=None, mixer=None):
    """Train for one pass over `loader`; `scheduler` (if given) is stepped after every batch;
    `scaler` is the fp16 GradScaler (None otherwise); `mixer` (medclf.engine.mixing.Mixer) mixes batches
    (mixup/cutmix; the loss is then mixed too and the metrics use the dominant label). Returns the
    epoch's loss (mean per image) and metrics on the training outputs (of every process:
    `gather(loss_sum, n, labels, logits)` collects them, see medclf.engine.distributed)."""
    model.train()
    loss_sum, n = 0.0, 0
    all_logits, all_labels = [], []
    for images, labels in loader:
        images = precision.to_device(images)
        labels = labels.to(precision.device, non_blocking=True)
        mixed = mixer(images, labels) if mixer is not None else None
        with precision.autocast():
            if mixed is None:
                logits = forward(model, images)
                loss = criterion(logits, labels)
            else:
                logits = forward(model, mixed.inputs)
                loss = mixing.mixed_loss(criterion, logits, labels, mixed.labels_b, mixed.lam)
                labels = mixing.dominant_labels(labels, mixed.labels_b, mixed.lam)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        if scheduler is not None:
            scheduler.step()
        batch = labels.shape[0]
        loss_sum += float(loss.detach()) * batch
        n += batch
        all_logits.append(logits.detach().float().cpu())
        all_labels.append(labels.cpu())
        if progress is not None:
            progress.update(batch)
            progress.set_postfix(loss=f"{loss_sum / n:.4f}")
    if not all_logits:
        return epoch_metrics(0.0, 0, [], torch.zeros(0, 2))
    outputs = (loss_sum, n, torch.cat(all_labels), torch.cat(all_logits))
    loss_sum, n, labels, logits = gather(*outputs) if gather is not None else outputs
    return epoch_metrics(loss_sum, n, labels.numpy(), logits)


@torch.inference_mode()
def predict(model, loader, precision=FP32_CPU):
    """Logits (float32, CPU) and labels of every item of `loader`, in loader order."""
    model.eval()
    all_logits, all_labels = [], []
    for images, labels in loader:
        with precision.autocast():
            logits = forward(model, precision.to_device(images))
        all_logits.append(logits.float().cpu())
        all_labels.append(torch.as_tensor(labels).cpu())
    if not all_logits:
        return torch.zeros(0, 1), torch.zeros(0, dtype=torch.long)
    return torch.cat(all_logits), torch.cat(all_labels)


@torch.inference_mode()
def evaluate(model, criterion, loader, precision=FP32_CPU, gather=None):
    """Loss (mean per image, from the float32 logits) and epoch-level metrics on a split (on every
    process's outputs: `gather(logits, labels)` collects them in split order, see medclf.engine.distributed)."""
    logits, labels = predict(model, loader, precision)
    if gather is not None:
        logits, labels = gather(logits, labels)
    n = labels.shape[0]
    device = precision.device
    loss = float(criterion(logits.to(device), labels.to(device))) * n if n else 0.0
    return epoch_metrics(loss, n, labels.numpy(), logits)
