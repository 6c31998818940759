"""Test-time augmentation: the views, one view = no TTA, a rotation-invariant model is unchanged by
dihedral TTA (and a model that is not invariant is changed), and `medclf test --tta` records its views."""

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from medclf.core.errors import MedclfError
from medclf.engine.steps import FP32_CPU, predict, probabilities_from_logits
from medclf.infer.predict import TTA_VIEWS, predict_probabilities, tta_probabilities, tta_views


def _loader(n=6, side=5, seed=0):
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, side, side, generator=generator)
    return DataLoader(TensorDataset(images, torch.zeros(n, dtype=torch.long)), batch_size=4)


def _pointwise_model():
    """1x1 convolution, ReLU, global average pool, linear: every pixel treated alike, so the output
    cannot depend on where a pixel is (invariant to every flip and rotation)."""
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).eval()


def _position_aware_model():
    torch.manual_seed(1)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 5 * 5, 3)).eval()


@pytest.mark.parametrize("spec, views", [
    ("none", ["identity"]), ("1", ["identity"]), ("hflip", ["identity", "hflip"]),
    ("flips", ["identity", "hflip", "vflip", "rot180"]), ("dihedral", list(TTA_VIEWS)), ("8", list(TTA_VIEWS)),
])
def test_tta_names_are_nested_prefixes_of_the_dihedral_group(spec, views):
    assert tta_views(spec) == views


@pytest.mark.parametrize("spec", ["0", "9", "rotate", ""])
def test_unknown_tta_is_refused(spec):
    with pytest.raises(MedclfError, match="--tta"):
        tta_views(spec)


def test_the_eight_views_are_the_eight_distinct_symmetries_of_the_square():
    image = torch.arange(9.0).reshape(1, 1, 3, 3)  # no symmetry of its own
    outputs = {tuple(view(image).flatten().tolist()) for view in TTA_VIEWS.values()}
    assert len(outputs) == 8
    assert torch.equal(TTA_VIEWS["hflip"](image)[0, 0, 0], torch.tensor([2.0, 1.0, 0.0]))
    # A group: every view applied twice gives a view again.
    for first in TTA_VIEWS.values():
        for second in TTA_VIEWS.values():
            assert tuple(second(first(image)).flatten().tolist()) in outputs


def test_tta_with_one_view_equals_no_tta():
    model, loader = _position_aware_model(), _loader()
    logits, _ = predict(model, loader, FP32_CPU)
    one_view = tta_probabilities(model, loader, FP32_CPU, ["identity"])
    np.testing.assert_allclose(one_view.numpy(), probabilities_from_logits(logits).numpy(), rtol=0, atol=1e-7)
    _, through_log = predict_probabilities(model, loader, FP32_CPU, tta_views("1"))
    np.testing.assert_array_equal(through_log.numpy(), probabilities_from_logits(logits).numpy())


def test_dihedral_tta_of_a_rotation_invariant_model_equals_no_tta():
    loader, cpu = _loader(), FP32_CPU
    invariant = _pointwise_model()
    plain = probabilities_from_logits(predict(invariant, loader, cpu)[0]).numpy()
    np.testing.assert_allclose(tta_probabilities(invariant, loader, cpu, tta_views("dihedral")).numpy(), plain,
                               rtol=0, atol=1e-6)
    # The same check can fail: a model that sees positions is changed by the views.
    aware = _position_aware_model()
    plain = probabilities_from_logits(predict(aware, loader, cpu)[0]).numpy()
    assert np.abs(tta_probabilities(aware, loader, cpu, tta_views("dihedral")).numpy() - plain).max() > 1e-3


def test_tta_probabilities_are_the_mean_over_the_views():
    model, loader, cpu = _position_aware_model(), _loader(), FP32_CPU
    images = torch.cat([x for x, _ in loader])
    with torch.inference_mode():
        expected = (probabilities_from_logits(model(images)) + probabilities_from_logits(model(images.flip(3)))) / 2
    np.testing.assert_allclose(tta_probabilities(model, loader, cpu, tta_views("hflip")).numpy(), expected.numpy(),
                               atol=1e-7)
