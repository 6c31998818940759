"""`medclf sweep STUDY.yaml`: an Optuna hyper-parameter sweep over one run of a study file.

Each trial is a `medclf train` run of the study's run (its train: options, plus the trial's values
from the search space) on the study's own partition (<out>/<name>/partition/, made first when
absent). The objective is the best validation value of the monitored metric (train's --monitor,
the early-stopping value: what best.pt was chosen on), never a test value. Each epoch reports the
best value so far to a MedianPruner whose warm-up is at least the patience (plus the epochs that do not
count towards it: early_stopping.patience_count_from), so no trial is pruned before early stopping
could have judged it.

Space: `lr=loguniform(1e-4,1e-2) batch-size=choice(16,32,64) arch=choice(resnet18,densenet121)`
(keys are `medclf train` options; loguniform, uniform, int, logint, choice), from --space or the
study file's `sweep: {space: ..., trials: N, run: NAME, storage: ..., seed: S}`; the command line wins.

Storage: SQLite in the sweep folder by default (one process); --storage FILE is an Optuna journal
file (several processes on one machine), --storage postgresql://... a database (several machines).
Exactly N trials are run whatever the number of workers: a worker takes a trial only while fewer
than N are taken (a trial created in a race is marked "surplus" and not run). A trial whose
process died (its run folder's lock is free while the storage says it runs) is marked failed
("interrupted") and continued by a new trial with the same values in the same run folder, from
its last.pt. A trial that fails (an error) is recorded with its error and counts: never retried.

Outputs in <out>/<name>/<sweep-name>/: trials/ (one run folder per trial), sweep.db (default
storage), sweep.json (medclf.sweep/1: settings, storage, counts, best trial, versions), trials.csv,
best_study.yaml (the study file with the best values, one run; run it with `medclf study` to test
once), history.png, importance.png and lr_batch.png (the validation value over learning rate x
batch size, when both are swept). See docs/sweep.md.
"""

import contextlib
import copy
import csv
import io
import math
import os
import re
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from medclf.core import schemas
from medclf.core.errors import MedclfError
from medclf.core.fileio import atomic_path, write_json, write_text
from medclf.train.early_stopping import patience_count_from

KINDS = ("loguniform", "uniform", "int", "logint", "choice")
NOT_SWEPT = {"monitor": "the objective is the monitored value; sweeping it would compare different metrics",
             "resume": "the sweep resumes trials itself", "progress": "use medclf sweep --no-progress"}
# train options that say where or how a trial runs, not what it computes: workers may differ in them
WHERE_AND_HOW = ("splits", "out", "run_name", "data_root", "resume", "progress", "tensorboard", "cache", "device",
                 "use_gpu", "threads", "workers")
SECTION_KEYS = ("trials", "space", "run", "storage", "seed", "prune")
LOCK_NAME = ".sweep-trial.lock"
_ITEM = re.compile(r"\s*([A-Za-z][A-Za-z0-9_-]*)\s*=\s*([a-z]+)\s*\(([^()]*)\)\s*")


def _log(message):
    print(f"medclf sweep: {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------ the space

@dataclass
class Param:
    """One swept `medclf train` option: loguniform/uniform/int/logint(low, high) or choice(values)."""

    name: str
    kind: str
    low: float = None
    high: float = None
    choices: tuple = ()

    def suggest(self, trial):
        if self.kind == "choice":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.kind in ("int", "logint"):
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.kind == "logint")
        return trial.suggest_float(self.name, self.low, self.high, log=self.kind == "loguniform")

    def probes(self):
        """Values that must all be valid train options: the bounds or every choice."""
        if self.kind == "choice":
            return list(self.choices)
        cast = int if self.kind in ("int", "logint") else float
        return [cast(self.low), cast(self.high)]

    def text(self):
        args = self.choices if self.kind == "choice" else (self.low, self.high)
        return f"{self.name}={self.kind}({','.join(str(a) for a in args)})"


def _scalar(token):
    """'1e-4' -> 0.0001, '16' -> 16, 'resnet18' -> 'resnet18' (YAML 1.2 numbers; words stay words)."""
    token = token.strip()
    for cast in (int, float):
        try:
            return cast(token)
        except ValueError:
            pass
    return token


def parse_param(name, spec, source):
    """One `name=kind(args)` (spec = 'kind(args)', or a list meaning choice) -> Param."""
    if isinstance(spec, (list, tuple)):
        spec = f"choice({','.join(str(v) for v in spec)})"
    match = _ITEM.fullmatch(f"{name}={spec}")
    if not match:
        raise MedclfError(f"{source}: '{name}={spec}' is not KEY=KIND(ARGS); e.g. lr=loguniform(1e-4,1e-2), "
                          "batch-size=choice(16,32,64)")
    name, kind, inner = match.groups()
    args = [_scalar(a) for a in inner.split(",")] if inner.strip() else []
    if kind not in KINDS:
        raise MedclfError(f"{source}: {name}={kind}(...): unknown distribution {kind}; use one of {', '.join(KINDS)}")
    if name.replace("_", "-") in NOT_SWEPT:
        raise MedclfError(f"{source}: {name} cannot be swept ({NOT_SWEPT[name.replace('_', '-')]})")
    if kind == "choice":
        if not args or any(a == "" for a in args) or len(set(args)) != len(args):
            raise MedclfError(f"{source}: {name}=choice(...) needs distinct values, e.g. choice(16,32,64)")
        return Param(name, kind, choices=tuple(args))
    if len(args) != 2 or not all(isinstance(a, (int, float)) for a in args):
        raise MedclfError(f"{source}: {name}={kind}({inner}): give two numbers, LOW,HIGH")
    low, high = args
    if not low < high:
        raise MedclfError(f"{source}: {name}={kind}({inner}): LOW must be below HIGH")
    if kind in ("loguniform", "logint") and low <= 0:
        raise MedclfError(f"{source}: {name}={kind}({inner}): a log scale needs LOW above 0")
    if kind in ("int", "logint") and not all(isinstance(a, int) for a in args):
        raise MedclfError(f"{source}: {name}={kind}({inner}): give whole numbers")
    return Param(name, kind, float(low), float(high))


def parse_space(space, source="--space"):
    """'lr=loguniform(1e-4,1e-2) batch-size=choice(16,32)' or a study file's mapping -> [Param]."""
    if isinstance(space, dict):
        params = [parse_param(str(k), v, f"{source}.{k}") for k, v in space.items()]
    elif isinstance(space, str):
        items = re.findall(r"[^\s(]+\([^()]*\)|\S+", space)
        params = []
        for item in items:
            name, eq, spec = item.partition("=")
            if not eq:
                raise MedclfError(f"{source}: '{item}' is not KEY=KIND(ARGS); e.g. lr=loguniform(1e-4,1e-2)")
            params.append(parse_param(name, spec, source))
    else:
        params = []
    if not params:
        raise MedclfError(f"{source}: empty search space; e.g. --space 'lr=loguniform(1e-4,1e-2) "
                          "batch-size=choice(16,32,64)'")
    names = [p.name for p in params]
    if len(set(names)) != len(names):
        raise MedclfError(f"{source}: {sorted({n for n in names if names.count(n) > 1})[0]} is given twice")
    return params


# ------------------------------------------------------------------------------------- the plan

@dataclass
class SweepPlan:
    name: str            # optuna study name: <study name>/<sweep name>
    study_file: Path
    study_dir: Path      # <out>/<study name>
    sweep_dir: Path
    run: str
    train_call: object   # the study's StageCall of that run's training
    space: list
    trials: int
    monitor: str
    direction: str
    warmup: int
    storage: str         # None = SQLite in sweep_dir
    seed: int
    prune: bool
    progress: bool
    raw_study: dict      # the study file as parsed (overrides applied, nothing expanded), for best_study.yaml
    commands: dict = None  # parsers, validators and runner of the medclf commands (registry.stage_commands)

    @property
    def trials_dir(self):
        return self.sweep_dir / "trials"

    def settings(self):
        """What the stored trials mean; workers and resumed sweeps must agree on it."""
        options = {k: v for k, v in sorted(vars(self.train_call.args).items())
                   if k not in WHERE_AND_HOW and not k.startswith("_")}
        return {"space": " ".join(p.text() for p in self.space), "monitor": self.monitor,
                "direction": self.direction, "run": self.run, "train_options": options}


def sweep_section(study, source):
    section = study.get("sweep") or {}
    if not isinstance(section, dict):
        raise MedclfError(f"{source}: sweep: expected a mapping with trials, space (and run, storage, seed, prune)")
    unknown = sorted(set(map(str, section)) - set(SECTION_KEYS))
    if unknown:
        raise MedclfError(f"{source}: sweep: unknown key(s) {', '.join(unknown)}; use {', '.join(SECTION_KEYS)}")
    return section


def build_sweep(study_file, trials=None, space=None, storage=None, data_root=None, out_root="results",
                overrides=(), sweep_name="sweep", seed=None, prune=None, progress=True, *, commands):
    """Read and check everything (study, space, every swept value against train's parser) -> SweepPlan.
    `commands`: {parsers, validators, runner} of the medclf commands (registry.stage_commands)."""
    from medclf.workflows.study import apply_overrides, build_plan, load_study

    source = Path(study_file)
    _, study = load_study(study_file)
    apply_overrides(study, overrides)
    section = sweep_section(study, source)
    trials = trials if trials is not None else section.get("trials")
    if not isinstance(trials, int) or isinstance(trials, bool) or trials < 1:
        raise MedclfError(f"{source}: the number of trials ({trials!r}) must be a whole number of at least 1; "
                          "give --trials N or sweep: {trials: N}")
    params = parse_space(space if space is not None else section.get("space"),
                         "--space" if space is not None else f"{source}: sweep.space")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", sweep_name or ""):
        raise MedclfError(f"--sweep-name {sweep_name!r}: use letters, digits, '.', '_' and '-' (it names a folder)")
    plan = build_plan({k: v for k, v in study.items() if k != "sweep"}, study_file, data_root=data_root,
                      out_root=out_root, parsers=commands["parsers"], validators=commands["validators"])
    train_calls = [c for c in plan.calls if c.stage == "train"]
    run = section.get("run") or train_calls[0].run
    call = next((c for c in train_calls if c.run == str(run)), None)
    if call is None:
        raise MedclfError(f"{source}: sweep.run {run!r} is not one of the study's runs "
                          f"({', '.join(c.run for c in train_calls)})")
    patience = [p for p in params if p.name.replace("_", "-") == "patience"]
    resolved = _resolved_train_config(call)
    # Early stopping cannot stop before the patience is used up after its uncounted epochs (warm-up).
    warmup = (int(max(patience[0].probes())) if patience else int(resolved["patience"])) + patience_count_from(resolved)
    sweep = SweepPlan(f"{plan.name}/{sweep_name}", source, plan.out_dir, plan.out_dir / sweep_name, str(run), call,
                      params, trials, call.args.monitor, _direction(call.args.monitor), warmup,
                      storage if storage is not None else section.get("storage"),
                      int(seed if seed is not None else section.get("seed", 0)),
                      bool(section.get("prune", True) if prune is None else prune), progress, study, commands)
    for param in params:
        for value in param.probes():
            trial_args(sweep, {param.name: value}, "check")
    return sweep


def _resolved_train_config(call):
    """The training options of a study's train call, recipe and defaults applied."""
    from medclf.train.training import config_from_arguments, resolve_config

    return resolve_config(config_from_arguments(call.args))


def _direction(monitor):
    from medclf.train.early_stopping import MONITOR_MODES

    return "minimize" if MONITOR_MODES[monitor] == "min" else "maximize"


def trial_args(plan, values, run_name, resume=False):
    """The parsed `medclf train` arguments of one trial: the study's run with the trial's values."""
    from medclf.workflows.study import StageCall, _check_call, options_to_argv

    parser = plan.commands["parsers"]["train"]
    where = f"{plan.study_file}: sweep ({', '.join(f'{k}={v}' for k, v in values.items())})"
    argv = plan.train_call.argv + ["--out", str(plan.trials_dir), "--run-name", run_name]
    argv += options_to_argv(values, parser, "train", where)
    if resume:
        argv.append("--resume")
    if not plan.progress:
        argv.append("--no-progress")
    call = StageCall("train", run_name, argv, where)
    _check_call(call, parser, {"train": plan.commands["validators"]["train"]})  # the study's own checks: parser, then train's values
    return call.args


# ---------------------------------------------------------------------------------- storage

def open_storage(spec, sweep_dir):
    """(optuna storage, description with no password) for None (SQLite here), a URL or a journal file."""
    import optuna

    if spec is None:
        sweep_dir.mkdir(parents=True, exist_ok=True)
        return optuna.storages.RDBStorage(f"sqlite:///{(sweep_dir / 'sweep.db').resolve()}"), \
            f"SQLite {sweep_dir / 'sweep.db'} (one process)"
    spec = str(spec)
    if "://" not in spec:
        from optuna.storages.journal import JournalFileBackend

        Path(spec).parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(spec)), f"Optuna journal file {spec}"
    from sqlalchemy.engine import make_url

    try:
        shown = make_url(spec).render_as_string(hide_password=True)
    except Exception as exc:  # sqlalchemy.exc.ArgumentError
        raise MedclfError(f"--storage {spec}: not a database URL ({exc}); e.g. postgresql://user@host:5432/db "
                          "or a journal file path") from None
    if spec.startswith("postgresql://"):  # SQLAlchemy 2.1's default PostgreSQL driver is psycopg 3
        try:
            import psycopg  # noqa: F401
        except ImportError:
            raise MedclfError("--storage postgresql://... needs psycopg: pip install 'psycopg[binary]'") from None
    for attempt in range(3):
        try:
            return optuna.storages.RDBStorage(spec), shown
        except Exception as exc:  # no server, no database, refused login; or tables created by another worker now
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            time.sleep(1 + attempt)
    raise MedclfError(f"--storage {shown}: cannot open the database ({first}); check the URL and that the server runs")


def open_study(plan, storage):
    """The optuna study (created or loaded); refuses stored trials made with other settings."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # medclf logs each trial itself
    study = optuna.create_study(storage=storage, study_name=plan.name, direction=plan.direction,
                                load_if_exists=True, pruner=build_pruner(plan))
    stored = study.user_attrs.get("medclf")
    settings = plan.settings()
    if stored is None:
        study.set_user_attr("medclf", settings)
    elif stored != settings:
        changed = sorted(k for k in settings if stored.get(k) != settings[k])
        raise MedclfError(f"{plan.sweep_dir}: the sweep {plan.name} in its storage was made with other settings "
                          f"({', '.join(changed)}); nothing was changed. Give another --sweep-name")
    return study


def build_pruner(plan):
    import optuna

    if not plan.prune:
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=plan.warmup)


# ----------------------------------------------------------------------------------- trials

@contextlib.contextmanager
def trial_lock(run_dir):
    """Hold an exclusive lock on the trial's run folder while it trains: the OS frees it when the
    process dies, which is how another worker tells an interrupted trial from a running one."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / LOCK_NAME, "a") as handle:
        try:
            import fcntl
        except ImportError:  # Windows: no lock, so interrupted trials are not detected
            yield
            return
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise MedclfError(f"{run_dir}: another process is training this trial") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _lock_is_free(path):
    try:
        import fcntl
    except ImportError:
        return False
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(handle, fcntl.LOCK_UN)
        return True


def counts(trial):
    """Whether a trial takes one of the N places: an interrupted trial gives its place to the trial
    that continues it, a surplus trial never ran; everything else (failures included) counts."""
    from optuna.trial import TrialState

    return not (trial.state == TrialState.FAIL and ("interrupted" in trial.user_attrs or "surplus" in trial.user_attrs))


def continue_interrupted(study, storage, plan):
    """Mark trials whose process died as failed ("interrupted") and queue their continuation."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        run = trial.user_attrs.get("run")
        lock = plan.trials_dir / str(run) / LOCK_NAME
        if not run or not lock.is_file() or not _lock_is_free(lock):
            continue  # running elsewhere, or on another machine
        try:
            storage.set_trial_user_attr(trial._trial_id, "interrupted", "its process stopped during training")
            if not storage.set_trial_state_values(trial._trial_id, TrialState.FAIL):
                continue
        except UpdateFinishedTrialError:
            continue  # another worker got there first
        study.enqueue_trial(trial.params, user_attrs={"run": run, "continues": trial.number})
        _log(f"trial {trial.number} was interrupted; it continues from {plan.trials_dir / run} as a new trial")


def pruning_reporter(trial, plan):
    """train's on_epoch: report the best value so far; stop the run when the pruner says so."""
    import optuna

    def on_epoch(row, best):
        if best is None or not math.isfinite(best):
            return
        trial.report(best, step=int(row["epoch"]))
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {row['epoch']}: best {plan.monitor} {best:.4f} is worse "
                                     "than the median of earlier trials at that epoch")
    return on_epoch


def train_trial(trial, plan, run_name):
    """Train one trial in its run folder (continuing it when it was interrupted); the training summary."""
    from medclf.train.training import config_from_arguments, run_training

    values = {p.name: p.suggest(trial) for p in plan.space}
    args = trial_args(plan, values, run_name, resume=(plan.trials_dir / run_name / "last.pt").is_file())
    return run_training(config_from_arguments(args), on_epoch=pruning_reporter(trial, plan))


def run_one_trial(study, plan):
    """Ask for a trial and run it, recording how it ended. False when all N places were taken."""
    from optuna.trial import TrialState

    study.sampler = build_sampler(plan, len(study.get_trials(deepcopy=False)))
    trial = study.ask()
    taken = sum(1 for t in study.get_trials(deepcopy=False) if t.number < trial.number and counts(t))
    if taken >= plan.trials:
        trial.set_user_attr("surplus", f"{plan.trials} trials were already taken by other workers")
        study.tell(trial, state=TrialState.FAIL)
        return False
    _log(f"trial {trial.number} ({taken + 1} of {plan.trials})")
    run_name = trial.user_attrs.get("run") or f"trial_{trial.number:04d}"
    try:
        # Held until the trial's end is recorded, so that another worker reads a free lock on a
        # RUNNING trial only when its process died (not in the moment between training and tell).
        with trial_lock(plan.trials_dir / run_name):
            trial.set_user_attr("run", run_name)
            train_and_record(study, trial, plan, run_name)
    except MedclfError as exc:  # the lock is held by another live process
        fail_trial(study, trial, exc)
    return True


def fail_trial(study, trial, exc):
    """A failed trial is recorded with its reason and counts; the sweep goes on."""
    from optuna.trial import TrialState

    reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    trial.set_user_attr("error", f"{type(exc).__name__}: {reason}")
    study.tell(trial, state=TrialState.FAIL)
    _log(f"trial {trial.number} failed: {reason}")


def train_and_record(study, trial, plan, run_name):
    """Train the trial and tell the storage how it ended (pruned, stopped by the user, failed, or its value)."""
    import optuna
    from optuna.trial import TrialState

    try:
        summary = train_trial(trial, plan, run_name)
    except optuna.TrialPruned as exc:
        trial.set_user_attr("note", str(exc))
        study.tell(trial, state=TrialState.PRUNED)
        _log(f"trial {trial.number} {exc}")
    except KeyboardInterrupt:
        trial.set_user_attr("interrupted", "stopped by the user (Ctrl-C)")
        study.tell(trial, state=TrialState.FAIL)
        study.enqueue_trial(trial.params, user_attrs={"run": run_name, "continues": trial.number})
        raise
    except Exception as exc:
        fail_trial(study, trial, exc)
    else:
        for key in ("epochs", "best_epoch", "stopped"):
            trial.set_user_attr(key, summary[key])
        study.tell(trial, summary["best_value"])
        _log(f"trial {trial.number}: best {plan.monitor} {summary['best_value']:.4f} at epoch {summary['best_epoch']}")


def build_sampler(plan, n_trials_seen):
    """TPE seeded per trial from (seed, trials so far): a resumed sweep draws what an uninterrupted
    one would. With a shared storage, workers would draw alike from equal counts, so the process id
    joins the seed there (several workers are not reproducible anyway: trials finish in any order)."""
    import optuna

    shared = 0 if plan.storage is None else os.getpid()
    seed = (plan.seed * 1_000_003 + n_trials_seen * 7_919 + shared) % 2**32
    return optuna.samplers.TPESampler(seed=seed)


def run_trials(study, storage, plan):
    """Run trials until N have been taken (by this worker or others)."""
    from optuna.trial import TrialState

    while True:
        continue_interrupted(study, storage, plan)
        trials = study.get_trials(deepcopy=False)
        waiting = any(t.state == TrialState.WAITING for t in trials)
        if sum(1 for t in trials if counts(t)) >= plan.trials and not waiting:
            return
        if not run_one_trial(study, plan):
            return
        write_trials_csv(study, plan)


# ---------------------------------------------------------------------------------- outputs

def trial_rows(study, plan):
    """One row per trial (surplus ones aside), in trial order."""
    from optuna.trial import TrialState

    trials = [t for t in study.get_trials(deepcopy=False) if "surplus" not in t.user_attrs]
    continued_by = {t.user_attrs["continues"]: t.number for t in trials if "continues" in t.user_attrs}
    rows = []
    for t in trials:
        note = t.user_attrs.get("note") or t.user_attrs.get("error") or ""
        if "interrupted" in t.user_attrs:
            note = f"interrupted ({t.user_attrs['interrupted']}); continued by trial {continued_by.get(t.number, '?')}"
        elif "continues" in t.user_attrs:
            note = f"continues interrupted trial {t.user_attrs['continues']}" + (f"; {note}" if note else "")
        value = t.value if t.state == TrialState.COMPLETE else None
        last = t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values else None
        seconds = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete and t.datetime_start else None
        rows.append({"number": t.number, "state": t.state.name.lower(), "value": value,
                     "best_value_reported": last, **{p.name: t.params.get(p.name) for p in plan.space},
                     "epochs": t.user_attrs.get("epochs"), "best_epoch": t.user_attrs.get("best_epoch"),
                     "run": t.user_attrs.get("run"), "seconds": None if seconds is None else round(seconds, 1),
                     "note": note})
    return rows


def write_trials_csv(study, plan):
    rows = trial_rows(study, plan)
    columns = ["number", "state", "value", "best_value_reported"] + [p.name for p in plan.space] + \
              ["epochs", "best_epoch", "run", "seconds", "note"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if v is None else v for k, v in row.items()})
    write_text(plan.sweep_dir / "trials.csv", buffer.getvalue())
    return plan.sweep_dir / "trials.csv"


def best_study_text(plan, best):
    """The study file with the best trial's values in train:, as one run; sweep:, runs: and compare: go."""
    import yaml

    study = copy.deepcopy(plan.raw_study)
    runs = study.pop("runs", None) or []
    study.pop("sweep", None)
    study.pop("compare", None)
    train = dict(study.get("train") or {})
    for run in runs:
        if str(run.get("run-name") or run.get("run_name") or run.get("arch")) == plan.run:
            train.update({k: v for k, v in run.items() if k not in ("run-name", "run_name")})
    train.update(best.params)
    study["train"] = train
    study["runs"] = [{"run-name": f"{plan.sweep_dir.name}-best"}]
    header = (f"# Written by `medclf sweep` from {plan.study_file}: trial {best.number} of {plan.name}, the best "
              f"validation {plan.monitor} ({best.value:.4f}).\n# Train it and test it once: medclf study THIS_FILE\n")
    return header + yaml.safe_dump(study, sort_keys=False, allow_unicode=True)


def _save_and_close(fig, path):
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)


def plot_history(rows, plan, path):
    """Validation value per trial (pruned: its last report, grey x) and the best so far."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    done = [r for r in rows if r["value"] is not None]
    pruned = [r for r in rows if r["state"] == "pruned" and r["best_value_reported"] is not None]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([r["number"] for r in done], [r["value"] for r in done], "o", label="complete")
    if pruned:
        ax.plot([r["number"] for r in pruned], [r["best_value_reported"] for r in pruned], "x", color="grey",
                label="pruned (last report)")
    best, line = None, []
    pick = min if plan.direction == "minimize" else max
    for r in done:
        best = r["value"] if best is None else pick(best, r["value"])
        line.append(best)
    ax.step([r["number"] for r in done], line, where="post", color="C1", label="best so far")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial")
    ax.set_ylabel(f"best validation {plan.monitor}")
    ax.set_title(f"{plan.name}: optimisation history")
    ax.legend()
    _save_and_close(fig, path)


def plot_importance(study, plan, path):
    """fANOVA importances of the swept values (over complete trials); None when they cannot be
    estimated (fewer than two complete trials, or no value varied)."""
    import warnings

    import matplotlib.pyplot as plt
    import optuna

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            importances = optuna.importance.get_param_importances(
                study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
    except (RuntimeError, ValueError) as exc:
        _log(f"no importance plot: {exc}")
        return None
    if not importances:
        return None
    names = list(importances)[::-1]
    fig, ax = plt.subplots(figsize=(6, 0.5 * len(names) + 1.5))
    ax.barh(names, [importances[n] for n in names])
    ax.set_xlabel("importance (fANOVA, share of the variance of the objective)")
    ax.set_title(f"{plan.name}: parameter importances")
    _save_and_close(fig, path)
    return importances


def plot_lr_batch(rows, plan, path):
    """The brain-MRI seed's view: the validation value over learning rate x batch size (one marker
    per architecture when it is swept). None unless lr and batch-size are both swept."""
    import matplotlib.pyplot as plt

    names = {p.name.replace("_", "-") for p in plan.space}
    if not {"lr", "batch-size"} <= names:
        return None
    key = {p.name.replace("_", "-"): p.name for p in plan.space}
    done = [r for r in rows if r["value"] is not None]
    if not done:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    groups = sorted({str(r.get(key.get("arch"), "")) for r in done}) if "arch" in key else [""]
    values = [r["value"] for r in done]
    for marker, group in zip("os^Dv<>p", groups):
        sel = [r for r in done if "arch" not in key or str(r[key["arch"]]) == group]
        points = ax.scatter([r[key["lr"]] for r in sel], [r[key["batch-size"]] for r in sel], c=[r["value"] for r in sel],
                            cmap="viridis" if plan.direction == "maximize" else "viridis_r", marker=marker, s=80,
                            vmin=min(values), vmax=max(values), edgecolors="black", label=group or None)
        for r in sel:
            ax.annotate(f"{r['value']:.3f}", (r[key["lr"]], r[key["batch-size"]]), textcoords="offset points",
                        xytext=(6, 4), fontsize=7)
    ax.set_xscale("log")
    sizes = sorted({r[key["batch-size"]] for r in done})
    ax.set_yscale("log", base=2)
    ax.set_yticks(sizes, [str(b) for b in sizes])
    ax.set_ylim(min(sizes) / 1.5, max(sizes) * 1.5)
    ax.set_xlabel("learning rate")
    ax.set_ylabel("batch size")
    fig.colorbar(points, ax=ax, label=f"best validation {plan.monitor} (brighter = better)")
    if groups != [""]:
        ax.legend(title="arch")
    ax.set_title(f"{plan.name}: {plan.monitor} over learning rate x batch size")
    _save_and_close(fig, path)
    return path


def write_outputs(study, plan, storage_text):
    """trials.csv, plots, best_study.yaml and sweep.json; returns the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    from optuna.trial import TrialState

    from medclf.core.provenance import git_commit, library_versions

    written = [write_trials_csv(study, plan)]
    rows = trial_rows(study, plan)
    plot_history(rows, plan, plan.sweep_dir / "history.png")
    written.append(plan.sweep_dir / "history.png")
    importances = plot_importance(study, plan, plan.sweep_dir / "importance.png")
    written += [plan.sweep_dir / "importance.png"] if importances else []
    written += [p for p in [plot_lr_batch(rows, plan, plan.sweep_dir / "lr_batch.png")] if p]
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    best = study.best_trial if complete else None
    if best is not None:
        write_text(plan.sweep_dir / "best_study.yaml", best_study_text(plan, best))
        written.append(plan.sweep_dir / "best_study.yaml")
    states = [r["state"] for r in rows]
    record = {"schema": schemas.SWEEP, "study_file": str(plan.study_file.absolute()), "name": plan.name,
              "settings": plan.settings(), "trials_wanted": plan.trials, "storage": storage_text,
              "objective": f"best validation {plan.monitor} ({plan.direction}), the early-stopping value; never test",
              "pruner": (f"MedianPruner(n_startup_trials=5, n_warmup_steps={plan.warmup}) on the best value so far "
                         "each epoch") if plan.prune else "none",
              "sampler": f"TPE, seeded per trial from seed {plan.seed}",
              "counts": {s: states.count(s) for s in sorted(set(states))},
              "best": None if best is None else {"number": best.number, "value": best.value, "params": best.params,
                                                 "run": str(plan.trials_dir / best.user_attrs.get("run", ""))},
              "importances": importances, "versions": library_versions(), "git_commit": git_commit(),
              "written": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    write_json(plan.sweep_dir / "sweep.json", record)
    return written + [plan.sweep_dir / "sweep.json"]


# ------------------------------------------------------------------------------------ the stage

@contextlib.contextmanager
def one_worker_at_a_time(plan):
    """Workers started together on one machine take turns to make the partition and the storage's
    tables (creating them at once fails)."""
    plan.study_dir.mkdir(parents=True, exist_ok=True)
    with open(plan.study_dir / ".sweep-start.lock", "a") as handle:
        try:
            import fcntl

            fcntl.flock(handle, fcntl.LOCK_EX)
        except ImportError:
            pass
        yield


def ensure_partition(plan, data_root, out_root, overrides):
    """The study's partition, made by `medclf study` when absent (skipped when it exists)."""
    from medclf.workflows.study import run_study

    # The study runner prints its summary table on stdout, where medclf prints paths.
    with contextlib.redirect_stdout(sys.stderr):
        run_study(plan.study_file, data_root=data_root, out_root=out_root, stages="partition", overrides=overrides,
                  **plan.commands)


def run_sweep(study_file, trials=None, space=None, storage=None, data_root=None, out_root="results", overrides=(),
              sweep_name="sweep", seed=None, prune=None, progress=True, *, commands):
    """Run (or resume, or join as one more worker) a sweep; returns the paths of its outputs.
    `commands`: {parsers, validators, runner} of the medclf commands (registry.stage_commands)."""
    plan = build_sweep(study_file, trials, space, storage, data_root, out_root, overrides, sweep_name, seed, prune,
                       progress, commands=commands)
    with one_worker_at_a_time(plan):
        ensure_partition(plan, data_root, out_root, overrides)
        storage_obj, storage_text = open_storage(plan.storage, plan.sweep_dir)
        study = open_study(plan, storage_obj)
    _log(f"{plan.name}: {plan.trials} trials of {plan.run} over {' '.join(p.text() for p in plan.space)}; "
         f"objective: best validation {plan.monitor}; storage: {storage_text}")
    run_trials(study, storage_obj, plan)
    written = write_outputs(study, plan, storage_text)
    from optuna.trial import TrialState

    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        raise MedclfError(f"{plan.sweep_dir / 'trials.csv'}: no trial completed (see the note column); fix the cause "
                          "and run a new sweep (--sweep-name)")
    return written
