"""Augmentation presets on uint8 tensors."""

import pytest
import torch

from medclf.core.errors import MedclfError
from medclf.data import transforms

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def gradient_image(side):
    """A uint8 image whose every pixel differs, so any geometric change is visible."""
    values = torch.arange(3 * side * side) % 251
    return values.reshape(3, side, side).to(torch.uint8)


@pytest.mark.parametrize("preset", transforms.PRESETS)
def test_every_preset_gives_normalised_float_tensors_of_img_size(preset):
    side = transforms.cache_side(preset, 32)
    torch.manual_seed(0)
    out = transforms.train_transform(preset, 32, MEAN, STD)(gradient_image(side))
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    assert out.min() >= (0 - 0.5) / 0.25 and out.max() <= (1 - 0.5) / 0.25
    evaluated = transforms.eval_transform(preset, 32, MEAN, STD)(gradient_image(side))
    assert evaluated.shape == (3, 32, 32)


def test_cache_side_is_larger_for_random_crop_presets():
    assert transforms.cache_side("lesion", 224) == 256  # the lesion classifier's resize 256 / crop 224
    assert transforms.cache_side("standard", 64) == 73
    assert transforms.cache_side("flips", 64) == 64


def test_normalisation_values():
    image = torch.full((3, 4, 4), 51, dtype=torch.uint8)  # 51 / 255 = 1/5
    out = transforms.eval_transform("none", 4, MEAN, STD)(image)
    assert torch.allclose(out, torch.full((3, 4, 4), (1 / 5 - 1 / 2) / (1 / 4)))


def test_eval_transform_is_deterministic_centre_crop():
    image = gradient_image(transforms.cache_side("lesion", 16))  # 18 px
    out = transforms.eval_transform("lesion", 16, (0, 0, 0), (1, 1, 1))(image)
    assert torch.allclose(out, image[:, 1:17, 1:17].float() / 255)


def test_flips_preset_only_flips():
    image = gradient_image(8)
    allowed = [image, image.flip(-1), image.flip(-2), image.flip(-1).flip(-2)]
    seen = set()
    torch.manual_seed(0)
    transform = transforms.train_transform("flips", 8, (0, 0, 0), (1, 1, 1))
    for _ in range(40):
        out = (transform(image) * 255).round().to(torch.uint8)
        matches = [i for i, candidate in enumerate(allowed) if torch.equal(out, candidate)]
        assert len(matches) == 1
        seen.add(matches[0])
    assert seen == {0, 1, 2, 3}


def test_presets_are_reproducible_under_the_same_seed():
    image = gradient_image(transforms.cache_side("lesion", 32))
    transform = transforms.train_transform("lesion", 32, MEAN, STD)
    torch.manual_seed(7)
    first = [transform(image) for _ in range(5)]
    torch.manual_seed(7)
    second = [transform(image) for _ in range(5)]
    assert all(torch.equal(a, b) for a, b in zip(first, second))


def test_rgb_shift_adds_one_constant_per_channel_within_16():
    image = torch.full((3, 5, 5), 100, dtype=torch.uint8)
    torch.manual_seed(0)
    shifted = transforms.RandomRGBShift(16, p=1.0)(image).to(torch.int16) - 100
    for channel in shifted:
        assert (channel == channel[0, 0]).all() and abs(int(channel[0, 0])) <= 16


def test_brightness_contrast_stays_within_ten_percent():
    image = torch.full((3, 5, 5), 200, dtype=torch.uint8)
    torch.manual_seed(0)
    for _ in range(20):
        out = transforms.RandomBrightnessContrast(0.1, 0.1, p=1.0)(image).float()
        # 200 * (1 +- 0.1) +- 25.5 lies in [154.5, 245.5]
        assert out.min() >= 154 and out.max() <= 246


def test_unknown_preset_is_a_clear_error():
    with pytest.raises(MedclfError, match="lesion"):
        transforms.train_transform("mixup", 32, MEAN, STD)
