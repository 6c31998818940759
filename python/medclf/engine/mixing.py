"""Mixup and CutMix of training batches (`--mixup-alpha`, `--cutmix-alpha`, `--mix-prob`).

  mixup   x = lam * x_a + (1 - lam) * x_b, lam ~ Beta(alpha, alpha) (Zhang et al. 2018)
  cutmix  x = x_a with a box pasted from x_b; the box covers a fraction 1 - lam of the image,
          centred at a uniform pixel and clipped at the border, and lam is then set to the
          fraction the box really leaves to x_a (Yun et al. 2019, as in timm)
  loss    lam * loss(logits, y_a) + (1 - lam) * loss(logits, y_b): any medclf loss (label
          smoothing, class weights, focal, single logit) mixes this way

x_b, y_b are the batch in a random order (torch.randperm). A batch is mixed with probability
`mix_prob`; with both alphas above 0, a mixed batch uses mixup or cutmix with probability 1/2.
Every draw (mixed or not, which method, lam, order, box) comes from torch's global RNG, which
medclf seeds per (seed, epoch), so a run and its resume draw the same.

Metadata runs (inputs = (images, metadata)): mixup mixes the metadata vectors with the same lam;
cutmix keeps the metadata of the image that keeps the larger area (x_a when lam >= 1/2), since a
cut image is two real images side by side, never a blend, and its metadata should stay a real
patient's (one-hot categories stay one-hot).

Training metrics of a mixed batch (train_accuracy, train_auc, train_balanced_accuracy) score
the logits against the dominant label: y_a when lam >= 1/2, else y_b. train_loss is the mixed loss.
"""

from dataclasses import dataclass

import torch

from medclf.core.errors import MedclfError


def mixup_images(images, perm, lam):
    """lam * images + (1 - lam) * images[perm]."""
    return lam * images + (1 - lam) * images[perm]


def cutmix_box(height, width, lam, centre_y, centre_x):
    """(top, bottom, left, right) of the box that covers about 1 - lam of a height x width image,
    sides sqrt(1 - lam) of the image's, centred at (centre_y, centre_x), clipped at the border."""
    ratio = (1.0 - float(lam)) ** 0.5
    cut_h, cut_w = int(round(height * ratio)), int(round(width * ratio))
    top, left = centre_y - cut_h // 2, centre_x - cut_w // 2
    return max(top, 0), min(top + cut_h, height), max(left, 0), min(left + cut_w, width)


def box_lambda(box, height, width):
    """The fraction of the image outside the box (what the first image keeps)."""
    top, bottom, left, right = box
    return 1.0 - (bottom - top) * (right - left) / (height * width)


def cutmix_images(images, perm, box):
    """`images` with the box's pixels taken from images[perm] (a new tensor)."""
    top, bottom, left, right = box
    mixed = images.clone()
    mixed[..., top:bottom, left:right] = images[perm][..., top:bottom, left:right]
    return mixed


def mixed_loss(criterion, logits, labels_a, labels_b, lam):
    """lam * criterion(logits, labels_a) + (1 - lam) * criterion(logits, labels_b)."""
    return lam * criterion(logits, labels_a) + (1 - lam) * criterion(logits, labels_b)


def dominant_labels(labels_a, labels_b, lam):
    """The label of the larger share, against which training metrics score a mixed batch."""
    return labels_a if lam >= 0.5 else labels_b


@dataclass
class MixedBatch:
    inputs: object     # images, or [images, metadata]
    labels_b: object   # the labels of the second image of each pair
    lam: float         # the first image's share


def mix(inputs, labels, method, lam, perm, centre=(0, 0)):
    """One batch mixed by `method` ("mixup" or "cutmix") with the given lam, order and (cutmix)
    box centre; inputs are images (N, C, H, W) or (images, metadata). lam of cutmix is the box's."""
    images, metadata = (inputs[0], inputs[1]) if isinstance(inputs, (list, tuple)) else (inputs, None)
    if method == "mixup":
        images = mixup_images(images, perm, lam)
        if metadata is not None:
            metadata = mixup_images(metadata, perm, lam)
    else:
        height, width = images.shape[-2:]
        box = cutmix_box(height, width, lam, *centre)
        images, lam = cutmix_images(images, perm, box), box_lambda(box, height, width)
        if metadata is not None and lam < 0.5:
            metadata = metadata[perm]
    mixed = images if metadata is None else [images, metadata]
    return MixedBatch(mixed, labels[perm], float(lam))


class Mixer:
    """Draws whether and how to mix each training batch (see the module docstring)."""

    def __init__(self, mixup_alpha=0.0, cutmix_alpha=0.0, mix_prob=1.0):
        self.alphas = {name: float(a) for name, a in (("mixup", mixup_alpha), ("cutmix", cutmix_alpha)) if a > 0}
        self.mix_prob = float(mix_prob)

    def __call__(self, inputs, labels):
        """A MixedBatch, or None when this batch stays unmixed."""
        if torch.rand(()).item() >= self.mix_prob:
            return None
        names = list(self.alphas)
        method = names[0] if len(names) == 1 or torch.rand(()).item() < 0.5 else names[1]
        alpha = torch.tensor(self.alphas[method])
        lam = float(torch.distributions.Beta(alpha, alpha).sample())
        n = labels.shape[0]
        perm = torch.randperm(n).to(labels.device)
        images = inputs[0] if isinstance(inputs, (list, tuple)) else inputs
        height, width = images.shape[-2:]
        centre = (int(torch.randint(height, ())), int(torch.randint(width, ())))
        return mix(inputs, labels, method, lam, perm, centre)


def check_options(mixup_alpha, cutmix_alpha, mix_prob):
    for flag, alpha in (("--mixup-alpha", mixup_alpha), ("--cutmix-alpha", cutmix_alpha)):
        if not alpha >= 0:
            raise MedclfError(f"{flag} {alpha}: give the Beta distribution's alpha, above 0 (e.g. 0.2 or 1.0), "
                              "or 0 to switch it off")
    if not 0 <= mix_prob <= 1:
        raise MedclfError(f"--mix-prob {mix_prob}: give a probability between 0 and 1")


def build_mixer(cfg):
    """The run's Mixer, or None when mixup and cutmix are both off (or --mix-prob is 0)."""
    check_options(cfg["mixup_alpha"], cfg["cutmix_alpha"], cfg["mix_prob"])
    if (cfg["mixup_alpha"] <= 0 and cfg["cutmix_alpha"] <= 0) or cfg["mix_prob"] <= 0:
        return None
    return Mixer(cfg["mixup_alpha"], cfg["cutmix_alpha"], cfg["mix_prob"])
