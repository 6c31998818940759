"""Augmentation presets on cached uint8 tensors (C, H, W), built on torchvision.transforms.v2.

The data cache holds each image once, resized (aspect preserved) and centre-cropped to a square
of `cache_side(preset, img_size)` pixels. Presets with a random crop cache a larger square
(img_size * 256/224, the seeds' resize-256/crop-224 ratio) and crop `img_size` from it; their
evaluation transform is the matching centre crop. Every random draw comes from torch's RNG, which
medclf seeds per (seed, epoch) and per DataLoader worker.

Presets:
  none      no augmentation
  flip      random horizontal flip
  flips     horizontal + vertical flips (the HAM10000 classifier)
  standard  flips + affine (rotate 15, translate 5%, scale 0.9-1.1) + random crop + colour jitter 0.1
  lesion    the lesion classifier's Albumentations pipeline: smallest-side resize (the cache),
            Affine(scale 0.9-1.1, translate 5%, rotate 180, shear 15) at p=0.33, random crop,
            RGB shift +-16 at p=0.1, brightness/contrast +-0.1 at p=0.1

Steps composed onto a preset with `+` (`--augment flips+hair`), applied first, on the cached
image, before the preset's own draws (hair then turns and crops with the lesion):
  hair      0-6 dark curved strands of random colour, width and opacity (medclf.data.hair; reproducible
            per seed, epoch and image); train only, like every augmentation
The policy steps come last, after the preset's flips and crop, on the final img_size uint8 image
(as in torchvision's references/classification presets: crop, flip, then the policy), so their
rotations and shears fill at the final borders and their colour operations see what the model sees:
  trivialaugment  torchvision TrivialAugmentWide: one random operation at a random strength per image
  randaugment     torchvision RandAugment: 2 random operations at magnitude 9 (of 31) per image
Both draw from torch's RNG like the presets; train only. `flips+trivialaugment` = flips, then the policy.
Alias: lesion-hair = lesion+hair (the attention-guided-cropping seed's DrawHair with its pipeline).
"""

from dataclasses import dataclass

import torch
from torchvision.transforms import InterpolationMode, v2

from medclf.core.errors import MedclfError

PRESETS = ("none", "flip", "flips", "standard", "lesion")
STEPS = ("hair", "trivialaugment", "randaugment")
_POLICY_STEPS = ("trivialaugment", "randaugment")  # applied after the preset (see the docstring)
SPEC_ALIASES = {"lesion-hair": "lesion+hair"}
_CROP_PRESETS = {"standard", "lesion"}
SEED_RESIZE_RATIO = 256 / 224


def parse_spec(spec):
    """(preset, [steps]) of an --augment value `PRESET[+STEP...]` (or an alias); refused with the choices."""
    spec = str(spec)
    preset, *steps = SPEC_ALIASES.get(spec, spec).split("+")
    if preset not in PRESETS:
        raise MedclfError(f"--augment {spec}: unknown preset {preset!r}; use one of {', '.join(PRESETS)}, optionally "
                          f"with steps {', '.join('+' + s for s in STEPS)} (e.g. flips+hair), or the alias "
                          f"{', '.join(SPEC_ALIASES)}")
    unknown = [s for s in steps if s not in STEPS]
    if unknown or len(set(steps)) != len(steps):
        raise MedclfError(f"--augment {spec}: step {(unknown or steps)[0]!r} unknown or repeated; "
                          f"steps are {', '.join(STEPS)}, each at most once (e.g. flips+hair)")
    return preset, steps


def base_preset(spec):
    """The preset of an --augment value: what the cache size and the evaluation transform depend on."""
    return parse_spec(spec)[0]


def cache_side(preset, img_size):
    """Side of the cached square for a preset (larger than img_size when it random-crops)."""
    preset = base_preset(preset)
    return int(round(img_size * SEED_RESIZE_RATIO)) if preset in _CROP_PRESETS else int(img_size)


def check_preset(preset):
    parse_spec(preset)


def _steps(steps):
    """The steps applied before the preset's draws (on the cached image)."""
    from medclf.data.hair import RandomHair

    return [RandomHair() for name in steps if name == "hair"]


def _policy_steps(steps):
    """The augmentation policies, applied after the preset's draws, in the order written."""
    policies = {"trivialaugment": v2.TrivialAugmentWide, "randaugment": v2.RandAugment}
    return [policies[name](interpolation=InterpolationMode.BILINEAR) for name in steps if name in _POLICY_STEPS]


class RandomRGBShift(torch.nn.Module):
    """Albumentations RGBShift: add an independent integer in [-limit, limit] to each channel."""

    def __init__(self, limit=16, p=0.1):
        super().__init__()
        self.limit, self.p = limit, p

    def forward(self, image):
        if torch.rand(()) >= self.p:
            return image
        shift = torch.randint(-self.limit, self.limit + 1, (image.shape[0], 1, 1), dtype=torch.int16).to(image.device)
        return (image.to(torch.int16) + shift).clamp_(0, 255).to(torch.uint8)


class RandomBrightnessContrast(torch.nn.Module):
    """Albumentations RandomBrightnessContrast (brightness_by_max): x * (1 + c) + b * 255."""

    def __init__(self, brightness=0.1, contrast=0.1, p=0.1):
        super().__init__()
        self.brightness, self.contrast, self.p = brightness, contrast, p

    def forward(self, image):
        if torch.rand(()) >= self.p:
            return image
        alpha = 1.0 + (torch.rand(()) * 2 - 1) * self.contrast
        beta = (torch.rand(()) * 2 - 1) * self.brightness * 255.0
        return (image.float() * alpha + beta).round_().clamp_(0, 255).to(torch.uint8)


def _augmentations(preset, img_size):
    if preset == "none":
        return []
    if preset == "flip":
        return [v2.RandomHorizontalFlip()]
    if preset == "flips":
        return [v2.RandomHorizontalFlip(), v2.RandomVerticalFlip()]
    if preset == "standard":
        return [
            v2.RandomHorizontalFlip(),
            v2.RandomVerticalFlip(),
            v2.RandomAffine(degrees=15, translate=(0.05, 0.05), scale=(0.9, 1.1),
                            interpolation=InterpolationMode.BILINEAR),
            v2.RandomCrop(img_size),
            v2.ColorJitter(brightness=0.1, contrast=0.1, saturation=0.1),
        ]
    return [  # lesion
        v2.RandomApply([v2.RandomAffine(degrees=180, translate=(0.05, 0.05), scale=(0.9, 1.1), shear=(-15, 15),
                                        interpolation=InterpolationMode.BILINEAR)], p=0.33),
        v2.RandomCrop(img_size),
        RandomRGBShift(16, p=0.1),
        RandomBrightnessContrast(0.1, 0.1, p=0.1),
    ]


def _normalise(mean, std):
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(mean), std=list(std))]


def train_transform(spec, img_size, mean, std):
    preset, steps = parse_spec(spec)
    augmentations = _steps(steps) + _augmentations(preset, img_size)
    if preset not in _CROP_PRESETS and cache_side(preset, img_size) != img_size:  # pragma: no cover
        augmentations.append(v2.CenterCrop(img_size))
    return v2.Compose(augmentations + _policy_steps(steps) + _normalise(mean, std))


def eval_transform(spec, img_size, mean, std):
    """The deterministic transform of val, test and prediction: a centre crop and the
    normalisation, never a step of the augmentation."""
    preset = base_preset(spec)
    steps = [v2.CenterCrop(img_size)] if cache_side(preset, img_size) != img_size else []
    return v2.Compose(steps + _normalise(mean, std))


@dataclass(frozen=True)
class EvalInput:
    """How a trained run sees an image at evaluation: resized (aspect kept) and centre-cropped to
    `side` (the run's cache side), then `transform` (centre crop to `img_size`, [0, 1], the run's
    mean and std). `view` is the same without the normalisation, for display."""
    side: int
    img_size: int
    mean: tuple
    std: tuple
    augment: str

    @property
    def transform(self):
        return eval_transform(self.augment, self.img_size, self.mean, self.std)

    @property
    def view(self):
        return eval_transform(self.augment, self.img_size, (0, 0, 0), (1, 1, 1))


def eval_input(config):
    """The evaluation input of a run, from its config.json: the one derivation every stage that
    runs a trained model uses (test, cv, explain, crop, embed, export, serve, quality)."""
    args, norm = config["arguments"], config["normalisation"]
    img_size = int(args["img_size"])
    side = int(config.get("cache_side") or cache_side(args["augment"], img_size))
    return EvalInput(side, img_size, tuple(float(x) for x in norm["mean"]), tuple(float(x) for x in norm["std"]),
                     args["augment"])
