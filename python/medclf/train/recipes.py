"""Named training recipes (`medclf train --recipe NAME`, `recipe: NAME` in a study's train: section).

A recipe is a set of training options (config keys of medclf.train.training.DEFAULTS) chosen together.
Precedence, applied in training.resolve_config: an argument given explicitly (CLI or study file)
wins over the recipe, the recipe wins over DEFAULTS. config.json records the recipe's name and
every resolved value. What each recipe contains, why, and what was measured is in
docs/recipes.md.
"""

from medclf.core.errors import MedclfError

RECIPES = {
    # Today's defaults, written out: the baseline of the ablation.
    "plain": {
        "optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0, "no_decay_norm_bias": False, "scheduler": "none",
        "augment": "none", "epochs": 50, "patience": 5, "ema_decay": 0.0, "swa_epochs": 0,
    },
    # From scratch on a CPU at small resolution: strong regularisation for a small data set,
    # a schedule that anneals, averaged weights for a smoother selection. No weight decay: the
    # recipe without it measured better in all three framings of docs/recipes.md.
    "cpu-small": {
        "weights": "none", "img_size": 64, "batch_size": 32, "epochs": 40, "patience": 10,
        "optimizer": "adam", "lr": 2e-3, "weight_decay": 0.0,
        "scheduler": "warmup-cosine", "warmup_fraction": 0.05, "patience_start": "warmup",
        "augment": "flips+trivialaugment", "label_smoothing": 0.1, "mixup_alpha": 0.2, "cutmix_alpha": 1.0,
        "mix_prob": 0.5, "ema_decay": 0.995,
    },
    # Fine-tuning ImageNet weights on a GPU at 224 px: a lower learning rate, lighter mixing.
    "gpu-imagenet": {
        "weights": "imagenet", "img_size": 224, "batch_size": 64, "epochs": 30, "patience": 8,
        "optimizer": "adamw", "lr": 3e-4, "weight_decay": 0.05, "no_decay_norm_bias": True,
        "scheduler": "warmup-cosine", "warmup_fraction": 0.05, "patience_start": "warmup",
        "augment": "flips+trivialaugment", "label_smoothing": 0.1, "mixup_alpha": 0.2, "cutmix_alpha": 0.0,
        "mix_prob": 0.5, "ema_decay": 0.995,
    },
}


def recipe_values(name, known_keys):
    """The options recipe `name` sets ({} for None), each checked against `known_keys` (the
    training options of this installation)."""
    if name is None:
        return {}
    if name not in RECIPES:
        raise MedclfError(f"--recipe {name}: no such recipe; use one of {', '.join(RECIPES)} (docs/recipes.md)")
    unknown = sorted(set(RECIPES[name]) - set(known_keys))
    if unknown:
        raise MedclfError(f"--recipe {name}: sets {', '.join(unknown)}, which this medclf's training does not know; "
                          "update medclf or give the options yourself (docs/recipes.md)")
    return dict(RECIPES[name])
