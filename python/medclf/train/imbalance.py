"""Class imbalance: `--balance none|sampler|loss-weights|focal`, from the train split only.

  sampler       WeightedRandomSampler over the train split, each image weighted 1 / (its class
                count), so every class is drawn equally often in expectation (with replacement,
                one epoch = as many draws as train images). Validation and test are never resampled.
                With several processes, DistributedWeightedSampler splits that epoch between them.
  loss-weights  inverse-frequency class weights n / (k * count_c) (scikit-learn's "balanced")
                in the cross-entropy (or pos_weight = count_negative / count_positive for a
                single-logit head).
  focal         focal loss (Lin et al. 2017): -alpha_t * (1 - p_t)^gamma * log(p_t).
                --focal-alpha: a number a gives the positive class weight a and the other class
                1 - a in a binary study (Lin's convention), or scales every class in a multi-class
                study; `balanced` uses the inverse-frequency class weights; omitted: no alpha.

"Positive" is always the study's named positive class (partition.json's positive_class, or yes
in a no/yes study), wherever it sits in the class order; a binary study that names none is
refused by the options that need one (`--head single-logit`, a numeric `--focal-alpha`).
A single-logit head's logit is the log-odds of classes[1], so its two probability columns
[1 - sigmoid, sigmoid] follow the class order like a softmax head's; its loss puts pos_weight
on the named positive, whichever index that is.

Label smoothing (`--label-smoothing EPS`, the training loss only; validation and test losses are
built with EPS = 0 so val_loss and early stopping mean the same with or without it):
  softmax       torch's CrossEntropyLoss(label_smoothing=EPS): target (1 - EPS) on the label plus
                EPS / K on every class; with loss-weights each class's term keeps its weight.
  single logit  BCE against the target y * (1 - EPS) + EPS / 2 (y = 1 for the named positive);
                pos_weight still weighs the positive side.
  focal         refused: focal loss is defined on the true class's probability alone.
"""

import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from medclf.core.errors import MedclfError
from medclf.core.splits import named_positive

MODES = ("none", "sampler", "loss-weights", "focal")


def class_counts(train_labels, n_classes):
    counts = np.bincount(np.asarray(train_labels, dtype=np.int64), minlength=n_classes)
    missing = [k for k in range(n_classes) if counts[k] == 0]
    if missing:
        raise MedclfError(f"splits: class index(es) {missing} have no train images; every class needs train examples")
    return counts


def class_weights(train_labels, n_classes):
    """n / (k * count_c) per class, from the train labels."""
    counts = class_counts(train_labels, n_classes)
    return counts.sum() / (n_classes * counts.astype(np.float64))


def sample_weights(train_labels, n_classes):
    """One weight per train image: 1 / (count of its class)."""
    counts = class_counts(train_labels, n_classes)
    labels = np.asarray(train_labels, dtype=np.int64)
    return 1.0 / counts[labels].astype(np.float64)


def make_sampler(train_labels, n_classes, generator=None, num_replicas=1, rank=0):
    """The class-balanced sampler; with several processes (`num_replicas`) each gets its share."""
    weights = torch.as_tensor(sample_weights(train_labels, n_classes), dtype=torch.double)
    if num_replicas > 1:
        return DistributedWeightedSampler(weights, num_replicas, rank)
    return torch.utils.data.WeightedRandomSampler(weights, num_samples=len(weights), replacement=True,
                                                  generator=generator)


class DistributedWeightedSampler(torch.utils.data.Sampler):
    """WeightedRandomSampler for several processes. Every rank draws the same len(weights) indices
    (with replacement) from a generator seeded by `set_epoch`, pads them from the start to a
    multiple of `num_replicas` and keeps every num_replicas-th from `rank`: together the ranks see
    one epoch of a one-process weighted sampler, split without overlap (as DistributedSampler splits)."""

    def __init__(self, weights, num_replicas, rank):
        self.weights = torch.as_tensor(weights, dtype=torch.double)
        self.num_replicas, self.rank, self.epoch = int(num_replicas), int(rank), 0
        self.num_samples = math.ceil(len(self.weights) / self.num_replicas)

    def set_epoch(self, epoch):
        self.epoch = int(epoch)

    def __iter__(self):
        generator = torch.Generator()
        generator.manual_seed(self.epoch)
        draws = torch.multinomial(self.weights, len(self.weights), replacement=True, generator=generator).tolist()
        draws += draws[:self.num_samples * self.num_replicas - len(draws)]
        return iter(draws[self.rank::self.num_replicas])

    def __len__(self):
        return self.num_samples


class FocalLoss(nn.Module):
    """Focal loss on softmax logits (N, K) or single logits (N,) / (N, 1)."""

    def __init__(self, gamma=2.0, alpha=None, single_logit=False):
        super().__init__()
        self.gamma = float(gamma)
        self.single_logit = single_logit
        self.register_buffer("alpha", None if alpha is None else torch.as_tensor(alpha, dtype=torch.float32))

    def forward(self, logits, targets):
        if self.single_logit:
            logits = logits.reshape(-1)
            targets = targets.float()
            log_p1 = F.logsigmoid(logits)
            log_p0 = F.logsigmoid(-logits)
            log_pt = torch.where(targets > 0.5, log_p1, log_p0)
            index = (targets > 0.5).long()
        else:
            log_pt = F.log_softmax(logits.float(), dim=1).gather(1, targets.long().unsqueeze(1)).squeeze(1)
            index = targets.long()
        pt = log_pt.exp()
        loss = -((1 - pt).clamp(min=0) ** self.gamma) * log_pt
        if self.alpha is not None:
            loss = loss * (self.alpha[index] if self.alpha.ndim else self.alpha)
        return loss.mean()


class SingleLogitBCE(nn.Module):
    """BCEWithLogits for a (N, 1) head (the log-odds of class index 1) against integer labels
    0/1, with the positive side of the loss being class `positive_index` (pos_weight weighs it)."""

    def __init__(self, pos_weight=None, positive_index=1, label_smoothing=0.0):
        super().__init__()
        self.register_buffer("pos_weight", None if pos_weight is None else torch.tensor(float(pos_weight)))
        self.positive_index = int(positive_index)
        self.label_smoothing = float(label_smoothing)

    def forward(self, logits, targets):
        logits = logits.reshape(-1).float()
        # log-odds of the positive class: the head's logit, negated when the positive is class 0.
        positive_logits = logits if self.positive_index == 1 else -logits
        is_positive = (targets.long() == self.positive_index).float()
        target = is_positive * (1 - self.label_smoothing) + self.label_smoothing / 2
        return F.binary_cross_entropy_with_logits(positive_logits, target, pos_weight=self.pos_weight)


def _alpha(focal_alpha, train_labels, n_classes, positive):
    """Per-class alpha (or one scale); `positive()` gives the positive's index when one is needed."""
    if focal_alpha in (None, "", "none"):
        return None
    if str(focal_alpha) == "balanced":
        return class_weights(train_labels, n_classes)
    try:
        a = float(focal_alpha)
    except ValueError:
        raise MedclfError(f"--focal-alpha {focal_alpha}: use a number in (0, 1], `balanced` or omit it") from None
    if n_classes == 2:
        if not 0 < a < 1:
            raise MedclfError(f"--focal-alpha {a}: in a binary study give the positive class's weight in (0, 1)")
        alpha = np.full(2, 1 - a)
        alpha[positive(f"--focal-alpha {focal_alpha}")] = a
        return alpha
    return a


def check_label_smoothing(label_smoothing, balance):
    """--label-smoothing: a number in [0, 1), and not with focal loss (see the module docstring)."""
    if not 0 <= label_smoothing < 1:
        raise MedclfError(f"--label-smoothing {label_smoothing}: give a number from 0 (off) up to below 1, e.g. 0.1")
    if label_smoothing > 0 and balance == "focal":
        raise MedclfError(f"--label-smoothing {label_smoothing} with --balance focal: focal loss is defined on the "
                          "true class's probability alone; use --balance loss-weights or sampler with smoothing, or "
                          "drop --label-smoothing")


def build_criterion(balance, train_labels, n_classes, single_logit=False, focal_gamma=2.0, focal_alpha=None,
                    classes=None, positive=None, source="splits", label_smoothing=0.0):
    """The loss for a --balance mode, with every weight computed from `train_labels`, smoothed by
    `label_smoothing` (the training loss; evaluation uses 0). `classes` and `positive` (the study's
    named positive class) are needed by the options that weigh the positive class; `source` names
    the splits file in the refusal."""
    if balance not in MODES:
        raise MedclfError(f"--balance {balance}: use one of {', '.join(MODES)}")
    check_label_smoothing(label_smoothing, balance)
    if single_logit and n_classes != 2:
        raise MedclfError(f"--head single-logit needs exactly 2 classes (found {n_classes}); use --head softmax")

    def positive_index(purpose):
        names = [str(c) for c in (classes if classes is not None else range(n_classes))]
        return names.index(named_positive(names, positive, source, purpose))

    k = positive_index("--head single-logit") if single_logit else None
    if balance == "focal":
        return FocalLoss(focal_gamma, _alpha(focal_alpha, train_labels, n_classes, positive_index), single_logit)
    if balance == "loss-weights":
        weights = class_weights(train_labels, n_classes)
        if single_logit:
            counts = class_counts(train_labels, n_classes)
            return SingleLogitBCE(counts[1 - k] / counts[k], k, label_smoothing)
        return nn.CrossEntropyLoss(weight=torch.as_tensor(weights, dtype=torch.float32), label_smoothing=label_smoothing)
    if single_logit:
        return SingleLogitBCE(positive_index=k, label_smoothing=label_smoothing)
    return nn.CrossEntropyLoss(label_smoothing=label_smoothing)
