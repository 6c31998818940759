"""Study files: one YAML file states every option of every stage; `run_study` runs them.

A study file (see studies/*.yaml and docs/studies.md) looks like

    name: ham10000_malignant
    data:
      root: ${MEDCLF_HAM10000:-../shared/data/ham10000_dev}
      metadata: HAM10000_metadata.csv      # relative to data.root
      image-dir: images                    # relative to data.root
    partition: {image-col: image_id, label-col: dx, group-col: lesion_id, ...}
    train: {arch: resnet18, img-size: 64, epochs: 30, ...}
    runs: [{run-name: resnet18}, {run-name: densenet121, arch: densenet121}]   # optional
    test: {}
    report: {}
    compare: true
    cv: {tta: hflip}      # optional: `medclf cv` with the train: options, then these (docs/cv.md)

Each stage section becomes the argv of that stage's command (keys are the command's flag names
without the leading dashes; `true` becomes a bare flag, `false` the `--no-` form or nothing; a
mapping becomes `k=v,k=v`; a list becomes `a,b` or separate values for multi-value flags) and
runs through `medclf.cli.main`, so the stages' own parsers validate every option, and a study
can use any option a stage has without this module knowing it. All argv are built, parsed and
checked before the first stage runs (each stage's own `validate(args)`, e.g. train's architecture
and weights names, and every class name against the study's classes), so a typo fails at once,
not after an hour of training. Then what happens to every stage (skip, run, resume, or refuse) is
decided before the first file is written: a refused invocation changes nothing on disk.

Paths: `${VAR}`, `${VAR:-default}` (default when VAR is unset or empty) and `${VAR-default}`
(default when unset) are expanded in every string value; relative paths in a study file, like
every path given to a medclf command, are relative to the current working directory (the
shipped studies assume the repository root). The runner records them as absolute paths.

Outputs go to `<out>/<name>/`: `partition/`, one folder per run, `compare/`, plus the study file
as given (`study.yaml`), the resolved configuration (`study_resolved.json`: every argv,
expanded paths, versions, git commit, what ran and what was skipped) and `summary.md`.
A stage whose outputs exist is skipped (an interrupted study resumes; an interrupted training
continues with `--resume`) unless `force`; a stage reruns when a file it reads from an earlier
stage changed (SHA-256 fingerprints in study_resolved.json), so a model is never tested on a split
it was not trained on; outputs made with different options are refused rather than reused.
"""

import argparse
import contextlib
import datetime
import difflib
import io
import json
import os
import platform
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from medclf import __version__
from medclf.core import layout
from medclf.core.errors import MedclfError
from medclf.core.fileio import not_utf8_error, read_json, sha256_file, write_json, write_text
from medclf.core.provenance import git_commit
from medclf.core.schemas import STUDY as SCHEMA
from medclf.evaluate.formatting import estimate_with_interval as format_interval
from medclf.evaluate.formatting import p_value
from medclf.evaluate.report import output_names

STAGES = ("partition", "train", "test", "report", "compare", "cv")
TOP_LEVEL_KEYS = ("name", "description", "data", "partition", "train", "runs", "test", "report", "compare", "cv",
                  "sweep")  # sweep: read by `medclf sweep` (medclf.workflows.sweep), not run by `medclf study`
DATA_KEYS = ("root", "metadata", "image-dir")
# Options the runner sets itself (by argparse dest), so every output lands under <out>/<name>/.
MANAGED_DESTS = {
    "partition": {"out": "the runner writes splits to <out>/<name>/partition/",
                  "data_root": "give it as data.root", "metadata": "give it as data.metadata",
                  "image_dir": "give it as data.image-dir"},
    "train": {"splits": "the runner uses <out>/<name>/partition/splits.csv",
              "out": "runs go to <out>/<name>/<run-name>/", "run_name": "name the run in runs: [{run-name: ...}]"},
    "test": {"run": "the runner tests every run of the study"},
    "report": {"run": "the runner reports every run of the study"},
    "compare": {"out": "the runner writes the comparison to <out>/<name>/compare/",
                "runs": "the runner compares every run of the study"},
    "cv": {"splits": "the runner uses <out>/<name>/partition/splits.csv",
           "out": "the cross-validation goes to <out>/<name>/cv/", "run_name": "the runner names it cv"},
}
RESERVED_RUN_NAMES = ("partition", "compare", "cv")
_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_ENV_PATTERN = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?-)([^}]*))?\}")


# --------------------------------------------------------------------------- YAML and values

class _StudyLoader(yaml.SafeLoader):
    """YAML with YAML 1.2 booleans: only true/false are booleans, so `positive: yes`,
    `classes: [no, yes]` or a class called `on` stay strings (PyYAML's YAML 1.1 default would
    turn them into True/False)."""


_StudyLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_StudyLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def parse_yaml(text, source):
    try:
        return yaml.load(text, Loader=_StudyLoader)
    except yaml.YAMLError as exc:
        # PyYAML's message spans lines (context, caret); one line keeps the problem and its position.
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        reason = getattr(exc, "problem", None) or " ".join(str(exc).split())
        raise MedclfError(f"{source}: not valid YAML ({reason}{where}); fix the file") from exc


def load_study(study_file):
    """Return (text as given, parsed mapping)."""
    path = Path(study_file)
    if path.is_dir():
        raise MedclfError(f"{path}: is a folder; give the study file, e.g. studies/brain_mri.yaml")
    if not path.is_file():
        raise MedclfError(f"{path}: study file not found; give a path such as studies/brain_mri.yaml")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise not_utf8_error(path, exc) from exc
    study = parse_yaml(text, path)
    if not isinstance(study, dict):
        raise MedclfError(f"{path}: a study file must be a YAML mapping with name, data, partition, train, ...")
    return text, study


def expand_env(value, where, environ=None):
    """Expand ${VAR}, ${VAR:-default} and ${VAR-default} in every string inside `value`."""
    environ = os.environ if environ is None else environ
    if isinstance(value, dict):
        return {k: expand_env(v, f"{where}.{k}", environ) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v, f"{where}[{i}]", environ) for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def substitute(match):
        name, operator, default = match.groups()
        current = environ.get(name)
        if operator == ":-" and not current:
            return default
        if operator == "-" and current is None:
            return default
        if current is None:
            raise MedclfError(
                f"{where}: environment variable {name} is not set and has no default; "
                f"set it (export {name}=...) or write ${{{name}:-default}}"
            )
        return current

    return _ENV_PATTERN.sub(substitute, value)


def apply_overrides(study, overrides, source="--set"):
    """Apply `section.key=value` overrides (value parsed as YAML) to the study mapping in place.

    `runs.NAME.key=v` changes one run, `runs.*.key=v` every run, `train.key=v` the options
    every run inherits (a run's own value still wins)."""
    for item in overrides or ():
        if "=" not in item:
            raise MedclfError(f"{source} {item!r}: expected SECTION.KEY=VALUE, e.g. train.epochs=3")
        dotted, raw = item.split("=", 1)
        value = parse_yaml(raw, f"{source} {item!r}") if raw.strip() else None
        keys = [k for k in dotted.strip().split(".")]
        if not keys or any(not k for k in keys):
            raise MedclfError(f"{source} {item!r}: empty key; expected SECTION.KEY=VALUE, e.g. train.epochs=3")
        if keys[0] == "runs" and len(keys) >= 3:
            runs = study.get("runs")
            if not isinstance(runs, list):
                raise MedclfError(f"{source} {item!r}: this study has no runs: list; use train.{'.'.join(keys[2:])}=...")
            selected = [r for i, r in enumerate(runs) if isinstance(r, dict) and (
                keys[1] == "*" or keys[1] == str(i) or keys[1] == _run_name_of(r, None))]
            if not selected:
                names = ", ".join(str(_run_name_of(r, i)) for i, r in enumerate(runs))
                raise MedclfError(f"{source} {item!r}: no run named {keys[1]!r}; runs are {names} (or * for all)")
            for run in selected:
                _set_path(run, keys[2:], value, item, source)
        else:
            _set_path(study, keys, value, item, source)
    return study


def _set_path(mapping, keys, value, item, source):
    for key in keys[:-1]:
        child = mapping.get(key)
        if child is None or child is True or child is False:
            child = mapping[key] = {}
        if not isinstance(child, dict):
            raise MedclfError(f"{source} {item!r}: {key} is not a section")
        mapping = child
    mapping[keys[-1]] = value


def _run_name_of(run, index):
    for key in ("run-name", "run_name"):
        if run.get(key):
            return str(run[key])
    return run.get("arch") or (f"run{index}" if index is not None else None)


# --------------------------------------------------------------------------- options -> argv

def _find_action(parser, key):
    by_flag = {flag: action for action in parser._actions for flag in action.option_strings}
    key = str(key)
    for flag in (f"--{key}", f"--{key.replace('_', '-')}", f"-{key}"):
        if flag in by_flag:
            return flag, by_flag[flag], by_flag
    return None, None, by_flag


def _render_scalar(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return ",".join(f"{k}={_render_scalar(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ",".join(_render_scalar(v) for v in value)
    return str(value)


def options_to_argv(options, parser, stage, where):
    """Translate one section's mapping into argv tokens for `parser` (the stage's parser)."""
    argv = []
    if not options:
        return argv
    if not isinstance(options, dict):
        raise MedclfError(f"{where}: expected a mapping of option: value, got {options!r}")
    for key, value in options.items():
        if value is False:
            # `dedup: false`, `amp: false`, `progress: false`: the parser's `--no-KEY` switch if it has one.
            no_flag, no_action, _ = _find_action(parser, f"no-{key}")
            if no_action is not None and no_action.nargs == 0:
                argv.append(no_flag)
                continue
        flag, action, by_flag = _find_action(parser, key)
        if action is None:
            known = sorted(f.lstrip("-") for f in by_flag if f.startswith("--") and f != "--help")
            close = difflib.get_close_matches(str(key), known, n=3)
            hint = f"did you mean {', '.join(close)}?" if close else f"options are: {', '.join(known)}"
            raise MedclfError(f"{where}.{key}: `medclf {stage}` has no option --{key}; {hint}")
        reason = MANAGED_DESTS.get(stage, {}).get(action.dest)
        if reason:
            raise MedclfError(f"{where}.{key}: set by the study runner ({reason}); remove it from the study file")
        opposite = _opposite_switch(parser, action) if value is False else None
        argv += [opposite] if opposite else _option_tokens(flag, action, value, where, key)
    return argv


def _opposite_switch(parser, action):
    """`key: false` for a switch whose default is None (a --recipe may set it): the parser's switch
    that stores False in the same place (`no-decay-norm-bias: false` -> --decay-norm-bias), so the
    study's explicit false wins over the recipe; None when there is none."""
    if not isinstance(action, argparse._StoreTrueAction) or action.default is not None:
        return None
    return next((a.option_strings[0] for a in parser._actions
                 if isinstance(a, argparse._StoreFalseAction) and a.dest == action.dest), None)


def _option_tokens(flag, action, value, where, key):
    if value is None:
        return []
    if isinstance(action, argparse.BooleanOptionalAction):
        if not isinstance(value, bool):
            raise MedclfError(f"{where}.{key}: expected true or false, got {value!r}")
        if value:
            return [flag]
        negative = [f for f in action.option_strings if f.startswith("--no-")]
        return negative[:1]
    if action.nargs == 0:
        if isinstance(action, argparse._CountAction) and isinstance(value, int) and not isinstance(value, bool):
            return [flag] * value
        if not isinstance(value, bool):
            raise MedclfError(f"{where}.{key}: --{key} is a switch; write {key}: true or {key}: false")
        return [flag] if value else []
    multi = action.nargs in ("+", "*") or (isinstance(action.nargs, int) and action.nargs > 1)
    if isinstance(action, argparse._AppendAction):
        items = value if isinstance(value, (list, tuple)) else [value]
        return [token for item in items for token in (flag, _render_scalar(item))]
    if multi:
        items = value if isinstance(value, (list, tuple)) else [value]
        return [flag, *(_render_scalar(item) for item in items)]
    return [flag, _render_scalar(value)]


# --------------------------------------------------------------------------- plan

@dataclass
class StageCall:
    stage: str
    run: str = None
    argv: list = field(default_factory=list)
    where: str = ""
    outputs: list = field(default_factory=list)     # all exist -> the stage is done
    resume_argv: list = None                         # argv to continue an interrupted stage
    run_dir: Path = None
    inputs: list = field(default_factory=list)       # files made by earlier stages that this one reads
    args: object = None                              # argv parsed by the stage's parser (set by the plan)
    folder: Path = None                              # the folder a rerun replaces (kept aside), if not run_dir
    stale: object = None                             # () -> why finished outputs must be made again, or None

    def finished(self):
        if self.stage == "train":
            return training_finished(self.run_dir)
        return bool(self.outputs) and all(p.exists() for p in self.outputs)

    def started(self):
        """Some output exists (a finished or interrupted stage)."""
        return self.run_dir is not None and self.stage == "train" and (
            (self.run_dir / "last.pt").exists() or (self.run_dir / "best.pt").exists())

    @property
    def key(self):
        return f"{self.stage}:{self.run}" if self.run else self.stage

    @property
    def label(self):
        return f"{self.stage} ({self.run})" if self.run else self.stage


@dataclass
class StudyPlan:
    name: str
    study_file: Path
    out_dir: Path
    data: dict
    runs: list
    calls: list
    report_split: str = "test"
    description: str = ""
    report_tag: str = None
    predictions_dir: str = ""  # inside each run: "" or tta_<name> (test: {tta: ...})


def _section(study, key, source):
    value = study.get(key)
    if value is None or value is True:
        return {}
    if value is False:
        return None
    if not isinstance(value, dict):
        raise MedclfError(f"{source}: {key}: expected a mapping of option: value (or nothing), got {value!r}")
    return dict(value)


def _resolve_path(value, base=None):
    path = Path(os.path.expanduser(str(value)))
    if not path.is_absolute() and base is not None:
        path = Path(base) / path
    return Path(os.path.abspath(path))


def _resolve_data(study, source, data_root):
    data = study.get("data") or {}
    if isinstance(data, str):
        data = {"root": data}
    if not isinstance(data, dict):
        raise MedclfError(f"{source}: data: expected a mapping with root (and metadata, image-dir for a CSV dataset)")
    data = {str(k).replace("_", "-"): v for k, v in data.items()}
    unknown = sorted(set(data) - set(DATA_KEYS))
    if unknown:
        raise MedclfError(f"{source}: data: unknown key(s) {', '.join(unknown)}; use {', '.join(DATA_KEYS)}")
    if data_root is not None:
        data["root"] = str(data_root)
    if not data.get("root"):
        raise MedclfError(f"{source}: data.root is not set; write it in the study file or give --data-root DIR")
    root = _resolve_path(data["root"])
    resolved = {"root": str(root)}
    if data.get("metadata"):
        resolved["metadata"] = str(_resolve_path(data["metadata"], root))
        resolved["image-dir"] = str(_resolve_path(data.get("image-dir") or ".", root))
    elif data.get("image-dir"):
        raise MedclfError(f"{source}: data.image-dir is only used with data.metadata (a CSV dataset); "
                          "for class folders give data.root only")
    return resolved


def build_plan(study, study_file, *, parsers, validators, data_root=None, out_root="results", environ=None):
    """Turn a parsed study (overrides applied) into the list of stage calls; validate everything
    that can be checked without running a stage: each stage's parser (`parsers`: {stage: parser}),
    each stage's own value checks (`validators`: {stage: validate(args)}), and class names against
    the study's classes. The command layer hands both in (medclf.commands.registry.stage_commands)."""
    source = Path(study_file)
    unknown = sorted(set(map(str, study)) - set(TOP_LEVEL_KEYS))
    if unknown:
        raise MedclfError(f"{source}: unknown section(s) {', '.join(unknown)}; a study has {', '.join(TOP_LEVEL_KEYS)}")
    study = expand_env(study, str(source), environ)
    name = str(study.get("name") or source.stem)
    if not _NAME_PATTERN.match(name):
        raise MedclfError(f"{source}: name {name!r}: use letters, digits, '.', '_' and '-' only (it names a folder)")
    data = _resolve_data(study, source, data_root)
    out_dir = _resolve_path(out_root) / name

    def parser_for(stage):
        if stage not in parsers:
            raise MedclfError(f"{source}: stage {stage} needs the `medclf {stage}` command, which this "
                              "installation does not have; update medclf or remove the stage")
        return parsers[stage]

    calls = [_partition_call(study, source, data, out_dir, parser_for)]
    runs = _runs(study, source)
    if study.get("runs"):
        # Check the shared train: section alone first, so its mistakes are reported as train:, not runs[0].
        shared = ["train"] + options_to_argv(_section(study, "train", source), parser_for("train"), "train",
                                             f"{source}: train")
        _check_call(StageCall("train", None, shared, f"{source}: train"), parsers["train"], validators)
    calls += _run_calls(study, source, runs, out_dir, parser_for)
    calls += _compare_calls(study, source, runs, out_dir, parser_for)
    calls += _cv_calls(study, source, out_dir, parser_for)
    for call in calls:
        _check_call(call, parsers[call.stage], validators)
    plan = StudyPlan(name, source, out_dir, data, [r for r, _, _ in runs], calls, _report_split(study, source),
                     str(study.get("description") or "").strip(),
                     report_tag(_section(study, "report", source) or {}),
                     _predictions_dir(_section(study, "test", source)))
    check_class_names(plan)
    return plan


def _partition_call(study, source, data, out_dir, parser_for):
    partition_dir = out_dir / "partition"
    argv = ["partition"]
    if "metadata" in data:
        argv += ["--metadata", data["metadata"], "--image-dir", data["image-dir"]]
    else:
        argv += ["--data-root", data["root"]]
    argv += ["--out", str(partition_dir)]
    argv += options_to_argv(_section(study, "partition", source) or {}, parser_for("partition"), "partition",
                            f"{source}: partition")
    return StageCall("partition", None, argv, f"{source}: partition",
                     outputs=[partition_dir / "splits.csv", partition_dir / "partition.json"],
                     folder=partition_dir, stale=lambda: _partition_outdated(partition_dir / "partition.json"))


def report_tag(report_options):
    """The tag `medclf report` names its outputs with: the given one, or group-<reduce> for
    `level: group` (medclf.evaluate.report.report_run)."""
    tag = report_options.get("tag")
    if tag is None and report_options.get("level") == "group":
        tag = f"group-{report_options.get('group-reduce') or report_options.get('group_reduce') or 'mean'}"
    return tag


def _partition_outdated(info_path):
    from medclf.prepare.assignment import outdated_assignment

    try:
        info = read_json(info_path)
    except MedclfError:
        return None  # unreadable: partition itself reports it
    return outdated_assignment(info)


def _predictions_dir(test_options):
    """Where `medclf test` writes a run's predictions: the run folder, or tta_<name>/ inside it."""
    from medclf.infer.predict import tta_name, tta_views

    views = tta_views((test_options or {}).get("tta") or "none")
    return "" if len(views) == 1 else f"tta_{tta_name(views)}"


def _cv_calls(study, source, out_dir, parser_for):
    """The cross-validation of a `cv:` section (train: options, then cv: ones), or []."""
    cv_options = _section(study, "cv", source) if "cv" in study else None
    if cv_options is None:
        return []
    options = {**(_section(study, "train", source) or {}), **cv_options}
    splits_csv, cv_dir = out_dir / "partition" / "splits.csv", out_dir / "cv"
    argv = ["cv", "--splits", str(splits_csv), "--out", str(out_dir), "--run-name", "cv"]
    argv += options_to_argv(options, parser_for("cv"), "cv", f"{source}: cv")
    predictions = cv_dir / _predictions_dir(cv_options)
    return [StageCall("cv", None, argv, f"{source}: cv", inputs=[splits_csv],
                      outputs=[predictions / "predictions_test.json", predictions / "predictions_oof.json"])]


def _report_split(study, source):
    test_split = str((_section(study, "test", source) or {}).get("split") or "test")
    return str((_section(study, "report", source) or {}).get("split") or test_split)


def _run_calls(study, source, runs, out_dir, parser_for):
    """train, test and report of every run."""
    splits_csv = out_dir / "partition" / "splits.csv"
    test_options = _section(study, "test", source)
    report_options = _section(study, "report", source)
    split = str((test_options or {}).get("split") or "test")
    report_split = _report_split(study, source)
    report_outputs = output_names(report_split, report_tag(report_options or {}))
    calls = []
    for run_name, options, where in runs:
        run_dir = out_dir / run_name
        predictions_dir = run_dir / _predictions_dir(test_options)
        argv = ["train", "--splits", str(splits_csv), "--out", str(out_dir), "--run-name", run_name]
        train_parser = parser_for("train")
        argv += options_to_argv(options, train_parser, "train", where)
        resume_flag, _, _ = _find_action(train_parser, "resume")
        calls.append(StageCall("train", run_name, argv, where,
                               outputs=[run_dir / "best.pt", run_dir / "history.csv", run_dir / "config.json"],
                               resume_argv=argv + [resume_flag] if resume_flag else None, run_dir=run_dir,
                               inputs=[splits_csv]))
        if test_options is not None:
            argv = ["test", "--run", str(run_dir)]
            argv += options_to_argv(test_options, parser_for("test"), "test", f"{source}: test")
            calls.append(StageCall("test", run_name, argv, f"{source}: test",
                                   outputs=[layout.predictions_file(predictions_dir, split)],
                                   inputs=[run_dir / "best.pt", splits_csv]))
        if report_options is not None:
            argv = ["report", "--run", str(predictions_dir)]
            argv += options_to_argv(report_options, parser_for("report"), "report", f"{source}: report")
            calls.append(StageCall("report", run_name, argv, f"{source}: report",
                                   outputs=[predictions_dir / report_outputs[k] for k in ("results", "report")],
                                   inputs=[layout.predictions_file(predictions_dir, report_split),
                                           predictions_dir / "predictions_val.json"]))
    return calls


def _compare_calls(study, source, runs, out_dir, parser_for):
    """The comparison of the runs ([] without one)."""
    compare = study.get("compare", False)
    if not compare:
        return []
    if len(runs) < 2:
        raise MedclfError(f"{source}: compare: true needs at least two runs; add runs: [...] or set compare: false")
    compare_options = {} if compare is True else compare
    if not isinstance(compare_options, dict):
        raise MedclfError(f"{source}: compare: expected true, false or a mapping of options")
    compare_parser = parser_for("compare")
    compare_dir = out_dir / "compare"
    predictions_dir = _predictions_dir(_section(study, "test", source))
    argv = ["compare", *(str(out_dir / run_name / predictions_dir) for run_name, _, _ in runs)]
    out_flag, _, _ = _find_action(compare_parser, "out")
    if out_flag:
        argv += [out_flag, str(compare_dir)]
    argv += options_to_argv(compare_options, compare_parser, "compare", f"{source}: compare")
    compare_split = str(compare_options.get("split") or _report_split(study, source))
    return [StageCall("compare", None, argv, f"{source}: compare",
                      outputs=[compare_dir / "compare.json"] if out_flag else [],
                      inputs=[layout.predictions_file(out_dir / r / predictions_dir, compare_split) for r, _, _ in runs])]


def _runs(study, source):
    base = _section(study, "train", source)
    if base is None:
        raise MedclfError(f"{source}: train: false leaves nothing to train; give train options")
    runs = study.get("runs")
    if runs is None:
        runs = [{}]
    if not isinstance(runs, list) or not runs or not all(isinstance(r, dict) for r in runs):
        raise MedclfError(f"{source}: runs: expected a list of mappings such as [{{run-name: resnet18, arch: resnet18}}]")
    result, seen = [], set()
    for index, run in enumerate(runs):
        run = dict(run)
        name = None
        for key in ("run-name", "run_name"):
            if key in run:
                name = str(run.pop(key))
        options = {**base, **run}
        for key in ("run-name", "run_name"):
            if key in options:
                name = name or str(options.pop(key))
        name = name or str(options.get("arch") or "model")
        where = f"{source}: runs[{index}] ({name})" if study.get("runs") else f"{source}: train"
        if not _NAME_PATTERN.match(name) or name in RESERVED_RUN_NAMES:
            raise MedclfError(f"{where}: run-name {name!r} cannot name a run folder; use letters, digits, '.', '_', "
                              f"'-' and not {' or '.join(RESERVED_RUN_NAMES)}")
        if name in seen:
            raise MedclfError(f"{where}: two runs are called {name!r}; give each run its own run-name")
        seen.add(name)
        result.append((name, options, where))
    return result


def _check_call(call, parser, validators):
    """Parse the argv with the stage's own parser and run the stage's value checks now, so a bad
    value fails before any stage runs. Keeps the parsed arguments on the call."""
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            call.args = parser.parse_args(call.argv[1:])
    except SystemExit as exc:
        message = stderr.getvalue().strip().splitlines()
        detail = message[-1] if message else f"exit status {exc.code}"
        raise MedclfError(f"{call.where}: `medclf {' '.join(call.argv)}` is refused: {detail}") from None
    validate = validators.get(call.stage)
    if validate is not None:
        try:
            validate(call.args)
        except MedclfError as exc:
            raise MedclfError(f"{call.where}: {exc}") from None


def _class_list(value):
    if not value:
        return []
    return [c.strip() for c in value.split(",")] if isinstance(value, str) else [str(c) for c in value]


def study_classes(partition_args, partition_dir):
    """(class names, where they come from) of the study before partition runs: the classes
    partition's --label-map maps to, else its --classes, else an existing partition.json's;
    (None, None) when only scanning the data would tell."""
    label_map = getattr(partition_args, "label_map", None)
    if label_map:
        from medclf.prepare.partition import parse_label_map

        return sorted(set(parse_label_map(label_map).values())), "partition.label-map"
    given = _class_list(getattr(partition_args, "classes", None))
    if given:
        return given, "partition.classes"
    info = Path(partition_dir) / "partition.json"
    recorded = read_json(info) if info.is_file() else None
    if isinstance(recorded, dict) and recorded.get("classes"):
        return [str(c) for c in recorded["classes"]], str(info)
    return None, None


def check_class_names(plan):
    """Every class a stage names (partition's --classes and --positive, report's and compare's
    --positive) must be one of the study's classes, known before anything runs."""
    partition = plan.calls[0]
    try:
        classes, origin = study_classes(partition.args, plan.out_dir / "partition")
    except MedclfError as exc:
        raise MedclfError(f"{partition.where}: {exc}") from None
    if classes is None:
        return
    named = [(partition, "classes", c) for c in _class_list(getattr(partition.args, "classes", None))]
    named += [(call, "positive", call.args.positive) for call in plan.calls
              if getattr(call.args, "positive", None) is not None]
    for call, key, name in named:
        if str(name) not in classes:
            close = difflib.get_close_matches(str(name), classes, n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            raise MedclfError(f"{call.where}.{key}: {name!r} is not one of the study's classes "
                              f"{', '.join(classes)} (from {origin}); {hint}use one of them")


# --------------------------------------------------------------------------- run

def training_finished(run_dir):
    """True when a run folder holds a training that ended by itself (max epochs or patience), judged
    from history.csv and the arguments in config.json; an interrupted run is not finished."""
    import csv

    from medclf.train.early_stopping import patience_count_from, stopped_by_patience

    run_dir = Path(run_dir)
    history, config = run_dir / "history.csv", run_dir / "config.json"
    if not (history.is_file() and config.is_file() and (run_dir / "best.pt").is_file()):
        return False
    try:
        arguments = read_json(config).get("arguments", {})
        with open(history, encoding="utf-8", newline="") as fh:
            rows = list(csv.DictReader(fh))
        epochs, patience = int(arguments["epochs"]), int(arguments["patience"])
        best_flags = [str(row.get("best", "")).strip() in ("1", "True", "true") for row in rows]
        count_from = patience_count_from(arguments)  # the run's own rule (warm-up, SWA)
    except (MedclfError, KeyError, TypeError, ValueError, OSError):
        return False
    if not rows:
        return False
    return len(rows) >= epochs or stopped_by_patience(best_flags, patience, count_from)


def _now():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _log(message):
    print(f"medclf study: {message}", file=sys.stderr, flush=True)


@dataclass
class Decision:
    """What this invocation does with one stage call, decided for every call before anything is
    written: "not selected", "skip" (outputs exist), "run" or "resume" (an interrupted training)."""

    action: str
    made_with: dict = None          # the previous record of the outputs present
    keep_previous: bool = False     # a started run folder is kept beside the new one
    note: str = ""                  # why a finished stage reruns


def decide_calls(plan, selected, previous, force):
    """One Decision per call. Refuses (MedclfError, nothing written) outputs made with other options."""
    decisions, rerun = [], set()      # rerun: stage keys (partition, or run names) that will run again
    for call in plan.calls:
        made_with = previous.get(call.key)
        if call.stage not in selected:
            decisions.append(Decision("not selected", made_with=made_with))
            continue
        upstream_reruns = (call.stage in ("train", "cv") and "partition" in rerun) or \
                          (call.stage in ("test", "report") and call.run in rerun) or \
                          (call.stage == "compare" and bool(rerun))
        note = ""
        stale = call.stale() if call.stale and call.finished() and not force and not upstream_reruns else None
        if stale:
            decisions.append(Decision("run", note=f"made by an earlier medclf: {stale}", keep_previous=True))
            rerun.add(call.run if call.run else call.stage)
            continue
        if call.finished() and not force and not upstream_reruns:
            if made_with and made_with.get("argv") != call.argv:
                raise MedclfError(
                    f"{call.where}: {call.label} outputs in {plan.out_dir} were made with other options "
                    f"({_argv_difference(made_with['argv'], call.argv)}); nothing was changed. Rerun it with "
                    f"--force --stages {call.stage}, or give the study another name")
            inputs = fingerprint(call.inputs)
            inputs_changed = bool(made_with) and made_with.get("inputs") not in (None, inputs)
            if not inputs_changed:
                decisions.append(Decision("skip", made_with=made_with or {"argv": call.argv, "inputs": inputs}))
                continue
            changed = sorted(k for k in inputs if made_with["inputs"].get(k) != inputs[k])
            note, upstream_reruns = f"its input changed since it ran ({', '.join(changed)})", True
        resumable = bool(call.resume_argv) and not force and not upstream_reruns and \
            call.run_dir is not None and (call.run_dir / "last.pt").exists()
        decisions.append(Decision("resume" if resumable else "run", note=note,
                                  keep_previous=not resumable and call.started()))
        rerun.add(call.run if call.run else call.stage)
    return decisions


def run_study(study_file, *, runner, parsers, validators, data_root=None, out_root="results", stages=None,
              overrides=(), force=False, dry_run=False, environ=None):
    """Run a study file; return the plan. `runner(argv) -> int` runs one medclf command line;
    `parsers` and `validators` as in build_plan (medclf.commands.registry.stage_commands gives all three).
    Everything is validated and every stage's fate decided before the first file is written, so a
    refused invocation changes nothing on disk."""
    text, study = load_study(study_file)
    apply_overrides(study, overrides)
    plan = build_plan(study, study_file, data_root=data_root, out_root=out_root, parsers=parsers, environ=environ,
                      validators=validators)
    selected = _select_stages(stages, study_file)
    resolved_path = plan.out_dir / "study_resolved.json"
    decisions = decide_calls(plan, selected, _previous_records(resolved_path), force)
    if dry_run:
        print_commands(plan, decisions)
        return plan
    record = start_record(plan, text, study_file, overrides, selected, force, decisions)
    for call, decision, entry in zip(plan.calls, decisions, record["calls"]):
        if decision.action == "skip":
            _log(f"skip {call.label}: outputs exist (--force reruns it)")
        elif decision.action in ("run", "resume"):
            run_call(call, decision, entry, runner, record, resolved_path)
    summary = summary_table(plan)
    write_text(plan.out_dir / "summary.md", summary)
    record["finished"] = _now()
    write_json(resolved_path, record)
    print(summary)
    return plan


def print_commands(plan, decisions):
    """--dry-run: every stage's command line, marked with what a real invocation would do."""
    markers = {"not selected": "  (not selected)", "skip": "  (outputs exist: skipped)", "resume": "", "run": ""}
    for call, decision in zip(plan.calls, decisions):
        argv = call.resume_argv if decision.action == "resume" else call.argv
        note = f"  (reruns: {decision.note})" if decision.note else ""
        print("medclf " + " ".join(_quote(a) for a in argv) + markers[decision.action] + note)


def start_record(plan, text, study_file, overrides, selected, force, decisions):
    """Write study.yaml and the initial study_resolved.json; returns the record."""
    plan.out_dir.mkdir(parents=True, exist_ok=True)
    write_text(plan.out_dir / "study.yaml", text)
    record = {
        "schema": SCHEMA, "name": plan.name, "study_file": str(Path(study_file).absolute()),
        "overrides": list(overrides or ()), "stages_selected": sorted(selected, key=STAGES.index),
        "force": bool(force), "data": plan.data, "out_dir": str(plan.out_dir), "runs": plan.runs,
        "medclf_version": __version__, "git_commit": git_commit(), "python": platform.python_version(),
        "started": _now(), "finished": None, "calls": [],
    }
    statuses = {"not selected": "not selected", "skip": "skipped (outputs exist)", "run": "pending",
                "resume": "pending"}
    for call, decision in zip(plan.calls, decisions):
        entry = {"stage": call.stage, "run": call.run, "argv": call.argv, "status": statuses[decision.action]}
        if decision.made_with:
            entry["made_with"] = decision.made_with
        record["calls"].append(entry)
    write_json(plan.out_dir / "study_resolved.json", record)
    return record


def run_call(call, decision, entry, runner, record, resolved_path):
    """Run one stage through `runner`, recording its status; a failing stage stops the study."""
    if decision.note:
        _log(f"rerun {call.label}: {decision.note}")
    if decision.keep_previous:
        # `medclf train` never overwrites a run, nor partition a split: keep the old one beside the new.
        folder = call.run_dir or call.folder
        kept = folder.with_name(f"{folder.name}.replaced-{datetime.datetime.now():%Y%m%d-%H%M%S}")
        folder.rename(kept)
        entry["previous_run_kept_in"] = str(kept)
        _log(f"{call.label}: the previous run folder is kept as {kept}")
    argv = call.resume_argv if decision.action == "resume" else call.argv
    if decision.action == "resume":
        entry["resumed"] = True
    _log(f"{decision.action} {call.label}: medclf {' '.join(_quote(a) for a in argv)}")
    inputs = fingerprint(call.inputs)   # now: an earlier stage of this invocation may have rewritten them
    entry.pop("made_with", None)
    entry["status"] = "running"
    write_json(resolved_path, record)
    started = time.monotonic()
    try:
        status = runner(list(argv))
    except SystemExit as exc:   # an argparse error inside the stage
        status = exc.code if isinstance(exc.code, int) else 2
    entry["seconds"] = round(time.monotonic() - started, 1)
    if status:
        entry["status"] = f"failed (exit status {status})"
        write_json(resolved_path, record)
        raise MedclfError(
            f"{call.where}: stage {call.label} failed (exit status {status}); the message above says why. "
            f"Fix the study file or the data, then rerun the same command: finished stages are skipped")
    entry["status"] = "ran"
    entry["made_with"] = {"argv": call.argv, "inputs": inputs}
    write_json(resolved_path, record)


def _select_stages(stages, source):
    if stages is None or stages == "" or stages == []:
        return set(STAGES)
    if isinstance(stages, str):
        stages = [s.strip() for s in stages.split(",") if s.strip()]
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise MedclfError(f"--stages {','.join(stages)}: unknown stage(s) {', '.join(unknown)}; "
                          f"choose from {','.join(STAGES)}")
    return set(stages)


def _previous_records(resolved_path):
    """{call key: {"argv", "inputs"}} that made the outputs present, from the last study_resolved.json."""
    if not resolved_path.is_file():
        return {}
    try:
        previous = read_json(resolved_path)
    except MedclfError:
        return {}
    records = {}
    for entry in previous.get("calls", []):
        if entry.get("made_with"):
            key = f"{entry['stage']}:{entry['run']}" if entry.get("run") else entry["stage"]
            records[key] = entry["made_with"]
    return records


def fingerprint(paths):
    """{path: sha256} of the files (size and mtime for files over 64 MB, None when absent)."""
    prints = {}
    for path in paths:
        path = Path(path)
        if not path.is_file():
            prints[str(path)] = None
            continue
        stat = path.stat()
        if stat.st_size > 64 * 2**20:
            prints[str(path)] = f"size {stat.st_size}, mtime_ns {stat.st_mtime_ns}"
            continue
        prints[str(path)] = "sha256:" + sha256_file(path)
    return prints


def _argv_difference(before, after):
    removed = [a for a in before if a not in after]
    added = [a for a in after if a not in before]
    parts = []
    if removed:
        parts.append("was " + " ".join(removed))
    if added:
        parts.append("now " + " ".join(added))
    return "; ".join(parts) or "order changed"


def _quote(token):
    return token if re.match(r"^[A-Za-z0-9_./:=,+@%-]+$", token) else json.dumps(token)


# --------------------------------------------------------------------------- summary

# (label, where in results_<split>.json) for the summary table, binary then multi-class.
BINARY_COLUMNS = (
    ("ROC-AUC", ("metrics", "roc_auc")), ("sensitivity", ("metrics", "sensitivity")),
    ("specificity", ("metrics", "specificity")), ("balanced acc.", ("metrics", "balanced_accuracy")),
    ("kappa", ("metrics", "cohen_kappa")),
)
MULTICLASS_COLUMNS = (
    ("macro AUC", ("metrics", "macro_auc")), ("balanced acc.", ("metrics", "balanced_accuracy")),
    ("accuracy", ("metrics", "accuracy")), ("kappa", ("metrics", "cohen_kappa")),
    ("macro F1", ("macro", "f1")),
)


def _lookup(results, path):
    value = results
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def training_summary(run_dir):
    """(epochs trained, best epoch, training seconds) from a run's history.csv, or None."""
    import csv

    history = Path(run_dir) / "history.csv"
    if not history.is_file():
        return None
    with open(history, encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    best = [int(r["epoch"]) for r in rows if str(r.get("best", "")).strip() in ("1", "True", "true")]
    seconds = sum(float(r["seconds"]) for r in rows if r.get("seconds"))
    return len(rows), (best[-1] if best else None), seconds


def summary_table(plan):
    """Markdown: one row per run with key test metrics and their 95% intervals, then the pairwise
    comparison when the study has one."""
    rows, multiclass = [], False
    for run in plan.runs:
        results_name = output_names(plan.report_split, plan.report_tag)["results"]
        path = plan.out_dir / run / plan.predictions_dir / results_name
        results = read_json(path) if path.is_file() else None
        if results is not None and results.get("task") == "multiclass":
            multiclass = True
        rows.append((run, results, training_summary(plan.out_dir / run)))
    columns = MULTICLASS_COLUMNS if multiclass else BINARY_COLUMNS
    lines = [f"# Study {plan.name}: {plan.report_split} results", ""]
    if plan.description:
        lines += [plan.description, ""]
    clusters = next((r.get("clusters") for _, r, _ in rows if r and r.get("clusters")), None)
    methods = ("over groups: clustered DeLong for AUC, Clopper-Pearson at the effective sample size for proportions, "
               "group bootstrap for kappa; " + f"{clusters['n_images']} images in {clusters['n_groups']} groups"
               if clusters else "Clopper-Pearson for proportions, DeLong for AUC, asymptotic for kappa")
    lines += [f"Data: {plan.data.get('metadata') or plan.data['root']}. Estimates with 95% intervals ({methods}) "
              f"from each run's {output_names(plan.report_split, plan.report_tag)['results']}; epochs trained (best "
              "epoch) and training time from history.csv.", ""]
    header = ["run", "n"] + [label for label, _ in columns] + ["epochs (best)", "train min"]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    for run, results, trained in rows:
        cells = [run, str(results.get("n", "-")) if results else "-"]
        if results is None:
            cells += ["not reported"] + ["-"] * (len(columns) - 1)
        else:
            cells += [format_interval(_lookup(results, path)) for _, path in columns]
        cells += [f"{trained[0]} ({trained[1]})", f"{trained[2] / 60:.1f}"] if trained else ["-", "-"]
        lines.append("| " + " | ".join(cells) + " |")
    if results_positive := next((r.get("positive_class") for _, r, _ in rows if r and r.get("positive_class")), None):
        lines += ["", f"Positive class: {results_positive}."]
    compare_json = plan.out_dir / "compare" / "compare.json"
    if compare_json.is_file():
        comparison = read_json(compare_json)
        lines += ["", f"## Pairwise paired DeLong tests ({comparison.get('n', '?')} images)", "",
                  "| a | b | class | AUC difference a - b (95% CI) | p | p (Holm) |", "|---|---|---|---|---|---|"]
        for pair in comparison.get("pairwise", []):
            lines.append(f"| {pair.get('a')} | {pair.get('b')} | {pair.get('positive_class', '')} | "
                         f"{format_interval(pair.get('difference'))} | {p_value(pair.get('p_value'))} | "
                         f"{p_value(pair.get('p_holm'))} |")
        lines += ["", f"Details: {plan.out_dir / 'compare' / 'compare.md'}"]
    return "\n".join(lines) + "\n"
