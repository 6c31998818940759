"""medclf explain: heat maps of every seed architecture, the known pitfalls (eval mode, in-place
ReLU, single-logit heads), faithfulness (deletion/insertion, cascading randomisation) and the
stage's files."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from medclf import cli
from medclf.core.errors import MedclfError
from medclf.explain import faithfulness, heatmap
from medclf.explain.run import image_groups, select_images, target_classes
from medclf.models import architectures as models

from splits_files import subset_splits


def quadrant_images(n=4, size=64, seed=0):
    """Noise images with a bright top-left quadrant in the odd ones (label 1)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, size, size, generator=g) * 0.3
    labels = torch.arange(n) % 2
    x[labels == 1, :, : size // 2, : size // 2] += 2.0
    return x, labels


class TinyNet(nn.Module):
    def __init__(self, n_classes=2):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=True),
                                      nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(inplace=True))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, n_classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


@pytest.mark.parametrize("arch", list(heatmap.TARGET_LAYERS))
def test_every_seed_architecture_gives_a_finite_nonconstant_map_of_the_input_size(arch):
    torch.manual_seed(0)
    model, _ = models.build_model(arch, 2, "none")
    model.eval()
    images, _ = quadrant_images(2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        predicted = model(images).argmax(1).tolist()  # medclf explain's default target
    maps = heatmap.heatmaps(model, images, predicted, "gradcam", architecture=arch)
    assert maps.shape == (2, 64, 64)
    assert np.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1
    assert all(m.max() > m.min() for m in maps)
    # the caller's model is untouched: same weights, still in eval mode, ReLUs as built
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not model.training


def test_any_torchvision_model_with_a_conv_block_is_found_and_a_vit_names_target_layer():
    model, _ = models.build_model("shufflenet_v2_x0_5", 2, "none")
    assert heatmap.find_target_layer(model, "shufflenet_v2_x0_5") == "conv5"
    model, _ = models.build_model("squeezenet1_0", 2, "none")
    assert heatmap.find_target_layer(model, "squeezenet1_0") == "features"  # not the 1x1-conv head
    vit, _ = models.build_model("vit_b_16", 2, "none")
    with pytest.raises(MedclfError, match="--target-layer"):
        heatmap.find_target_layer(vit, "vit_b_16")
    with pytest.raises(MedclfError, match="--target-layer nope"):
        heatmap.explainable_copy(model, "nope")


def test_densenet_inplace_relu_cannot_overwrite_the_recorded_activations():
    """DenseNet's forward applies F.relu(features, inplace=True) after the target block; the CAM
    must see norm5's own output (with negative values), not its ReLU."""
    torch.manual_seed(0)
    model, _ = models.build_model("densenet121", 2, "none")
    scorer, tap = heatmap.explainable_copy(model, "features")
    seen = []
    tap.register_forward_hook(lambda m, i, o: seen.append(o))
    with torch.no_grad():
        scorer(quadrant_images(2)[0])
    assert (seen[0] < 0).any()
    # without the clone the same hook on the bare block records a tensor the ReLU has overwritten
    bare = []
    model.eval().features.register_forward_hook(lambda m, i, o: bare.append(o))
    with torch.no_grad():
        model(quadrant_images(2)[0])
    assert not (bare[0] < 0).any()


def test_single_logit_head_explains_the_positive_class_and_its_opposite():
    torch.manual_seed(0)
    model, _ = models.build_model("resnet18", 1, "none")
    images, _ = quadrant_images(2)
    positive = heatmap.heatmaps(model, images, [1, 1], "saliency", architecture="resnet18")
    negative = heatmap.heatmaps(model, images, [0, 0], "saliency", architecture="resnet18")
    # |d(-z)/dx| = |dz/dx|: the same saliency; Grad-CAM of -z keeps the other sign's regions
    np.testing.assert_allclose(positive, negative, atol=1e-6)
    cam_pos = heatmap.heatmaps(model, images, [1, 1], "gradcam", architecture="resnet18")
    cam_neg = heatmap.heatmaps(model, images, [0, 0], "gradcam", architecture="resnet18")
    assert not np.allclose(cam_pos, cam_neg)


@pytest.mark.parametrize("method", heatmap.METHODS)
def test_softmax_head_every_method_gives_maps_in_unit_range(method):
    torch.manual_seed(0)
    model = TinyNet(n_classes=3).eval()
    images, _ = quadrant_images(2, size=32)
    maps = heatmap.heatmaps(model, images, [0, 2], method, "features")
    assert maps.shape == (2, 32, 32) and np.isfinite(maps).all()
    assert maps.min() >= 0 and maps.max() <= 1 and maps.max() == 1


def test_normalise_maps_hand_values():
    maps = heatmap.normalise_maps(np.array([[[1.0, 3.0], [5.0, 9.0]], [[2.0, 2.0], [2.0, 2.0]]]))
    np.testing.assert_allclose(maps[0], [[0, 2 / 8], [4 / 8, 1]])
    assert (maps[1] == 0).all()


@pytest.fixture(scope="module")
def toy_model():
    """A tiny CNN trained to tell images with a bright top-left quadrant from plain noise."""
    torch.manual_seed(0)
    model = TinyNet()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for step in range(60):
        x, y = quadrant_images(16, size=32, seed=step)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    model.eval()
    x, y = quadrant_images(8, size=32, seed=999)
    assert (model(x).argmax(1) == y).float().mean() == 1.0
    return model


def test_gradcam_of_a_trained_toy_model_lights_the_quadrant_and_passes_the_sanity_check(toy_model):
    images, labels = quadrant_images(8, size=32, seed=1000)
    positives = images[labels == 1]
    maps = heatmap.heatmaps(toy_model, positives, [1] * len(positives), "gradcam", "features")
    assert (maps[:, :16, :16].mean(axis=(1, 2)) > maps[:, 16:, 16:].mean(axis=(1, 2))).all()
    result = faithfulness.sanity_check(toy_model, positives, [1] * len(positives), maps, "gradcam", "features")
    assert [s["randomised"] for s in result["stages"]] == [["fc"], ["fc", "features"]]
    assert result["passed"] and abs(result["final_rank_correlation"]) < 0.5


def test_a_method_blind_to_the_weights_fails_the_sanity_check(toy_model, monkeypatch):
    images, labels = quadrant_images(8, size=32, seed=1000)
    image_only = lambda model, x, targets, method, layer: heatmap.normalise_maps(x.abs().sum(1).numpy())  # noqa: E731
    monkeypatch.setattr(faithfulness, "heatmaps", image_only)
    maps = image_only(None, images, None, None, None)
    result = faithfulness.sanity_check(toy_model, images, [1] * 8, maps, "edge", "features")
    assert result["final_rank_correlation"] == pytest.approx(1.0) and not result["passed"]


def test_deletion_of_the_true_evidence_beats_a_random_order(toy_model):
    images, labels = quadrant_images(8, size=32, seed=1000)
    positives = images[labels == 1]
    evidence = np.zeros((len(positives), 32, 32), dtype=np.float32)
    evidence[:, :16, :16] = 1.0  # the quadrant the data were made with
    result = faithfulness.faithfulness(toy_model, positives, [1] * len(positives), evidence, steps=8)
    assert result["map"]["fractions"] == [k / 8 for k in range(9)]
    assert result["map"]["deletion_auc"] < result["random"]["deletion_auc"]
    assert result["map"]["insertion_auc"] > result["random"]["insertion_auc"]


def test_spearman_rank_correlation_hand_values():
    a = np.array([[[1.0, 2.0], [3.0, 4.0]]])
    assert faithfulness.rank_correlation(a, a * 10) == pytest.approx(1.0)
    assert faithfulness.rank_correlation(a, -a) == pytest.approx(-1.0)
    assert faithfulness.rank_correlation(a, np.zeros_like(a)) == 0.0


RECORD = {"split": "test", "classes": ["no", "yes"], "positive_class": "yes",
          "paths": ["a", "b", "c", "d", "e", "f"], "labels": [1, 0, 1, 0, 1, 0], "predictions": [1, 1, 0, 0, 1, 0],
          "probabilities": [[0.2, 0.8], [0.3, 0.7], [0.6, 0.4], [0.9, 0.1], [0.1, 0.9], [0.8, 0.2]]}


def test_binary_groups_and_round_robin_selection():
    assert image_groups(RECORD) == ["TP", "FP", "FN", "TN", "TP", "TN"]
    assert select_images(RECORD, n=4) == [0, 1, 2, 3]  # one of each group, ordered TP, FP, FN, TN
    assert select_images(RECORD, n=5) == [0, 4, 1, 2, 3]
    assert select_images(RECORD, paths=["f", "b"]) == [5, 1]
    with pytest.raises(MedclfError, match="--paths zz"):
        select_images(RECORD, paths=["zz"])
    assert target_classes(RECORD, [0, 2], "true") == [1, 1]
    assert target_classes(RECORD, [0, 2], "predicted") == [1, 0]
    assert target_classes(RECORD, [0, 2], "no") == [0, 0]
    with pytest.raises(MedclfError, match="--target maybe"):
        target_classes(RECORD, [0], "maybe")


def test_multiclass_groups_are_true_classes():
    record = dict(RECORD, classes=["a", "b", "c"], labels=[0, 2, 1, 0, 2, 1])
    assert image_groups(record) == ["a", "c", "b", "a", "c", "b"]
    assert select_images(record, n=3) == [0, 2, 1]


@pytest.mark.slow
def test_explain_command_writes_overlays_sheet_and_json(brain_partition, tmp_path, capsys):
    from medclf.infer.predict import run_test
    from medclf.train.training import run_training

    splits = subset_splits(brain_partition, tmp_path / "tiny")
    run_training({"splits": str(splits), "img_size": 32, "epochs": 1, "batch_size": 8, "out": str(tmp_path),
                  "run_name": "run", "progress": False, "device": "cpu", "threads": 1})
    run_test(tmp_path / "run", progress=False)
    assert cli.main(["explain", "--run", str(tmp_path / "run"), "--n", "4", "--steps", "4", "--no-progress"]) == 0
    out = tmp_path / "run" / "explain" / "test" / "gradcam"
    summary = json.loads((out / "explain.json").read_text())
    assert summary["schema"] == "medclf.explain/1" and summary["target_layer"] == "layer4"
    assert len(summary["images"]) == 4 and all((out / e["file"]).is_file() for e in summary["images"])
    assert (out / "contact_sheet.png").stat().st_size < 200_000
    assert isinstance(summary["sanity_check"]["passed"], bool)
    assert "sanity check" in capsys.readouterr().out
    assert cli.main(["explain", "--run", str(tmp_path / "run"), "--split", "train", "--no-progress"]) == 1
    assert "predictions_train.json: not found; run `medclf test" in capsys.readouterr().err
