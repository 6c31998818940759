"""Study files without training: YAML -> argv, environment expansion, overrides, skipping and resuming.

The stages are replaced by stand-in parsers and a stand-in runner that writes the files each stage
would write, so these tests check the runner's own logic in a fraction of a second. The shipped
study files are checked against the real command parsers at the end."""

import argparse
import csv
import json
from pathlib import Path

import pytest

from medclf.commands import registry
from medclf.core.errors import MedclfError
from medclf.prepare.assignment import ASSIGNMENT
from medclf.train.training import config_from_arguments, resolve_config
from medclf.workflows import study as study_mod
from medclf.workflows.study import (apply_overrides, build_plan, expand_env, format_interval, options_to_argv,
                                    parse_yaml, run_study, training_finished)

REPO = Path(__file__).resolve().parents[3]


# --------------------------------------------------------------------------- stand-in stages

def fake_parsers():
    partition = argparse.ArgumentParser(prog="medclf partition")
    for flag in ("--data-root", "--metadata", "--image-dir", "--image-col", "--label-col", "--group-col",
                 "--classes", "--positive", "--label-map"):
        partition.add_argument(flag)
    partition.add_argument("--out", required=True)
    partition.add_argument("--val", type=float, default=0.1)
    partition.add_argument("--test", type=float, default=0.2)
    partition.add_argument("--seed", type=int, default=0)
    partition.add_argument("--no-dedup", action="store_true")

    train = argparse.ArgumentParser(prog="medclf train")
    for flag in ("--splits", "--out", "--run-name", "--arch"):
        train.add_argument(flag)
    train.add_argument("--epochs", type=int, default=50)
    train.add_argument("--patience", type=int, default=5)
    train.add_argument("--img-size", type=int, default=224)
    train.add_argument("--lr", type=float, default=1e-3)
    train.add_argument("--augment", choices=["none", "flip", "flips"], default="none")
    train.add_argument("--resume", action="store_true")
    train.add_argument("--freeze-backbone", action="store_true")
    train.add_argument("--amp", action="store_true", default=None)
    train.add_argument("--no-amp", dest="amp", action="store_false")
    train.add_argument("--tensorboard", action=argparse.BooleanOptionalAction, default=False)
    train.add_argument("--img-shape", nargs="+")
    train.add_argument("--tag", action="append")
    train.add_argument("--use_GPU", "-use_GPU", action="store_true")
    train.add_argument("-v", "--verbose", action="count", default=0)

    test = argparse.ArgumentParser(prog="medclf test")
    test.add_argument("--run", required=True)
    test.add_argument("--split", choices=["train", "val", "test"], default="test")
    report = argparse.ArgumentParser(prog="medclf report")
    report.add_argument("--run", required=True)
    report.add_argument("--split", default="test")
    report.add_argument("--positive")
    report.add_argument("--level")
    compare = argparse.ArgumentParser(prog="medclf compare")
    compare.add_argument("runs", nargs="+")
    compare.add_argument("--out")
    return {"partition": partition, "train": train, "test": test, "report": report, "compare": compare}


def _option(argv, flag, default=None):
    return argv[argv.index(flag) + 1] if flag in argv else default


class FakeStages:
    """Writes what each stage writes; `fail` maps 'stage:run' to the epoch at which training dies."""

    def __init__(self, fail=None):
        self.calls = []
        self.fail = dict(fail or {})

    def __call__(self, argv):
        self.calls.append(list(argv))
        stage = argv[0]
        if stage == "partition":
            out = Path(_option(argv, "--out"))
            out.mkdir(parents=True, exist_ok=True)
            (out / "splits.csv").write_text(f"path,label,label_index,split,group\n# seed {_option(argv, '--seed')}\n")
            (out / "partition.json").write_text(json.dumps({"assignment": {"method": ASSIGNMENT}}))
        elif stage == "train":
            run_dir = Path(_option(argv, "--out")) / _option(argv, "--run-name")
            run_dir.mkdir(parents=True, exist_ok=True)
            epochs, patience = int(_option(argv, "--epochs", 50)), int(_option(argv, "--patience", 5))
            dies_at = self.fail.pop(f"train:{run_dir.name}", None)
            last = epochs if dies_at is None else dies_at
            (run_dir / "config.json").write_text(json.dumps({"arguments": {"epochs": epochs, "patience": patience}}))
            with open(run_dir / "history.csv", "w", newline="") as fh:
                writer = csv.writer(fh)
                writer.writerow(["epoch", "val_loss", "best"])
                for epoch in range(1, last + 1):
                    writer.writerow([epoch, 1 / epoch, 1])
            (run_dir / "best.pt").write_bytes(b"weights")
            (run_dir / "last.pt").write_bytes(b"state")
            if dies_at is not None:
                return 1
        elif stage == "test":
            run_dir = Path(_option(argv, "--run"))
            (run_dir / f"predictions_{_option(argv, '--split', 'test')}.json").write_text("{}")
        elif stage == "report":
            run_dir = Path(_option(argv, "--run"))
            results = {"schema": "medclf.results/1", "positive_class": "yes", "n": 26,
                       "metrics": {"roc_auc": {"estimate": 0.9, "lower": 0.8, "upper": 0.97},
                                   "sensitivity": {"estimate": 15 / 16, "lower": 0.698, "upper": 0.998}}}
            (run_dir / f"results_{_option(argv, '--split', 'test')}.json").write_text(json.dumps(results))
            (run_dir / f"report_{_option(argv, '--split', 'test')}.md").write_text("report")
        elif stage == "compare":
            out = Path(_option(argv, "--out"))
            out.mkdir(parents=True, exist_ok=True)
            (out / "compare.json").write_text("{}")
        return 0

    def stages(self):
        return [(argv[0], _option(argv, "--run-name") or _option(argv, "--run")) for argv in self.calls]


STUDY = """\
name: tiny
data:
  root: ${TINY_DATA:-data/brain}
partition:
  seed: 1
  classes: no,yes
  positive: yes
train:
  epochs: 4
  patience: 2
  img-size: 64
  augment: flip
runs:
  - {run-name: a, arch: resnet18}
  - {run-name: b, arch: vgg11_bn, img-size: 32}
test: {}
report: {}
compare: true
"""


@pytest.fixture
def study_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TINY_DATA", raising=False)
    path = tmp_path / "tiny.yaml"
    path.write_text(STUDY)
    return path


def run(study_file, stages_runner, **kwargs):
    return run_study(study_file, out_root="results", runner=stages_runner, parsers=fake_parsers(), validators=registry.stage_validators(), **kwargs)


# --------------------------------------------------------------------------- values

def test_yaml_booleans_are_only_true_and_false():
    parsed = parse_yaml("positive: yes\nclasses: [no, yes]\nmode: on\nflag: true\noff_flag: False\nlr: 1e-3\n", "x")
    assert parsed == {"positive": "yes", "classes": ["no", "yes"], "mode": "on", "flag": True, "off_flag": False,
                      "lr": "1e-3"}


def test_expand_env_default_set_empty_and_nested():
    env = {"SET": "/data/full", "EMPTY": ""}
    value = {"a": "${SET:-/dev}", "b": "${UNSET:-../shared/x}/images", "c": ["${EMPTY:-fallback}", "${EMPTY-kept}"],
             "d": 3, "e": "plain $HOME stays"}
    assert expand_env(value, "s.yaml", env) == {"a": "/data/full", "b": "../shared/x/images",
                                                "c": ["fallback", ""], "d": 3, "e": "plain $HOME stays"}


def test_expand_env_unset_without_default_names_variable_and_place():
    with pytest.raises(MedclfError, match=r"s.yaml.data.root: environment variable NOPE is not set"):
        expand_env({"data": {"root": "${NOPE}"}}, "s.yaml", {})


def test_options_to_argv_covers_every_kind_of_option():
    parser = fake_parsers()["train"]
    options = {"epochs": 3, "lr": 0.0005, "augment": "flips", "freeze-backbone": True, "resume": False,
               "amp": False, "tensorboard": False, "img_shape": [3, 64, 64], "tag": ["x", "y"], "use_GPU": True,
               "verbose": 2, "arch": None}
    assert options_to_argv(options, parser, "train", "s: train") == [
        "--epochs", "3", "--lr", "0.0005", "--augment", "flips", "--freeze-backbone", "--no-amp",
        "--no-tensorboard", "--img-shape", "3", "64", "64", "--tag", "x", "--tag", "y", "--use_GPU", "--verbose", "--verbose"]


def test_options_to_argv_mapping_and_list_values_are_joined():
    parser = fake_parsers()["partition"]
    options = {"label-map": {"mel": "malignant", "bcc": "malignant", "*": "benign"}, "classes": ["benign", "malignant"],
               "dedup": False}
    assert options_to_argv(options, parser, "partition", "s: partition") == [
        "--label-map", "mel=malignant,bcc=malignant,*=benign", "--classes", "benign,malignant", "--no-dedup"]


def test_unknown_option_is_named_with_a_suggestion():
    with pytest.raises(MedclfError, match=r"s.yaml: train.epoch: `medclf train` has no option --epoch; did you mean epochs"):
        options_to_argv({"epoch": 3}, fake_parsers()["train"], "train", "s.yaml: train")


def test_options_set_by_the_runner_are_refused():
    with pytest.raises(MedclfError, match=r"train.out: set by the study runner"):
        options_to_argv({"out": "elsewhere"}, fake_parsers()["train"], "train", "s: train")
    with pytest.raises(MedclfError, match=r"partition.data-root: set by the study runner .*data.root"):
        options_to_argv({"data-root": "x"}, fake_parsers()["partition"], "partition", "s: partition")


def test_switch_with_a_value_is_refused():
    with pytest.raises(MedclfError, match=r"freeze-backbone is a switch"):
        options_to_argv({"freeze-backbone": "yes"}, fake_parsers()["train"], "train", "s: train")


def test_overrides_are_typed_and_reach_runs():
    study = parse_yaml(STUDY, "tiny.yaml")
    apply_overrides(study, ["train.epochs=2", "runs.*.lr=1e-4", "runs.b.arch=densenet121", "data.root=/d",
                            "report.positive=yes", "train.augment="])
    assert study["train"]["epochs"] == 2 and study["train"]["augment"] is None
    assert [r["lr"] for r in study["runs"]] == ["1e-4", "1e-4"]
    assert study["runs"][1]["arch"] == "densenet121" and study["runs"][0]["arch"] == "resnet18"
    assert study["data"]["root"] == "/d" and study["report"] == {"positive": "yes"}


@pytest.mark.parametrize("item, message", [
    ("train.epochs", "expected SECTION.KEY=VALUE"),
    ("runs.c.epochs=1", "no run named 'c'; runs are a, b"),
    ("train..epochs=1", "empty key"),
])
def test_bad_overrides_are_explained(item, message):
    with pytest.raises(MedclfError, match=message):
        apply_overrides(parse_yaml(STUDY, "tiny.yaml"), [item])


# --------------------------------------------------------------------------- plan

def test_plan_argv_for_each_stage(study_file, tmp_path):
    plan = build_plan(parse_yaml(STUDY, study_file), study_file, parsers=fake_parsers(), validators=registry.stage_validators(), environ={})
    out = tmp_path / "results" / "tiny"
    data = tmp_path / "data" / "brain"
    assert [c.argv for c in plan.calls] == [
        ["partition", "--data-root", str(data), "--out", str(out / "partition"), "--seed", "1", "--classes", "no,yes",
         "--positive", "yes"],
        ["train", "--splits", str(out / "partition" / "splits.csv"), "--out", str(out), "--run-name", "a",
         "--epochs", "4", "--patience", "2", "--img-size", "64", "--augment", "flip", "--arch", "resnet18"],
        ["test", "--run", str(out / "a")],
        ["report", "--run", str(out / "a")],
        ["train", "--splits", str(out / "partition" / "splits.csv"), "--out", str(out), "--run-name", "b",
         "--epochs", "4", "--patience", "2", "--img-size", "32", "--augment", "flip", "--arch", "vgg11_bn"],
        ["test", "--run", str(out / "b")],
        ["report", "--run", str(out / "b")],
        ["compare", str(out / "a"), str(out / "b"), "--out", str(out / "compare")],
    ]


def test_plan_metadata_dataset_and_environment_root(tmp_path):
    study = parse_yaml("name: ham\ndata:\n  root: ${HAM:-nowhere}\n  metadata: meta.csv\n  image-dir: images\n"
                       "train: {epochs: 1}\nreport: false\n", "ham.yaml")
    plan = build_plan(study, tmp_path / "ham.yaml", parsers=fake_parsers(), validators=registry.stage_validators(), environ={"HAM": str(tmp_path / "full")},
                      out_root=tmp_path / "out")
    assert plan.calls[0].argv[:5] == ["partition", "--metadata", str(tmp_path / "full" / "meta.csv"),
                                      "--image-dir", str(tmp_path / "full" / "images")]
    # test runs with its defaults when the study has no test section; report: false turns the report off
    assert [c.stage for c in plan.calls] == ["partition", "train", "test"]
    assert plan.runs == ["model"]


def test_data_root_argument_replaces_the_study_value(study_file, tmp_path):
    plan = build_plan(parse_yaml(STUDY, study_file), study_file, data_root="/elsewhere", parsers=fake_parsers(), validators=registry.stage_validators())
    assert plan.calls[0].argv[1:3] == ["--data-root", "/elsewhere"]


def test_a_bad_value_fails_before_any_stage_runs(study_file):
    stages = FakeStages()
    with pytest.raises(MedclfError, match=r"runs\[1\] \(b\): `medclf train .*` is refused: .*invalid choice: 'mirror'"):
        run(study_file, stages, overrides=["runs.b.augment=mirror"])
    assert stages.calls == []


@pytest.mark.parametrize("text, message", [
    ("name: x\ndata: {root: d}\ntrain: {}\nrun: []\n", "unknown section.* run;"),
    ("name: x y\ndata: {root: d}\ntrain: {}\n", "name 'x y'"),
    ("name: x\ntrain: {}\n", "data.root is not set"),
    ("name: x\ndata: {root: d}\ntrain: {}\nruns: [{run-name: a}, {run-name: a}]\n", "two runs are called 'a'"),
    ("name: x\ndata: {root: d}\ntrain: {}\ncompare: true\n", "compare: true needs at least two runs"),
    ("name: x\ndata: {root: d, images: i}\ntrain: {}\n", "data: unknown key.* images"),
    ("name: x\ndata: {root: d}\ntrain: {}\nruns: [{run-name: partition}]\n", "cannot name a run folder"),
])
def test_bad_study_files_are_explained(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(MedclfError, match=message):
        run_study(path, out_root=tmp_path / "out", runner=FakeStages(), parsers=fake_parsers(), validators=registry.stage_validators())


# --------------------------------------------------------------------------- running

def test_run_writes_outputs_and_a_second_run_skips_everything(study_file, tmp_path, capsys):
    stages = FakeStages()
    run(study_file, stages)
    assert stages.stages() == [("partition", None), ("train", "a"), ("test", str(tmp_path / "results/tiny/a")),
                               ("report", str(tmp_path / "results/tiny/a")), ("train", "b"),
                               ("test", str(tmp_path / "results/tiny/b")), ("report", str(tmp_path / "results/tiny/b")),
                               ("compare", None)]
    out = tmp_path / "results" / "tiny"
    assert (out / "study.yaml").read_text() == STUDY
    resolved = json.loads((out / "study_resolved.json").read_text())
    assert resolved["schema"] == "medclf.study/1" and resolved["medclf_version"]
    assert resolved["data"] == {"root": str(tmp_path / "data" / "brain")}
    assert [c["status"] for c in resolved["calls"]] == ["ran"] * 8
    assert resolved["calls"][1]["argv"] == stages.calls[1] and resolved["finished"]
    summary = (out / "summary.md").read_text()
    assert "| a | 26 | 0.900 (0.800 to 0.970) | 0.938 (0.698 to 0.998) |" in summary
    assert summary in capsys.readouterr().out

    again = FakeStages()
    run(study_file, again)
    assert again.calls == []
    resolved = json.loads((out / "study_resolved.json").read_text())
    assert [c["status"] for c in resolved["calls"]] == ["skipped (outputs exist)"] * 8


def test_changed_options_are_not_silently_reused(study_file):
    run(study_file, FakeStages())
    with pytest.raises(MedclfError, match=r"train \(a\) outputs .* other options \(was 4; now 3\); nothing was changed. "
                                          r"Rerun it with "
                                          r"--force --stages train"):
        run(study_file, FakeStages(), overrides=["train.epochs=3"])


def test_force_reruns_and_keeps_the_previous_run_folder(study_file, tmp_path):
    run(study_file, FakeStages())
    stages = FakeStages()
    run(study_file, stages, overrides=["runs.b.epochs=3"], force=True, stages="train,test")
    assert [s for s, _ in stages.stages()] == ["train", "test", "train", "test"]
    kept = sorted(p.name for p in (tmp_path / "results" / "tiny").glob("*.replaced-*"))
    assert [name.split(".replaced-")[0] for name in kept] == ["a", "b"]
    # report was not selected, so the new run folders have no report yet; the next run makes it, and
    # compare reruns because its inputs changed.
    assert not (tmp_path / "results" / "tiny" / "b" / "results_test.json").exists()
    after = FakeStages()
    run(study_file, after, overrides=["runs.b.epochs=3"])
    assert [s for s, _ in after.stages()] == ["report", "report", "compare"]


def test_a_failing_stage_names_the_study_and_the_next_run_resumes_training(study_file, tmp_path):
    stages = FakeStages(fail={"train:b": 2})
    with pytest.raises(MedclfError, match=r"tiny.yaml: runs\[1\] \(b\): stage train \(b\) failed \(exit status 1\)"):
        run(study_file, stages)
    resolved = json.loads((tmp_path / "results" / "tiny" / "study_resolved.json").read_text())
    assert [c["status"] for c in resolved["calls"]][:5] == ["ran", "ran", "ran", "ran", "failed (exit status 1)"]
    assert not training_finished(tmp_path / "results" / "tiny" / "b")

    again = FakeStages()
    run(study_file, again)
    assert [argv[0] for argv in again.calls] == ["train", "test", "report", "compare"]
    assert again.calls[0][-1] == "--resume" and "b" in again.calls[0]


def test_a_new_split_makes_every_later_stage_rerun_in_later_invocations(study_file, tmp_path):
    run(study_file, FakeStages())
    repartition = FakeStages()
    run(study_file, repartition, overrides=["partition.seed=2"], force=True, stages="partition")
    assert [argv[0] for argv in repartition.calls] == ["partition"]
    # The runs were trained on the old split: the next run retrains them instead of reusing them.
    after = FakeStages()
    run(study_file, after, overrides=["partition.seed=2"])
    assert [argv[0] for argv in after.calls] == ["train", "test", "report", "train", "test", "report", "compare"]
    resolved = json.loads((tmp_path / "results" / "tiny" / "study_resolved.json").read_text())
    splits = str(tmp_path / "results" / "tiny" / "partition" / "splits.csv")
    assert resolved["calls"][1]["made_with"]["inputs"][splits].startswith("sha256:")


def test_a_split_made_by_the_old_assignment_is_made_again_and_kept_aside(study_file, tmp_path):
    run(study_file, FakeStages())
    out = tmp_path / "results" / "tiny"
    (out / "partition" / "partition.json").write_text("{}")  # as medclf wrote it before: no `assignment`
    again = FakeStages()
    run(study_file, again)
    assert [argv[0] for argv in again.calls] == ["partition", "train", "test", "report", "train", "test", "report",
                                                "compare"]
    kept = sorted(out.glob("partition.replaced-*"))
    assert len(kept) == 1 and (kept[0] / "partition.json").read_text() == "{}"
    assert json.loads((out / "partition" / "partition.json").read_text())["assignment"]["method"] == ASSIGNMENT
    assert sorted(p.name.split(".replaced-")[0] for p in out.glob("*.replaced-*")) == ["a", "b", "partition"]
    third = FakeStages()
    run(study_file, third)
    assert third.calls == []


def test_report_level_group_reaches_the_report_and_names_its_outputs(study_file, tmp_path):
    study_file.write_text(STUDY.replace("report: {}", "report: {level: group}"))
    stages = FakeStages()
    plan = run(study_file, stages)
    reports = [argv for argv in stages.calls if argv[0] == "report"]
    assert all(argv[argv.index("--level") + 1] == "group" for argv in reports) and len(reports) == 2
    report_call = next(c for c in plan.calls if c.stage == "report")
    assert [p.name for p in report_call.outputs] == ["results_test_group-mean.json", "report_test_group-mean.md"]
    assert plan.report_tag == "group-mean"


def test_the_summary_names_intervals_over_groups_when_the_results_have_them(study_file, tmp_path):
    plan = run(study_file, FakeStages())
    assert "(Clopper-Pearson for proportions, DeLong for AUC, asymptotic for kappa)" in study_mod.summary_table(plan)
    results_path = tmp_path / "results" / "tiny" / "a" / "results_test.json"
    results = json.loads(results_path.read_text())
    results["clusters"] = {"n_images": 26, "n_groups": 20}
    results_path.write_text(json.dumps(results))
    assert "clustered DeLong for AUC" in study_mod.summary_table(plan) and "26 images in 20 groups" in study_mod.summary_table(plan)


def _snapshot(folder):
    """{path: (bytes, mtime_ns)} of every file under `folder`."""
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def test_a_refused_invocation_changes_nothing_on_disk(study_file, tmp_path):
    run(study_file, FakeStages())
    out = tmp_path / "results" / "tiny"
    before = _snapshot(out)
    for attempt in range(2):  # the same refused command again is refused again, not skipped
        stages = FakeStages()
        with pytest.raises(MedclfError, match=r"partition outputs .* other options \(was 1; now 3\); "
                                              r"nothing was changed"):
            run(study_file, stages, overrides=["partition.seed=3"])
        assert stages.calls == []
        assert _snapshot(out) == before, f"attempt {attempt + 1} changed files"


def test_a_refused_later_stage_also_leaves_everything_as_it_was(study_file, tmp_path):
    run(study_file, FakeStages())
    out = tmp_path / "results" / "tiny"
    before = _snapshot(out)
    with pytest.raises(MedclfError, match=r"runs\[1\] \(b\): train \(b\) outputs .* other options"):
        run(study_file, FakeStages(), overrides=["runs.b.epochs=3"])   # partition and run a would be skipped
    assert _snapshot(out) == before


def test_dry_run_marks_skipped_stages_and_reports_a_refusal(study_file, capsys):
    run(study_file, FakeStages())
    capsys.readouterr()
    run(study_file, FakeStages(), dry_run=True)
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 8 and all(line.endswith("(outputs exist: skipped)") for line in printed)
    with pytest.raises(MedclfError, match="other options"):
        run(study_file, FakeStages(), dry_run=True, overrides=["train.epochs=3"])


def test_unselected_stages_keep_their_record(study_file):
    run(study_file, FakeStages())
    run(study_file, FakeStages(), stages="report")
    with pytest.raises(MedclfError, match=r"train \(a\) outputs .* other options"):
        run(study_file, FakeStages(), overrides=["train.epochs=5"])


def test_stage_subset_runs_only_those(study_file):
    stages = FakeStages()
    run(study_file, stages, stages="partition")
    assert [argv[0] for argv in stages.calls] == ["partition"]
    with pytest.raises(MedclfError, match="unknown stage.* training"):
        run(study_file, FakeStages(), stages="partition,training")


def test_dry_run_prints_commands_and_runs_nothing(study_file, capsys, tmp_path):
    stages = FakeStages()
    run(study_file, stages, dry_run=True, stages="train")
    printed = capsys.readouterr().out.splitlines()
    assert stages.calls == [] and not (tmp_path / "results").exists()
    assert printed[0].startswith("medclf partition --data-root ") and printed[0].endswith("(not selected)")
    assert printed[1].startswith("medclf train --splits ") and "(not selected)" not in printed[1]


def _real_parsers():
    parsers = registry.stage_parsers()
    if not set(study_mod.STAGES) <= set(parsers):
        pytest.skip("not every stage command is installed yet")
    return parsers


@pytest.mark.parametrize("overrides, message", [
    (["runs.a.arch=densenet12"], r"tiny.yaml: runs\[0\] \(a\): --arch densenet12: not a torchvision classification "
                                 r"model; did you mean densenet121"),
    (["train.weights=nnone"], r"tiny.yaml: train: --weights nnone: neither none, imagenet nor an existing file; "
                              r"did you mean none\?"),
    (["train.workers=two"], r"tiny.yaml: train: --workers two: give a number or auto"),
    (["train.patience=0"], r"--patience 0: give a whole number of at least 1"),
    (["partition.positive=maybe"], r"tiny.yaml: partition.positive: 'maybe' is not one of the study's classes no, yes "
                                   r"\(from partition.classes\)"),
    (["report.positive=Yes"], r"tiny.yaml: report.positive: 'Yes' is not one of .*did you mean yes\?"),
    (["partition.classes=", "partition.label-map=mel=malignant,*=benign"],
     r"partition.positive: 'yes' is not one of the study's classes benign, malignant \(from partition.label-map\)"),
    (["partition.classes=no,maybe"], r"partition.positive: 'yes' is not one of the study's classes no, maybe"),
    (["partition.label-map=missing.csv"], r"tiny.yaml: partition: missing.csv: label map file not found"),
])
def test_dry_run_refuses_values_that_would_fail_hours_later(study_file, capsys, overrides, message):
    with pytest.raises(MedclfError, match=message):
        run_study(study_file, out_root="results", dry_run=True, overrides=overrides, runner=registry.run_command, parsers=_real_parsers(), validators=registry.stage_validators())
    assert capsys.readouterr().out == ""


def test_positive_names_are_checked_against_an_existing_partition(study_file, tmp_path):
    partition_json = tmp_path / "results" / "tiny" / "partition" / "partition.json"
    partition_json.parent.mkdir(parents=True)
    partition_json.write_text(json.dumps({"classes": ["benign", "malignant"]}))
    unnamed = ["partition.classes=", "partition.positive="]
    with pytest.raises(MedclfError, match=rf"report.positive: 'melanoma' .* benign, malignant \(from "
                                          rf"{partition_json}\)"):
        run_study(study_file, dry_run=True, overrides=unnamed + ["report.positive=melanoma"],
                  runner=registry.run_command, parsers=_real_parsers(), validators=registry.stage_validators())
    run_study(study_file, dry_run=True, overrides=unnamed + ["report.positive=malignant"], runner=registry.run_command, parsers=_real_parsers(), validators=registry.stage_validators())


def test_a_real_run_checks_values_before_the_first_stage(study_file, tmp_path):
    stages = FakeStages()
    with pytest.raises(MedclfError, match=r"runs\[1\] \(b\): --arch vgg11bn: .*did you mean vgg11_bn"):
        run(study_file, stages, overrides=["runs.b.arch=vgg11bn"])
    assert stages.calls == [] and not (tmp_path / "results").exists()


def test_training_finished_by_patience_or_max_epochs(tmp_path):
    def write(best_flags, epochs=10, patience=3):
        (tmp_path / "config.json").write_text(json.dumps({"arguments": {"epochs": epochs, "patience": patience}}))
        (tmp_path / "best.pt").write_bytes(b"w")
        rows = "".join(f"{i + 1},{b}\n" for i, b in enumerate(best_flags))
        (tmp_path / "history.csv").write_text("epoch,best\n" + rows)
        return training_finished(tmp_path)

    assert write([1, 0, 0, 0]) is True            # 3 epochs without improvement = patience
    assert write([1, 0, 0]) is False              # killed after epoch 3
    assert write([1, 1, 1], epochs=3) is True      # max epochs
    assert write([]) is False


def test_training_finished_follows_the_runs_patience_rule(tmp_path):
    def write(best_flags, **arguments):
        arguments = {"epochs": 20, "patience": 2, **arguments}
        (tmp_path / "config.json").write_text(json.dumps({"arguments": arguments}))
        (tmp_path / "best.pt").write_bytes(b"w")
        rows = "".join(f"{i + 1},{b}\n" for i, b in enumerate(best_flags))
        (tmp_path / "history.csv").write_text("epoch,best\n" + rows)
        return training_finished(tmp_path)

    warm = {"scheduler": "warmup-cosine", "warmup_fraction": 0.1}  # 2 warm-up epochs do not count
    assert write([1, 0, 0]) is True
    assert write([1, 0, 0], **warm) is False           # epoch 3 alone counts: killed, not finished
    assert write([1, 0, 0, 0], **warm) is True
    assert write([1, 0, 0, 0, 0], swa_epochs=3) is False  # SWA runs train every epoch
    assert write([1] + [0] * 19, swa_epochs=3) is True


def test_format_interval():
    assert format_interval({"estimate": 15 / 16, "lower": 0.7, "upper": 0.998}) == "0.938 (0.700 to 0.998)"
    assert format_interval({"estimate": None, "lower": None, "upper": None}) == "NA"
    assert format_interval(None) == "-"


def test_study_command_dry_run_through_the_cli(study_file, capsys):
    from medclf.cli import main

    parsers = registry.stage_parsers()
    if not {"partition", "train", "test", "report", "compare"} <= set(parsers):
        pytest.skip("not every stage command is installed yet")
    assert main(["study", str(study_file), "--dry-run", "--data-root", "/d"]) == 0
    assert capsys.readouterr().out.startswith("medclf partition --data-root /d --out ")


# --------------------------------------------------------------------------- shipped studies

SHIPPED = sorted((REPO / "studies").glob("*.yaml"))


def test_the_shipped_studies_are_these():
    assert [p.name for p in SHIPPED] == ["brain_mri.yaml", "brain_mri_sweep.yaml", "ham10000_7class.yaml",
                                        "ham10000_malignant.yaml", "ham10000_melanoma.yaml"]


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_study_is_accepted_by_the_real_commands(path, tmp_path):
    parsers = registry.stage_parsers()
    text, study = study_mod.load_study(path)
    needed = {"partition", "train"} | {s for s in ("test", "report") if s in study} | (
        {"compare"} if study.get("compare") else set())
    if not needed <= set(parsers):
        pytest.skip(f"commands {sorted(needed - set(parsers))} are not installed yet")
    plan = build_plan(study, path, out_root=tmp_path, parsers=parsers, validators=registry.stage_validators(), environ={})
    assert plan.name == path.stem and plan.out_dir == tmp_path / path.stem
    assert Path(plan.data["root"]).name in ("brain_mri", "ham10000_dev")
    train_argv = [c.argv for c in plan.calls if c.stage == "train"]
    # What each run trains with once its recipe (if any) is applied: CPU defaults, from scratch.
    resolved = [resolve_config(config_from_arguments(parsers["train"].parse_args(argv[argv.index("train") + 1:])))
                for argv in train_argv]
    assert all(cfg["img_size"] == 64 and cfg["weights"] == "none" for cfg in resolved)
    if "ham10000" in path.stem:
        partition = plan.calls[0].argv
        assert partition[partition.index("--group-col") + 1] == "lesion_id"
        assert all(argv[argv.index("--balance") + 1] != "none" for argv in train_argv)


def test_mistakes_in_the_shared_train_section_are_reported_there(study_file):
    with pytest.raises(MedclfError, match=r"tiny.yaml: train.epoch: `medclf train` has no option"):
        run(study_file, FakeStages(), overrides=["train.epoch=2"])
    with pytest.raises(MedclfError, match=r"tiny.yaml: train: `medclf train .*` is refused: .*invalid choice"):
        run(study_file, FakeStages(), overrides=["train.augment=mirror"])
    with pytest.raises(MedclfError, match=r"tiny.yaml: runs\[1\] \(b\).epoch: `medclf train` has no option"):
        run(study_file, FakeStages(), overrides=["runs.b.epoch=2"])
