"""Can a heat map be trusted? Two checks, both pure functions of a model, images and maps.

* Deletion / insertion (Petsiuk et al. 2018, RISE): pixels are removed (set to 0, the training
  mean colour in normalised space) in order of decreasing heat, or inserted in that order into a
  blank image, and the probability of the explained class is recorded after each step. A
  faithful map makes the deletion curve fall fast (small area) and the insertion curve rise fast
  (large area). The same curves for a random pixel order are the reference.
* Cascading randomisation (Adebayo et al. 2018, "Sanity checks for saliency maps"): the model's
  top-level blocks are re-initialised one after another, head first, and the maps recomputed;
  their Spearman rank correlation with the trained model's maps must fall. A method whose maps
  still correlate (|rho| >= threshold) with the trained ones once every block is random explains the
  image, not the model, and is flagged as failed.
"""

import copy

import numpy as np
import torch
from scipy.stats import spearmanr
from torch import nn

from medclf.engine.steps import probabilities_from_logits
from medclf.explain.heatmap import heatmaps

DEFAULT_STEPS = 16
SANITY_THRESHOLD = 0.5


def _class_probability(model, batch, targets):
    with torch.no_grad():
        probs = probabilities_from_logits(model(batch).cpu())
    return probs[torch.arange(len(targets)), torch.as_tensor(targets)].numpy()


def deletion_insertion(model, images, targets, maps, steps=DEFAULT_STEPS, order=None):
    """Mean deletion and insertion curves (steps + 1 points, fraction of pixels 0..1) and their
    areas (trapezoid over the fraction). `order` (N, H*W) overrides the maps' pixel ranking."""
    model = copy.deepcopy(model).eval()
    n, _, h, w = images.shape
    ranks = order if order is not None else np.argsort(-maps.reshape(n, -1), axis=1, kind="stable")
    fractions = np.linspace(0.0, 1.0, steps + 1)
    deletion, insertion = [], []
    for fraction in fractions:
        mask = np.zeros((n, h * w), dtype=bool)
        k = int(round(fraction * h * w))
        np.put_along_axis(mask, ranks[:, :k], True, axis=1)
        mask = torch.as_tensor(mask.reshape(n, 1, h, w), device=images.device)
        deletion.append(_class_probability(model, images.masked_fill(mask, 0.0), targets).mean())
        insertion.append(_class_probability(model, images.masked_fill(~mask, 0.0), targets).mean())
    deletion, insertion = np.array(deletion), np.array(insertion)
    return {"fractions": fractions.tolist(), "deletion": deletion.tolist(), "insertion": insertion.tolist(),
            "deletion_auc": float(np.trapezoid(deletion, fractions)),
            "insertion_auc": float(np.trapezoid(insertion, fractions))}


def faithfulness(model, images, targets, maps, steps=DEFAULT_STEPS, seed=0):
    """Deletion/insertion of the maps and of a random pixel order (the reference)."""
    n, _, h, w = images.shape
    rng = np.random.default_rng(seed)
    random_order = np.stack([rng.permutation(h * w) for _ in range(n)])
    return {"steps": steps, "n_images": int(n),
            "map": deletion_insertion(model, images, targets, maps, steps),
            "random": deletion_insertion(model, images, targets, maps, steps, order=random_order)}


def rank_correlation(a, b):
    """Mean over images of Spearman's rho between two stacks of maps; a constant map shares no
    ranking with anything and counts as 0."""
    values = []
    for x, y in zip(a, b):
        if np.ptp(x) == 0 or np.ptp(y) == 0:
            values.append(0.0)
        else:
            values.append(float(spearmanr(x.ravel(), y.ravel()).statistic))
    return float(np.mean(values))


def _reinitialise(module, generator):
    for m in module.modules():
        if hasattr(m, "reset_parameters") and callable(m.reset_parameters):
            m.reset_parameters()
        elif isinstance(m, nn.Module):
            for p in m.parameters(recurse=False):
                with torch.no_grad():
                    p.normal_(0.0, 0.02, generator=generator)


def cascade_stages(model):
    """Top-level blocks holding parameters, head first (the order Adebayo et al. randomise)."""
    return [name for name, child in reversed(list(model.named_children()))
            if any(True for _ in child.parameters())]


def sanity_check(model, images, targets, maps, method, layer_name, seed=0, threshold=SANITY_THRESHOLD):
    """Cascading randomisation: one row per stage with the blocks randomised so far and the rank
    correlation of the new maps with `maps`; passed = |the last stage's correlation| < threshold."""
    randomised = copy.deepcopy(model).eval()
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    rows, done = [], []
    for name in cascade_stages(randomised):
        _reinitialise(randomised.get_submodule(name), generator)
        done.append(name)
        random_maps = heatmaps(randomised, images, targets, method, layer_name)
        rows.append({"randomised": list(done), "rank_correlation": rank_correlation(maps, random_maps)})
    final = rows[-1]["rank_correlation"] if rows else 1.0
    # |rho|, as Adebayo et al. also report: a random model whose map is the trained map inverted
    # still reproduces its structure (edges of the image), which is what the check must catch.
    return {"method": method, "threshold": threshold, "stages": rows, "final_rank_correlation": final,
            "passed": bool(abs(final) < threshold)}
