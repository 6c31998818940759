"""--balance: weights from the train split only; focal loss values; val/test never resampled."""

import json
import math

import pytest
import torch
from torch import nn

from medclf.core.errors import MedclfError
from medclf.train import imbalance

from splits_files import subset_splits


def test_class_weights_are_inverse_frequency():
    weights = imbalance.class_weights([0, 0, 0, 1], 2)
    assert weights.tolist() == [4 / 6, 4 / 2]


def test_sample_weights_are_one_over_class_count():
    assert imbalance.sample_weights([0, 1, 0, 0, 2, 2], 3).tolist() == [1 / 3, 1 / 1, 1 / 3, 1 / 3, 1 / 2, 1 / 2]


def test_a_class_without_train_images_is_an_error():
    with pytest.raises(MedclfError, match="no train images"):
        imbalance.class_weights([0, 0, 2], 3)


def test_sampler_draws_classes_evenly():
    labels = [0] * 90 + [1] * 10
    sampler = imbalance.make_sampler(labels, 2, torch.Generator().manual_seed(0))
    drawn = [labels[i] for _ in range(50) for i in sampler]
    assert abs(sum(drawn) / len(drawn) - 1 / 2) < 0.02


def test_focal_loss_hand_values():
    logits = torch.tensor([[0.0, 0.0]])
    target = torch.tensor([0])
    # p_t = 1/2: (1 - 1/2)^2 * ln 2
    assert imbalance.FocalLoss(gamma=2)(logits, target).item() == pytest.approx(math.log(2) / 4)
    # alpha 1/4 for the positive class: class 0 is weighted 3/4
    assert imbalance.FocalLoss(2, alpha=[3 / 4, 1 / 4])(logits, target).item() == pytest.approx(3 / 4 * math.log(2) / 4)
    # one logit ln 3: p(1) = 3/4, target 1 -> (1/4)^2 * -ln(3/4)
    single = imbalance.FocalLoss(2, single_logit=True)(torch.tensor([[math.log(3)]]), torch.tensor([1]))
    assert single.item() == pytest.approx((1 / 16) * -math.log(3 / 4))


def test_focal_loss_with_gamma_zero_is_cross_entropy():
    torch.manual_seed(0)
    logits, target = torch.randn(6, 4), torch.tensor([0, 1, 2, 3, 1, 2])
    assert imbalance.FocalLoss(0)(logits, target).item() == pytest.approx(nn.CrossEntropyLoss()(logits, target).item())


def test_build_criterion_uses_the_given_train_labels():
    loss = imbalance.build_criterion("loss-weights", [0, 0, 0, 1], 2)
    assert loss.weight.tolist() == pytest.approx([2 / 3, 2])
    bce = imbalance.build_criterion("loss-weights", [0, 0, 0, 1], 2, single_logit=True, classes=["no", "yes"])
    assert bce.pos_weight.item() == 3
    focal = imbalance.build_criterion("focal", [0, 0, 0, 1], 2, focal_gamma=1, focal_alpha="balanced")
    assert focal.alpha.tolist() == pytest.approx([2 / 3, 2])
    with pytest.raises(MedclfError):
        imbalance.build_criterion("loss-weights", [0, 1, 2], 3, single_logit=True)


# ---- issue 8 item 2: the named positive, wherever it sits in the class order

MEL_FIRST = {"classes": ["melanoma", "other"], "positive": "melanoma"}  # sorted order puts the positive first


def test_focal_alpha_weighs_the_named_positive_not_index_1():
    focal = imbalance.build_criterion("focal", [0, 1, 1, 1], 2, focal_alpha="0.75", **MEL_FIRST)
    assert focal.alpha.tolist() == pytest.approx([3 / 4, 1 / 4])
    focal = imbalance.build_criterion("focal", [0, 1, 1, 1], 2, focal_alpha="0.75", classes=["no", "yes"])
    assert focal.alpha.tolist() == pytest.approx([1 / 4, 3 / 4])


def test_single_logit_pos_weight_is_negatives_over_the_named_positive():
    # 1 melanoma (index 0, positive), 3 other: pos_weight = 3 / 1 on the melanoma images
    bce = imbalance.build_criterion("loss-weights", [0, 1, 1, 1], 2, single_logit=True, **MEL_FIRST)
    assert bce.pos_weight.item() == 3
    # the head's logit is the log-odds of classes[1] ("other"): logit ln 3 -> P(other) = 3/4, P(melanoma) = 1/4
    logit = torch.tensor([[math.log(3)]])
    assert bce(logit, torch.tensor([0])).item() == pytest.approx(3 * -math.log(1 / 4))  # melanoma image, weighted
    assert bce(logit, torch.tensor([1])).item() == pytest.approx(-math.log(3 / 4))  # other image, weight 1


@pytest.mark.parametrize("options", [
    {"balance": "none", "single_logit": True},
    {"balance": "loss-weights", "single_logit": True},
    {"balance": "focal", "single_logit": True},
    {"balance": "focal", "focal_alpha": "0.25"},
])
def test_binary_study_without_a_named_positive_is_refused(options):
    balance = options.pop("balance")
    with pytest.raises(MedclfError, match=r"splits.csv: binary study \(melanoma vs other\) without a named "
                                          r"positive class.*--positive"):
        imbalance.build_criterion(balance, [0, 1, 1, 1], 2, classes=["melanoma", "other"], positive=None,
                                  source="splits.csv", **options)


def test_options_that_need_no_positive_still_work_without_one():
    for balance, alpha in (("none", None), ("loss-weights", None), ("focal", "balanced"), ("focal", None)):
        imbalance.build_criterion(balance, [0, 1, 1, 1], 2, focal_alpha=alpha, classes=["melanoma", "other"])


@pytest.mark.slow
@pytest.mark.parametrize("balance", ["sampler", "loss-weights", "focal"])
def test_training_computes_balance_from_train_only_and_predicts_every_val_test_image(
        balance, brain_partition, tmp_path_factory, monkeypatch):
    from medclf.core.splits import read_splits
    from medclf.infer.predict import run_test
    from medclf.train import training

    base = tmp_path_factory.mktemp(f"bal-{balance}")
    full = brain_partition
    # Imbalanced train (20 yes : 6 no), other proportions in val and test.
    splits = subset_splits(full, base / "tiny", {"train": 20, "val": 5, "test": 7})
    table = read_splits(splits)
    frame = table.frame
    keep = ~((frame["split"] == "train") & (frame["label"] == "no")) | frame.index.isin(
        frame[(frame["split"] == "train") & (frame["label"] == "no")].index[:6])
    from medclf.core.splits import write_splits_csv

    write_splits_csv(splits, frame[keep])
    train_labels = read_splits(splits).rows("train")["label_index"].tolist()
    assert sorted(train_labels).count(0) == 6 and len(train_labels) == 26

    seen = {}
    real_sampler, real_criterion = imbalance.make_sampler, imbalance.build_criterion

    def spy_sampler(labels, n_classes, *args, **kwargs):
        seen["sampler"] = list(labels)
        return real_sampler(labels, n_classes, *args, **kwargs)

    def spy_criterion(mode, labels, *args, **kwargs):
        seen["criterion"] = list(labels)
        return real_criterion(mode, labels, *args, **kwargs)

    monkeypatch.setattr(imbalance, "make_sampler", spy_sampler)
    monkeypatch.setattr(imbalance, "build_criterion", spy_criterion)
    training.run_training({"splits": str(splits), "img_size": 32, "epochs": 1, "batch_size": 8, "balance": balance,
                           "focal_alpha": "0.25", "out": str(base / "runs"), "run_name": "r", "progress": False,
                           "threads": 1})
    assert seen["criterion"] == train_labels
    if balance == "sampler":
        assert seen["sampler"] == train_labels
    for path in run_test(base / "runs" / "r", "test", progress=False):
        record = json.loads(path.read_text())
        rows = read_splits(splits).rows(record["split"])
        assert record["paths"] == list(rows["path"]) and len(record["probabilities"]) == len(rows)
