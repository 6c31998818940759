"""Issue 15 part 2: weight decay without norm/bias parameters, EMA and SWA weights, patience after
the warm-up, and named recipes (explicit argument > recipe > default). Hand-computed values."""

import importlib.util

import pytest
import torch
from torch import nn

from medclf.commands import registry
from medclf.core.errors import MedclfError
from medclf.engine.ema import attach_ema, recompute_batchnorm, swa_model
from medclf.engine.steps import FP32_CPU
from medclf.train import recipes
from medclf.train.early_stopping import EarlyStopping, patience_count_from, stopped_by_patience, warmup_epochs


class Scalar(nn.Module):
    def __init__(self, value):
        super().__init__()
        self.w = nn.Parameter(torch.tensor([float(value)], dtype=torch.float64))


def sgd_steps(model, optimizer, gradients):
    """One SGD step (lr 1) per gradient: loss = g * w, so w -> w - g."""
    for g in gradients:
        optimizer.zero_grad()
        (model.w * g).sum().backward()
        optimizer.step()


def test_ema_after_three_optimiser_steps_is_the_hand_computed_average():
    model = Scalar(1)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    ema = attach_ema(optimizer, model, decay=1 / 2)
    sgd_steps(model, optimizer, [1 / 2, 1 / 4, 1 / 8])
    # w: 1/2, 1/4, 1/8 after each step; the first update copies, then ema = 1/2 ema + 1/2 w:
    # 1/2 -> 1/2 * 1/2 + 1/2 * 1/4 = 3/8 -> 1/2 * 3/8 + 1/2 * 1/8 = 1/4
    assert model.w.item() == 1 / 8
    assert ema.module.w.item() == 1 / 4
    assert int(ema.n_averaged) == 3


def test_ema_averages_batchnorm_statistics_and_copies_counters():
    model = nn.Sequential(nn.Linear(1, 1), nn.BatchNorm1d(1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    ema = attach_ema(optimizer, model, decay=1 / 2)
    bn = model[1]
    for mean in (4.0, 8.0):
        bn.running_mean.fill_(mean)
        bn.num_batches_tracked.fill_(int(mean))
        optimizer.step()  # no gradients: the weights stay, the step (and its EMA update) happens
    averaged = ema.module[1]
    assert averaged.running_mean.item() == 1 / 2 * 4 + 1 / 2 * 8
    assert averaged.num_batches_tracked.item() == bn.num_batches_tracked.item()  # copied, not averaged


def test_swa_is_the_mean_of_three_known_weight_states():
    model = Scalar(0)
    swa = swa_model(model)
    for value in (1 / 2, 1 / 4, 3 / 4):
        with torch.no_grad():
            model.w.fill_(value)
        swa.update_parameters(model)
    assert swa.module.w.item() == (1 / 2 + 1 / 4 + 3 / 4) / 3 == 1 / 2


def test_batchnorm_statistics_recomputed_over_the_whole_loader():
    model = nn.Sequential(nn.BatchNorm1d(1))
    model[0].running_mean.fill_(100.0)
    batches = [(torch.tensor([[1.0], [3.0]]), torch.zeros(2)), (torch.tensor([[5.0], [7.0]]), torch.zeros(2))]
    recompute_batchnorm(model, batches, FP32_CPU)
    assert model[0].running_mean.item() == 4.0  # (1 + 3 + 5 + 7) / 4, the old 100 forgotten
    # unbiased variance of each batch (2 each), averaged over the batches
    assert model[0].running_var.item() == pytest.approx(2.0)
    assert model[0].momentum == 0.1 and model.training


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.block = nn.Sequential(nn.Conv2d(4, 4, 1), nn.GroupNorm(2, 4))
        self.fc = nn.Linear(4, 2)


def test_no_decay_groups_hold_exactly_the_norm_and_bias_parameters():
    from medclf.train.training import no_decay_parameters, split_weight_decay

    model = Small()
    names = {id(p): n for n, p in model.named_parameters()}
    assert sorted(no_decay_parameters(model).values()) == ["block.0.bias", "block.1.bias", "block.1.weight",
                                                           "bn.bias", "bn.weight", "fc.bias"]
    groups = split_weight_decay(model, [{"params": list(model.parameters()), "lr": 0.1}], 0.05)
    assert [(g["name"], g["weight_decay"], g["lr"]) for g in groups] == [("decay", 0.05, 0.1), ("no_decay", 0.0, 0.1)]
    assert [names[id(p)] for p in groups[0]["params"]] == ["conv.weight", "block.0.weight", "fc.weight"]
    assert sorted(names[id(p)] for p in groups[1]["params"]) == sorted(no_decay_parameters(model).values())


def test_no_decay_split_keeps_the_learning_rate_roles():
    from medclf.models import architectures as models
    from medclf.train.training import split_weight_decay

    model = models.build_model("resnet18", 2)[0]
    roles = models.parameter_groups(model, 1e-3, {"backbone": 1e-4, "head": 1e-2})
    groups = split_weight_decay(model, roles, 0.05)
    assert [(g["name"], g["lr"], g["weight_decay"]) for g in groups] == [
        ("backbone/decay", 1e-4, 0.05), ("backbone/no_decay", 1e-4, 0.0),
        ("head/decay", 1e-2, 0.05), ("head/no_decay", 1e-2, 0.0)]
    assert [len(g["params"]) for g in groups[2:]] == [1, 1]  # fc.weight | fc.bias
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    optimizer = torch.optim.AdamW(groups, lr=1e-3, weight_decay=0.05)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.05, 0.0, 0.05, 0.0]


# ---------------------------------------------------------------- patience and the warm-up

def test_patience_counts_only_epochs_after_the_warm_up():
    values = [1.0, 1.2, 1.3, 1.4, 1.5, 1.6]  # best at epoch 1, worse ever after
    plain, waiting = EarlyStopping(patience=2), EarlyStopping(patience=2, count_from=3)
    stops = {}
    for name, stopper in (("plain", plain), ("waiting", waiting)):
        for epoch, value in enumerate(values, start=1):
            stopper.step(value)
            if stopper.should_stop:
                stops[name] = epoch
                break
    assert stops == {"plain": 3, "waiting": 5}  # epochs 2-3 are the warm-up: 4 and 5 use the patience
    assert waiting.best_epoch == 1
    restored = EarlyStopping()
    restored.load_state_dict(waiting.state_dict())
    assert restored.count_from == 3
    old = {k: v for k, v in waiting.state_dict().items() if k != "count_from"}  # last.pt of an older run
    restored.load_state_dict(old)
    assert restored.count_from == 0


def test_an_improvement_during_the_warm_up_still_counts_and_resets():
    stopper = EarlyStopping(patience=1, mode="max", count_from=2)
    assert [stopper.step(v) for v in (1 / 2, 1 / 4, 3 / 4)] == [True, False, True]
    assert stopper.bad_epochs == 0 and not stopper.should_stop
    stopper.step(1 / 2)
    assert stopper.should_stop


@pytest.mark.parametrize("config, expected", [
    ({"scheduler": "none", "epochs": 30}, 0),
    ({"scheduler": "cosine", "warmup_epochs": 2, "epochs": 30}, 2),
    ({"scheduler": "warmup-cosine", "warmup_fraction": 1 / 10, "epochs": 25}, 3),  # 2.5 rounded up
    ({"scheduler": "warmup-cosine", "warmup_fraction": 1 / 10, "epochs": 30}, 3),  # 3.0 stays 3
    ({"scheduler": "plateau", "warmup_epochs": 4, "epochs": 30}, 0),
])
def test_warm_up_epochs_of_each_schedule(config, expected):
    assert warmup_epochs(config) == expected
    assert patience_count_from(config) == expected  # --patience-start warmup is the default


def test_patience_start_number_and_swa():
    config = {"scheduler": "warmup-cosine", "warmup_fraction": 0.1, "epochs": 30}
    assert patience_count_from({**config, "patience_start": 7}) == 7
    assert patience_count_from({**config, "patience_start": 0}) == 0
    assert patience_count_from({**config, "swa_epochs": 5}) == 30  # SWA: the run trains every epoch


def test_stopped_by_patience_from_the_best_flags():
    flags = [True, False, False, False, False]
    assert stopped_by_patience(flags, 2) is True
    assert stopped_by_patience(flags, 2, count_from=3) is True    # epochs 4, 5 count
    assert stopped_by_patience(flags, 2, count_from=4) is False   # epoch 5 alone
    assert stopped_by_patience([False, False], 2) is True         # no best epoch at all


# ---------------------------------------------------------------- recipes

def recipe_keys():
    return {key for recipe in recipes.RECIPES.values() for key in recipe}


def test_every_recipe_key_is_a_training_option():
    from medclf.train.training import DEFAULTS

    assert {"plain", "cpu-small", "gpu-imagenet"} <= set(recipes.RECIPES)
    assert recipe_keys() <= set(DEFAULTS)
    assert set(recipes.RECIPES["plain"].items()) <= set(DEFAULTS.items())  # plain = today's defaults


def test_every_option_a_recipe_sets_defaults_to_none_on_the_command_line():
    from medclf.cli import build_parser
    from medclf.train.training import DEFAULTS

    parser = build_parser()
    train = next(a for a in parser._actions if hasattr(a, "choices") and isinstance(a.choices, dict)).choices["train"]
    defaults = {a.dest: a.default for a in train._actions}
    for key in recipe_keys():
        assert key in defaults, key
        assert defaults[key] is None, key  # else the parser's default would hide the recipe's value
    assert defaults["recipe"] is None and "recipe" in DEFAULTS


@pytest.fixture
def test_recipe(monkeypatch):
    values = {"optimizer": "adamw", "lr": 2e-3, "epochs": 40, "no_decay_norm_bias": True, "ema_decay": 0.99}
    monkeypatch.setitem(recipes.RECIPES, "test-recipe", values)
    return values


def test_explicit_argument_beats_the_recipe_which_beats_the_default(test_recipe):
    from medclf.train.training import DEFAULTS, resolve_config

    cfg = resolve_config({"recipe": "test-recipe", "lr": 0.01, "ema_decay": None, "run_name": "r"})
    assert cfg["lr"] == 0.01                                  # explicit
    assert cfg["optimizer"] == "adamw" and cfg["ema_decay"] == 0.99 and cfg["epochs"] == 40  # recipe
    assert cfg["weight_decay"] == DEFAULTS["weight_decay"] and cfg["patience"] == DEFAULTS["patience"]
    assert cfg["recipe"] == "test-recipe"
    plain = resolve_config({"run_name": "r"})
    assert plain["optimizer"] == DEFAULTS["optimizer"] and plain["recipe"] is None


def test_recipe_precedence_through_the_command_line(test_recipe):
    from medclf.cli import build_parser
    from medclf.train.training import config_from_arguments, resolve_config

    args = build_parser().parse_args(["train", "--recipe", "test-recipe", "--lr", "0.01", "--decay-norm-bias",
                                      "--weight-decay", "0.1", "--run-name", "r"])
    cfg = resolve_config(config_from_arguments(args))
    assert (cfg["lr"], cfg["no_decay_norm_bias"], cfg["weight_decay"]) == (0.01, False, 0.1)  # typed
    assert (cfg["optimizer"], cfg["epochs"], cfg["ema_decay"]) == ("adamw", 40, 0.99)           # recipe
    assert (cfg["patience"], cfg["scheduler"], cfg["img_size"]) == (5, "none", 224)             # defaults


def test_unknown_recipe_or_recipe_key_is_one_clear_error(monkeypatch):
    from medclf.train.training import resolve_config

    with pytest.raises(MedclfError, match="--recipe fast: no such recipe; use one of plain, cpu-small"):
        resolve_config({"recipe": "fast", "run_name": "r"})
    monkeypatch.setitem(recipes.RECIPES, "typo", {"ema_decy": 0.9})
    with pytest.raises(MedclfError, match="--recipe typo: sets ema_decy, which this medclf's training does not know"):
        resolve_config({"recipe": "typo", "run_name": "r"})


@pytest.mark.parametrize("option, message", [
    ({"ema_decay": 1.0}, "--ema-decay 1.0: give a decay in"),
    ({"swa_epochs": 60}, "--swa-epochs 60: give a whole number from 0"),
    ({"swa_lr": 0.01}, "--swa-lr 0.01: needs --swa-epochs"),
    ({"patience_start": "later"}, "--patience-start later: use warmup or a whole number"),
])
def test_averaging_options_are_checked(option, message):
    from medclf.train.training import resolve_config

    with pytest.raises(MedclfError, match=message):
        resolve_config({"run_name": "r", **option})
    assert resolve_config({"run_name": "r", "patience_start": "3"})["patience_start"] == 3


def test_a_study_files_explicit_false_wins_over_the_recipe(test_recipe):
    from medclf.train.training import config_from_arguments, resolve_config
    from medclf.workflows.study import options_to_argv

    parser = registry.stage_parsers()["train"]
    section = {"recipe": "test-recipe", "no-decay-norm-bias": False, "lr": 0.01}

    def resolved():
        argv = options_to_argv(section, parser, "train", "study.yaml: train") + ["--run-name", "r"]
        return argv, resolve_config(config_from_arguments(parser.parse_args(argv)))

    argv, cfg = resolved()
    assert "--decay-norm-bias" in argv
    assert (cfg["no_decay_norm_bias"], cfg["lr"], cfg["optimizer"]) == (False, 0.01, "adamw")
    section["no-decay-norm-bias"] = True
    assert resolved()[1]["no_decay_norm_bias"] is True


def _recipes_ablation(repo_root):
    spec = importlib.util.spec_from_file_location("recipes_ablation", repo_root / "benchmarks" / "recipes_ablation.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_ablation_keeps_each_cv_layout_in_its_own_folder(repo_root, tmp_path, capsys):
    # It reused <dataset>_<size>px/partition for any --folds/--repeats, so a 2-repeat ablation run
    # after a 1-repeat one silently trained and scored the 1-repeat partition.
    ablation = _recipes_ablation(repo_root)
    for repeats in ("1", "2"):
        assert ablation.main(["--dataset", "brain_mri", "--folds", "5", "--repeats", repeats, "--configs", "plain",
                              "--out", str(tmp_path), "--dry-run"]) == 0
    partitions = [line.split("--out ")[1].split()[0] for line in capsys.readouterr().out.splitlines()
                  if line.startswith("$ medclf partition")]
    assert partitions == [str(tmp_path / "brain_mri_64px_5fold_x1" / "partition"),
                          str(tmp_path / "brain_mri_64px_5fold_x2" / "partition")]
