"""medclf sweep: the search space, a killed sweep that resumes, failed trials recorded, and two
workers on one storage (an Optuna journal file, a real PostgreSQL server started here) that neither
lose nor duplicate trials. Trials are real trainings on 16 tiny synthetic images (32 px, 1-2 epochs)."""

import csv
import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO

from medclf.commands import registry
from medclf.core.errors import MedclfError
from medclf.train import training
from medclf.workflows import sweep

TESTS = Path(__file__).resolve().parents[1]  # python/tests: the helper scripts

STUDY = """name: tiny
data:
  root: {root}
partition:
  val: 0.25
  test: 0.25
  seed: 0
  classes: "no,yes"
  positive: "yes"
  dedup: false
train:
  arch: resnet18
  img-size: 32
  epochs: {epochs}
  patience: 2
  batch-size: 8
  threads: 1
  progress: false
sweep:
  trials: 3
  space:
    lr: loguniform(1e-4,1e-2)
    batch-size: choice(4,8)
"""


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """8 bright and 8 dark noisy 32 px PNGs in yes/ and no/."""
    from PIL import Image

    root = tmp_path_factory.mktemp("tiny_images")
    rng = np.random.default_rng(0)
    for label, level in (("yes", 170), ("no", 80)):
        (root / label).mkdir()
        for i in range(8):
            pixels = np.clip(level + rng.normal(0, 40, (32, 32, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / label / f"{label}{i}.png")
    return root


def study_file(folder, images, epochs=2):
    path = folder / "tiny.yaml"
    path.write_text(STUDY.format(root=images, epochs=epochs))
    return path


def env():
    return dict(os.environ, PYTHONPATH=str(REPO / "python"), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
                TQDM_DISABLE="1", MPLBACKEND="Agg")


def rows(sweep_dir):
    with open(sweep_dir / "trials.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def history(run_dir):
    with open(run_dir / "history.csv", newline="") as fh:
        return list(csv.DictReader(fh))


# ------------------------------------------------------------------------------------ space

def test_space_parses_every_kind():
    space = sweep.parse_space("lr=loguniform(1e-4,1e-2) batch-size=choice(16,32,64) arch=choice(resnet18,densenet121) "
                              "epochs=int(2,5) weight-decay=uniform(0,0.1) img-size=logint(32,128)")
    assert [(p.name, p.kind) for p in space] == [("lr", "loguniform"), ("batch-size", "choice"), ("arch", "choice"),
                                                 ("epochs", "int"), ("weight-decay", "uniform"), ("img-size", "logint")]
    assert space[0].low == 1 / 10_000 and space[0].high == 1 / 100
    assert space[1].choices == (16, 32, 64) and space[2].choices == ("resnet18", "densenet121")
    mapping = sweep.parse_space({"lr": "loguniform(1e-4, 1e-2)", "batch-size": [16, 32]}, "study: sweep.space")
    assert mapping[0].probes() == [1e-4, 1e-2] and mapping[1].choices == (16, 32)


@pytest.mark.parametrize("text, message", [
    ("lr=loguniform(1e-4)", "give two numbers, LOW,HIGH"),
    ("lr=loguniform(1e-2,1e-4)", "LOW must be below HIGH"),
    ("lr=loguniform(0,1e-2)", "a log scale needs LOW above 0"),
    ("epochs=int(1.5,3)", "give whole numbers"),
    ("lr=gaussian(0,1)", "unknown distribution gaussian"),
    ("lr=loguniform(1e-4,1e-2", "is not KEY=KIND(ARGS)"),
    ("lr", "is not KEY=KIND(ARGS)"),
    ("batch-size=choice(16,16)", "needs distinct values"),
    ("lr=uniform(0,1) lr=uniform(0,2)", "lr is given twice"),
    ("monitor=choice(val_loss,val_auc)", "monitor cannot be swept"),
    ("", "empty search space"),
])
def test_bad_spaces_are_refused_with_the_reason(text, message):
    with pytest.raises(MedclfError, match=message.replace("(", r"\(").replace(")", r"\)")):
        sweep.parse_space(text)


@pytest.mark.parametrize("space, message", [
    ("lrr=loguniform(1e-4,1e-2)", "has no option --lrr; did you mean lr"),
    ("arch=choice(resnet18,resnett18)", "resnett18"),
    ("batch-size=choice(0,8)", "--batch-size 0"),
])
def test_every_swept_value_is_checked_before_training(tmp_path, images, space, message):
    with pytest.raises(MedclfError, match=message):
        sweep.build_sweep(study_file(tmp_path, images), space=space, out_root=tmp_path / "results",
                          commands=registry.stage_commands())
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("space, warmup", [("lr=loguniform(1e-4,1e-2)", 2), ("patience=int(1,6)", 6)])
def test_pruning_waits_at_least_the_patience(tmp_path, images, space, warmup):
    plan = sweep.build_sweep(study_file(tmp_path, images), space=space, out_root=tmp_path / "results",
                             commands=registry.stage_commands())
    assert plan.warmup == warmup and sweep.build_pruner(plan)._n_warmup_steps == warmup  # study patience: 2
    assert plan.direction == "minimize" and plan.trials == 3


def test_pruning_also_waits_for_the_warm_up_that_patience_does_not_count(tmp_path, images):
    plan = sweep.build_sweep(study_file(tmp_path, images, epochs=20), space="lr=loguniform(1e-4,1e-2)",
                             out_root=tmp_path / "results",
                             overrides=["train.scheduler=warmup-cosine", "train.warmup-fraction=0.1"],
                             commands=registry.stage_commands())
    assert plan.warmup == 2 + 2  # patience 2 after ceil(0.1 * 20) = 2 warm-up epochs


# ------------------------------------------------------------------------------ resume, failures

@pytest.mark.slow
def test_a_sweep_killed_mid_trial_resumes_and_finishes_n_trials(tmp_path, images):
    import optuna

    study = study_file(tmp_path, images)
    out = tmp_path / "results"
    # killed after 3 saved epochs: trial 0 done (2 epochs), trial 1 after its first epoch
    killed = subprocess.run([sys.executable, str(TESTS / "sweep_killed_after_epochs.py"), "3", "sweep", str(study),
                             "--out", str(out), "--no-progress"], env=env(), capture_output=True, text=True,
                            timeout=300)
    assert killed.returncode == -9, killed.stderr[-2000:]
    sweep_dir = out / "tiny" / "sweep"
    storage = f"sqlite:///{sweep_dir / 'sweep.db'}"
    before = optuna.load_study(study_name="tiny/sweep", storage=storage).get_trials()
    assert [t.state.name for t in before] == ["COMPLETE", "RUNNING"]

    sweep.run_sweep(study, out_root=out, progress=False, commands=registry.stage_commands())
    trials = optuna.load_study(study_name="tiny/sweep", storage=storage).get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    assert trials[2].params == trials[1].params and trials[2].user_attrs["run"] == "trial_0001"
    resumed = history(sweep_dir / "trials" / "trial_0001")
    assert [r["epoch"] for r in resumed] == ["1", "2"]   # continued from last.pt, not restarted
    table = rows(sweep_dir)
    assert "interrupted" in table[1]["note"] and "continued by trial 2" in table[1]["note"]
    assert sum(r["state"] == "complete" for r in table) == 3
    for trial in (trials[0], trials[3]):   # the objective: the best validation loss of the run, step by step
        val = [float(r["val_loss"]) for r in history(sweep_dir / "trials" / trial.user_attrs["run"])]
        assert trial.value == min(val)
        assert trial.intermediate_values == {e + 1: min(val[:e + 1]) for e in range(len(val))}
    best_file = sweep_dir / "best_study.yaml"
    from medclf.workflows.study import build_plan, load_study

    _, best = load_study(best_file)
    best_trial = min((t for t in trials if t.state.name == "COMPLETE"), key=lambda t: t.value)
    assert best["train"]["lr"] == best_trial.params["lr"] and "sweep" not in best
    assert build_plan(best, best_file, out_root=tmp_path / "check", parsers=registry.stage_parsers(), validators=registry.stage_validators()).runs == ["sweep-best"]
    for plot in ("history.png", "lr_batch.png"):
        assert (sweep_dir / plot).stat().st_size > 1000


@pytest.mark.slow
def test_a_failed_trial_is_recorded_and_counted_never_retried(tmp_path, images, monkeypatch):
    real = training.run_training
    calls = []

    def out_of_memory_once(config, on_epoch=None):
        calls.append(config["run_name"])
        if len(calls) == 1:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(config, on_epoch)

    monkeypatch.setattr(training, "run_training", out_of_memory_once)
    study = study_file(tmp_path, images, epochs=1)
    sweep.run_sweep(study, trials=2, out_root=tmp_path / "results", progress=False, commands=registry.stage_commands())
    table = rows(tmp_path / "results" / "tiny" / "sweep")
    assert [r["state"] for r in table] == ["fail", "complete"] and calls == ["trial_0000", "trial_0001"]
    assert table[0]["note"] == "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB"


@pytest.mark.slow
def test_the_trial_lock_is_held_until_the_trial_is_recorded(tmp_path, images, monkeypatch):
    """Another worker marks a RUNNING trial whose lock is free as interrupted, so the lock must stay
    held until the storage has the trial's end: two workers once marked a finished trial interrupted
    in the moment between the end of its training and its `tell`."""
    import optuna

    real_tell = optuna.study.Study.tell
    lock_free_at_tell = []

    def tell(self, trial, *args, **kwargs):
        run = trial.user_attrs.get("run")
        if run:
            lock = tmp_path / "results" / "tiny" / "sweep" / "trials" / run / sweep.LOCK_NAME
            lock_free_at_tell.append(sweep._lock_is_free(lock))
        return real_tell(self, trial, *args, **kwargs)

    monkeypatch.setattr(optuna.study.Study, "tell", tell)
    sweep.run_sweep(study_file(tmp_path, images, epochs=1), trials=2, out_root=tmp_path / "results", progress=False, commands=registry.stage_commands())
    assert lock_free_at_tell == [False, False]


# ------------------------------------------------------------------------------ several workers

def _postgres_binaries():
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url():
    """A PostgreSQL server of our own: initdb in a temp folder, a loopback port, stopped at the end."""
    bindir = _postgres_binaries()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed; scripts/setup.sh installs "
                    "Debian's postgresql package")
    as_user = []
    if os.geteuid() == 0:  # postgres refuses to run as root
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no postgres user to run the server as")
        as_user = ["runuser", "-u", "postgres", "--"]
    base = Path(tempfile.mkdtemp(prefix="medclf-pg-"))
    if as_user:
        shutil.chown(base, "postgres")
    data, port = base / "data", _free_port()

    def run(*argv):
        subprocess.run(as_user + [str(a) for a in argv], check=True, capture_output=True, timeout=120)

    run(bindir / "initdb", "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8")
    run(bindir / "pg_ctl", "-D", data, "-l", base / "server.log", "-w", "-o",
        f"-p {port} -k {base} -c listen_addresses=127.0.0.1", "start")
    try:
        run(bindir / "createdb", "-h", "127.0.0.1", "-p", port, "-U", "postgres", "medclf_sweep")
        yield f"postgresql://postgres@127.0.0.1:{port}/medclf_sweep"
    finally:
        run(bindir / "pg_ctl", "-D", data, "-m", "fast", "-w", "stop")
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.slow  # two sweep workers training trials; postgresql also starts a database server
@pytest.mark.parametrize("kind", ["journal", "postgresql"])
def test_two_workers_on_one_storage_give_n_distinct_trials(tmp_path, images, kind, request):
    import optuna

    storage = str(tmp_path / "sweep.journal") if kind == "journal" else request.getfixturevalue("postgres_url")
    study = study_file(tmp_path, images, epochs=1)
    out = tmp_path / "results"
    argv = [sys.executable, "-m", "medclf", "sweep", str(study), "--trials", "3", "--storage", storage,
            "--out", str(out), "--no-progress"]
    workers = [subprocess.Popen(argv, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for _ in range(2)]
    results = [w.communicate(timeout=300) for w in workers]
    assert [w.returncode for w in workers] == [0, 0], [err[-2000:] for _, err in results]
    if kind == "journal":
        storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(storage))
    trials = [t for t in optuna.load_study(study_name="tiny/sweep", storage=storage).get_trials()
              if "surplus" not in t.user_attrs]
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3
    runs = [t.user_attrs["run"] for t in trials]
    assert len(set(runs)) == 3 and all((out / "tiny" / "sweep" / "trials" / r / "best.pt").is_file() for r in runs)
    assert [r["number"] for r in rows(out / "tiny" / "sweep")] == [str(t.number) for t in trials]
