"""Label smoothing, mixup/cutmix and the TrivialAugment/RandAugment steps: the losses on hand-made
batches (values written as fractions of ln 2 or as the formula), the cutmix box, the augmentation
steps never touching val, and one tiny real `medclf train` with all of them."""

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from medclf import cli
from medclf.commands import registry
from medclf.core.errors import MedclfError
from medclf.core.fileio import read_json
from medclf.data import transforms
from medclf.engine import mixing
from medclf.infer.predict import run_test
from medclf.train import imbalance, training
from medclf.workflows import study

from splits_files import subset_splits

LN2 = math.log(2)
# Row 0: softmax [1/2, 1/4, 1/4]; row 1: [1/4, 1/2, 1/4]. So -log p is ln 2 on the big entry and 2 ln 2 elsewhere.
LOGITS = torch.tensor([[LN2, 0.0, 0.0], [0.0, LN2, 0.0]], dtype=torch.float64)
LABELS = torch.tensor([0, 1])
SWAP = torch.tensor([1, 0])  # the pair order: each sample mixed with the other


def test_label_smoothing_of_the_softmax_loss_is_the_written_formula():
    # eps = 3/10, K = 3: (1 - eps) * (-log p_y) + eps/3 * sum_c (-log p_c), and sum_c -log p_c = 5 ln 2.
    smoothed = imbalance.build_criterion("none", [0, 1, 2], 3, label_smoothing=3 / 10)
    plain = imbalance.build_criterion("none", [0, 1, 2], 3)
    assert float(plain(LOGITS, LABELS)) == pytest.approx(LN2, rel=1e-12)
    assert float(smoothed(LOGITS, LABELS)) == pytest.approx((7 / 10 + 1 / 2) * LN2, rel=1e-12)  # 6/5 ln 2
    # The other class's labels: -log p_y = 2 ln 2, so (7/10 * 2 + 1/2) ln 2 = 19/10 ln 2.
    assert float(smoothed(LOGITS, SWAP)) == pytest.approx(19 / 10 * LN2, rel=1e-12)


@pytest.mark.parametrize("positive, labels, logit", [("yes", [1, 1], math.log(3)), ("no", [0, 0], -math.log(3))])
def test_label_smoothing_of_the_single_logit_loss_targets_one_minus_half_eps(positive, labels, logit):
    # p(positive) = 3/4; eps = 1/5 -> target 9/10 for a positive; pos_weight (loss-weights) scales that side.
    classes = ["no", "yes"]
    logits, targets = torch.full((2, 1), logit), torch.tensor(labels)
    smoothed = imbalance.build_criterion("none", [0, 1], 2, True, classes=classes, positive=positive,
                                         label_smoothing=1 / 5)
    plain = imbalance.build_criterion("none", [0, 1], 2, True, classes=classes, positive=positive)
    assert float(plain(logits, targets)) == pytest.approx(-math.log(3 / 4), rel=1e-6)
    expected = -(9 / 10 * math.log(3 / 4) + 1 / 10 * math.log(1 / 4))
    assert float(smoothed(logits, targets)) == pytest.approx(expected, rel=1e-6)
    # loss-weights on train labels with 2 negatives per positive: pos_weight 2 on the 9/10 term.
    train = [1 - labels[0]] * 2 + [labels[0]]
    weighted = imbalance.build_criterion("loss-weights", train, 2, True, classes=classes, positive=positive,
                                         label_smoothing=1 / 5)
    expected = -(2 * 9 / 10 * math.log(3 / 4) + 1 / 10 * math.log(1 / 4))
    assert float(weighted(logits, targets)) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("eps, balance, words", [(0.1, "focal", "--balance focal"), (1.0, "none", "below 1"),
                                                 (-0.1, "none", "from 0")])
def test_label_smoothing_refuses_focal_loss_and_values_outside_0_1(eps, balance, words):
    with pytest.raises(MedclfError, match=words):
        training.resolve_config({"splits": "s.csv", "label_smoothing": eps, "balance": balance})


def test_mixup_blends_the_pair_and_mixes_the_loss_with_lambda():
    images = torch.tensor([[[[4.0]]], [[[8.0]]]], dtype=torch.float64)  # two 1x1 one-channel images
    mixed = mixing.mix(images, LABELS, "mixup", 3 / 4, SWAP)
    assert mixed.inputs[:, 0, 0, 0].tolist() == [3 / 4 * 4 + 1 / 4 * 8, 3 / 4 * 8 + 1 / 4 * 4]  # [5, 7]
    assert mixed.labels_b.tolist() == [1, 0] and mixed.lam == 3 / 4
    # CE(y_a) = ln 2, CE(y_b) = 2 ln 2 -> 3/4 ln 2 + 1/4 * 2 ln 2 = 5/4 ln 2.
    loss = mixing.mixed_loss(nn.CrossEntropyLoss(), LOGITS, LABELS, mixed.labels_b, mixed.lam)
    assert float(loss) == pytest.approx(5 / 4 * LN2, rel=1e-12)
    # With label smoothing 3/10: 3/4 * 6/5 ln 2 + 1/4 * 19/10 ln 2 = 11/8 ln 2.
    smoothed = imbalance.build_criterion("none", [0, 1, 2], 3, label_smoothing=3 / 10)
    loss = mixing.mixed_loss(smoothed, LOGITS, LABELS, mixed.labels_b, mixed.lam)
    assert float(loss) == pytest.approx(11 / 8 * LN2, rel=1e-12)
    assert mixing.dominant_labels(LABELS, mixed.labels_b, 3 / 4).tolist() == [0, 1]
    assert mixing.dominant_labels(LABELS, mixed.labels_b, 1 / 4).tolist() == [1, 0]


@pytest.mark.parametrize("lam", [1 / 4, 3 / 4])
def test_training_metrics_of_a_mixed_batch_score_the_dominant_label(lam):
    from medclf.engine.steps import train_one_epoch

    # Images 4 and 8 mixed with each other; the model predicts class 1 exactly when its input is above 6.
    # lam 1/4: inputs [7, 5] -> predictions [1, 0] = y_b; lam 3/4: inputs [5, 7] -> [0, 1] = y_a. Accuracy 1 both times.
    model = nn.Sequential(nn.Flatten(), nn.Linear(1, 2))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[-1.0], [1.0]]))
        model[1].bias.copy_(torch.tensor([6.0, -6.0]))
    batches = [(torch.tensor([[[[4.0]]], [[[8.0]]]]), LABELS)]

    def mixer(images, labels):
        return mixing.mix(images, labels, "mixup", lam, SWAP)

    metrics = train_one_epoch(model, nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), lr=0.0), batches,
                              mixer=mixer)
    assert metrics["accuracy"] == 1.0


@pytest.mark.parametrize("centre, box, lam", [((1, 1), (0, 2, 0, 2), 3 / 4), ((0, 0), (0, 1, 0, 1), 15 / 16),
                                              ((3, 2), (2, 4, 1, 3), 3 / 4)])
def test_cutmix_box_and_its_area_corrected_lambda(centre, box, lam):
    # lam 3/4 on a 4x4 image: sides sqrt(1/4) * 4 = 2; clipped at a corner only 1x1 is left.
    assert mixing.cutmix_box(4, 4, 3 / 4, *centre) == box
    images = torch.stack([torch.zeros(1, 4, 4), torch.ones(1, 4, 4)])
    mixed = mixing.mix(images, LABELS, "cutmix", 3 / 4, SWAP, centre)
    assert mixed.lam == lam
    assert float(mixed.inputs[0].mean()) == 1 - lam and float(mixed.inputs[1].mean()) == lam
    top, bottom, left, right = box
    assert bool((mixed.inputs[0, :, top:bottom, left:right] == 1).all())


def test_metadata_is_blended_by_mixup_and_follows_the_larger_area_in_cutmix():
    images, meta = torch.zeros(2, 1, 4, 4), torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    mixed = mixing.mix([images, meta], LABELS, "mixup", 3 / 4, SWAP)
    assert mixed.inputs[1].tolist() == [[3 / 4, 1 / 4], [1 / 4, 3 / 4]]
    kept = mixing.mix([images, meta], LABELS, "cutmix", 3 / 4, SWAP, (1, 1))  # the box takes 1/4
    assert kept.inputs[1].tolist() == meta.tolist()
    taken = mixing.mix([images, meta], LABELS, "cutmix", 1 / 16, SWAP, (2, 2))  # sides round(4 * sqrt(15/16)) = 4
    assert taken.lam < 1 / 2 and taken.inputs[1].tolist() == meta[SWAP].tolist()


def test_mixer_draws_come_from_torch_seed_and_options_are_checked():
    images, labels = torch.rand(8, 3, 16, 16), torch.arange(8) % 2

    def draw(seed, **options):
        torch.manual_seed(seed)
        return mixing.Mixer(**options)(images, labels)

    first, again = draw(5, mixup_alpha=0.4, cutmix_alpha=1.0), draw(5, mixup_alpha=0.4, cutmix_alpha=1.0)
    assert torch.equal(first.inputs, again.inputs) and first.lam == again.lam and 0 <= first.lam <= 1
    assert all(draw(seed, mixup_alpha=0.4, mix_prob=0.0) is None for seed in range(5))
    assert mixing.build_mixer({"mixup_alpha": 0.0, "cutmix_alpha": 0.0, "mix_prob": 1.0}) is None
    for key, value in (("mixup_alpha", -1.0), ("cutmix_alpha", float("nan")), ("mix_prob", 1.5)):
        with pytest.raises(MedclfError, match=f"--{key.replace('_', '-')}"):
            training.resolve_config({"splits": "s.csv", key: value})


def _gradient(side=32):
    ramp = torch.arange(side, dtype=torch.int32) * (256 // side)
    return torch.stack([ramp[None, :].expand(side, side), ramp[:, None].expand(side, side),
                        (ramp[None, :] + ramp[:, None]).clamp(max=255).expand(side, side)]).to(torch.uint8)


@pytest.mark.parametrize("spec", ["flips+trivialaugment", "flips+randaugment"])
def test_policy_steps_are_seeded_train_only_and_come_after_the_preset(spec):
    image, mean, std = _gradient(), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    train = transforms.train_transform(spec, 32, mean, std)
    evaluate = transforms.eval_transform(spec, 32, mean, std)
    plain = (image.float() / 255 - 0.5) / 0.25
    assert torch.allclose(evaluate(image), plain)
    policy = {"flips+trivialaugment": "TrivialAugmentWide", "flips+randaugment": "RandAugment"}[spec]
    assert [type(t).__name__ for t in train.transforms] == [
        "RandomHorizontalFlip", "RandomVerticalFlip", policy, "ToDtype", "Normalize"]

    def augmented(seed):
        torch.manual_seed(seed)
        return train(image)

    assert torch.equal(augmented(1), augmented(1))
    # Flips alone give one of four images; the policy makes other images under some seed.
    flips = [torch.flip(plain, dims) for dims in ([], [1], [2], [1, 2])]
    assert any(not any(torch.allclose(augmented(s), f) for f in flips) for s in range(10))


def test_study_train_section_maps_the_new_options():
    parser = registry.stage_parsers()["train"]
    options = {"label-smoothing": 0.1, "mixup-alpha": 0.2, "cutmix-alpha": 1.0, "mix-prob": 0.5,
               "augment": "flips+randaugment"}
    argv = study.options_to_argv(options, parser, "train", "s: train")
    args = parser.parse_args(["--splits", "s.csv"] + argv)
    assert (args.label_smoothing, args.mixup_alpha, args.cutmix_alpha, args.mix_prob) == (0.1, 0.2, 1.0, 0.5)
    defaults = parser.parse_args(["--splits", "s.csv"])
    assert training.resolve_config(vars(defaults))["mix_prob"] == 1.0


@pytest.mark.slow
def test_tiny_train_with_every_block_keeps_val_clean_and_its_loss_unsmoothed(brain_partition, tmp_path,
                                                                             monkeypatch):
    splits = subset_splits(brain_partition, tmp_path / "t", {"train": 12, "val": 6, "test": 1})
    seen = {}
    real_evaluate = training.evaluate

    def evaluate_checking_val(model, criterion, loader, *args, **kwargs):
        dataset, (mean, std) = loader.dataset, (torch.tensor(v)[:, None, None] for v in seen["norm"])
        for index in range(len(dataset)):
            cached = torch.from_numpy(np.array(dataset.cache[index])).float() / 255
            assert torch.allclose(dataset[index][0], (cached - mean) / std, atol=1e-6)
        seen["val_images"] = len(dataset)
        return real_evaluate(model, criterion, loader, *args, **kwargs)

    real_run_normalisation = training.run_normalisation

    def keep_norm(*args, **kwargs):
        norm = real_run_normalisation(*args, **kwargs)
        seen["norm"] = (norm["mean"], norm["std"])
        return norm

    real_mixed_loss = mixing.mixed_loss

    def counted_mixed_loss(*args):
        seen["mixed_batches"] = seen.get("mixed_batches", 0) + 1
        return real_mixed_loss(*args)

    monkeypatch.setattr(training, "evaluate", evaluate_checking_val)
    monkeypatch.setattr(mixing, "mixed_loss", counted_mixed_loss)
    monkeypatch.setattr(training, "run_normalisation", keep_norm)
    status = cli.main(["train", "--splits", str(splits), "--img-size", "32", "--epochs", "1", "--threads", "1",
                       "--batch-size", "8", "--no-amp", "--device", "cpu", "--no-progress", "--out", str(tmp_path),
                       "--run-name", "r", "--label-smoothing", "0.2", "--mixup-alpha", "0.2", "--cutmix-alpha",
                       "1.0", "--mix-prob", "0.9", "--augment", "flips+trivialaugment"])
    assert status == 0 and seen["val_images"] == 12 and seen["mixed_batches"] >= 1
    run = tmp_path / "r"
    arguments = read_json(run / "config.json")["arguments"]
    assert {k: arguments[k] for k in ("label_smoothing", "mixup_alpha", "cutmix_alpha", "mix_prob", "augment")} == {
        "label_smoothing": 0.2, "mixup_alpha": 0.2, "cutmix_alpha": 1.0, "mix_prob": 0.9,
        "augment": "flips+trivialaugment"}
    # val_loss is the plain cross-entropy of the epoch-1 (= best) model's val probabilities.
    val_loss = float((run / "history.csv").read_text().splitlines()[1].split(",")[5])
    record = json.loads(run_test(run, "val", progress=False, device="cpu", amp=False)[0].read_text())
    probs, labels = np.array(record["probabilities"]), np.array(record["labels"])
    nll = -np.log(probs[np.arange(len(labels)), labels])
    smoothed = 0.8 * nll - 0.2 / 2 * np.log(probs).sum(axis=1)
    assert val_loss == pytest.approx(nll.mean(), rel=1e-4) and abs(val_loss - smoothed.mean()) > 1e-3
