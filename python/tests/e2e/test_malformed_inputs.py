"""Malformed inputs, table-driven: every command refuses them cleanly.

Each case copies a tiny, valid workspace (16 random 32x32 PNGs in data/{no,yes}/, their partition
in part/, a one-epoch squeezenet run with predictions in run/, the same split in seed 002's layout
in seed/), breaks one thing, runs one command in its own process (as a user would) and checks the
promise of DESIGN.md: a non-zero exit, exactly one line on stderr naming the offending file, no
traceback, and every file that existed before byte-identical afterwards (inputs and earlier outputs
alike; a refused command writes no new file either). The cases run in their own folders, a few at a
time (the `outcomes` fixture), each process a fork of one that has imported torch already
(preloaded_commands.py: a new interpreter spends 3 s importing it); the test of each case then
checks its outcome.
"""

import csv
import hashlib
import io
import json
import os
import shlex
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medclf import cli
from preloaded_commands import PreloadedCommands

REPO = Path(__file__).resolve().parents[3]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
    [str(REPO / "python")] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))}


# ------------------------------------------------------------------ the shared helper

def tree_hashes(root):
    """{relative path: sha256} of every file under root (symbolic links by their target)."""
    hashes = {}
    for path in sorted(Path(root).rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            hashes[rel] = "link:" + os.readlink(path)
        elif path.is_file():
            hashes[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return hashes


def command(text, commands):
    """'medclf ...' runs the package, 'X.py ...' a seed Python script (both through `commands`, a
    PreloadedCommands), 'X.R ...' an R script."""
    argv = shlex.split(text)
    if argv[0] == "medclf":
        return commands.argv("module", "medclf", argv[1:])
    if argv[0].endswith(".py"):
        return commands.argv("script", str(REPO / argv[0]), argv[1:])
    if argv[0].endswith(".R"):
        return ["Rscript", "--vanilla", str(REPO / argv[0]), *argv[1:]]
    raise ValueError(argv[0])


@dataclass
class Outcome:
    returncode: int
    stdout: str
    stderr: str
    before: dict   # tree_hashes of the work folder before the command
    after: dict


def run_hashed(workdir, argv):
    """Run argv in workdir as a user would (a subprocess), hashing every file before and after."""
    before = tree_hashes(workdir)
    done = subprocess.run(argv, cwd=workdir, env=ENV, capture_output=True, text=True, timeout=300)
    return Outcome(done.returncode, done.stdout, done.stderr, before, tree_hashes(workdir))


def assert_refused_cleanly(outcome, names, expect=()):
    """Non-zero exit; exactly one stderr line, naming `names` (and each of `expect`); no traceback;
    no file that existed before changed or removed, and no new file written."""
    lines = [line for line in outcome.stderr.splitlines() if line.strip()]
    assert outcome.returncode != 0, f"exit status 0\nstdout: {outcome.stdout}\nstderr: {outcome.stderr}"
    assert "Traceback" not in outcome.stderr, outcome.stderr
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{outcome.stderr}"
    assert names in lines[0], f"{names!r} not named in: {lines[0]}"
    for word in expect:
        assert word in lines[0], f"{word!r} not in: {lines[0]}"
    changed = sorted(k for k in outcome.before if outcome.after.get(k) != outcome.before[k])
    assert not changed, f"changed or removed by a refused command: {changed}"
    created = sorted(set(outcome.after) - set(outcome.before))
    assert not created, f"written by a refused command: {created}"


# ------------------------------------------------------------------ the valid workspace

@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("malformed_base").resolve()
    rng = np.random.default_rng(8)
    for label in ("no", "yes"):
        (root / "data" / label).mkdir(parents=True)
        for i in range(8):
            pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / "data" / label / f"{label}{i}.png")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        steps = [
            "partition --data-root data --out part --val 0.25 --test 0.25 --quiet",
            "train --splits part/splits.csv --img-size 32 --epochs 1 --threads 1 --weights none "
            "--arch squeezenet1_1 --batch-size 8 --out . --run-name run --no-progress",
            "test --run run --no-progress",
            "organize --splits part --out seed --layout seed002 --mode copy --quiet",
        ]
        for step in steps:
            assert cli.main(shlex.split(step)) == 0, step
    finally:
        os.chdir(cwd)
    for name in ("last.pt", "curves.png"):
        (root / "run" / name).unlink()
    shutil.rmtree(root / "run" / "cache", ignore_errors=True)
    # A seed-002 project with a trained model's folder, for test_torchvision.py.
    shutil.copytree(root / "run", root / "seed" / "results" / "medclf_m")
    return root


def copy_workspace(base, work):
    """A copy of the workspace whose files point at the copy (records hold absolute paths). The
    runs' split copies change with it, so their recorded sha256 is renewed, as a fresh run's would be."""
    shutil.copytree(base, work)
    for path in work.rglob("*"):
        if path.suffix in (".json", ".csv", ".md") and path.is_file():
            text = path.read_text(encoding="utf-8")
            if str(base) in text:
                path.write_text(text.replace(str(base), str(work)), encoding="utf-8")
    for config_path in work.rglob("config.json"):
        config = json.loads(config_path.read_text(encoding="utf-8"))
        for record in config.get("split_files") or []:
            bound = config_path.parent / record["copy"] if record.get("copy") else Path(record["path"])
            if bound.is_file():
                record["sha256"] = hashlib.sha256(bound.read_bytes()).hexdigest()
        config_path.write_text(json.dumps(config, indent=2), encoding="utf-8")


# ------------------------------------------------------------------ how a case breaks the workspace

DIR = object()  # setup value: make a directory where a file is expected


def edit_csv(change):
    """Setup value: rewrite a CSV's rows (a list of dicts) with change(rows)."""
    def apply(text):
        rows = list(csv.DictReader(io.StringIO(text)))
        rows = change(rows) or rows
        out = io.StringIO()
        writer = csv.DictWriter(out, list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return out.getvalue()
    return apply


def edit_json(change):
    def apply(text):
        obj = json.loads(text)
        changed = change(obj)
        return json.dumps(obj if changed is None else changed)
    return apply


def set_first(column, value, where=lambda row: True):
    def change(rows):
        next(r for r in rows if where(r))[column] = value
    return change


def drop_column(column):
    def change(rows):
        for r in rows:
            r.pop(column)
    return change


def truncate(data):
    return data[: len(data) // 2]


def latin1(text):
    return text.encode("latin-1")


def apply_setup(root, setup):
    """Break the workspace: each key is a path (or glob) under root; its value is the new content
    (bytes, str, or a JSON dict/list), DIR (a folder in its place), None (remove it), or a function
    of the old content (str when it is UTF-8, else bytes)."""
    for pattern, value in setup.items():
        for path in sorted(root.glob(pattern)) if "*" in pattern else [root / pattern]:
            if value is None:
                shutil.rmtree(path) if path.is_dir() else path.unlink()
                continue
            if value is DIR:
                if path.exists():
                    path.unlink()
                path.mkdir(parents=True)
                continue
            if callable(value):
                old = path.read_bytes()
                try:
                    value = value(old.decode("utf-8"))
                except UnicodeDecodeError:
                    value = value(old)
            elif isinstance(value, (dict, list)):
                value = json.dumps(value)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(value.encode("utf-8") if isinstance(value, str) else value)


def predictions(**changes):
    """A valid medclf.predictions/1 record of 4 images, with some keys changed."""
    record = {"schema": "medclf.predictions/1", "split": "test", "classes": ["no", "yes"],
              "positive_class": "yes", "paths": ["no/a.png", "no/b.png", "yes/c.png", "yes/d.png"],
              "labels": [0, 0, 1, 1], "predictions": [0, 1, 1, 1],
              "probabilities": [[0.8, 0.2], [0.4, 0.6], [0.3, 0.7], [0.1, 0.9]]}
    record.update(changes)
    return record


@dataclass
class Case:
    id: str
    setup: dict                     # how the copy of the workspace is broken (see apply_setup)
    command: str                    # run in the copy (see command())
    names: str                      # must appear in the error line: the offending file
    expect: tuple = ()              # further words the line must hold
    copies: dict = field(default_factory=dict)  # {workspace folder: new name} copied before setup


META = "image,label\nno/no0.png,no\nno/no1.png,no\nyes/yes0.png,yes\nyes/yes1.png,yes\n"
PARTITION_META = "medclf partition --metadata meta.csv --image-dir data --image-col image --out out --quiet"
PARTITION_DIR = "medclf partition --data-root data --out out --quiet"
HEADER = "path,label,label_index,split,group\n"
ORGANIZE = "medclf organize --splits part/splits.csv --out organized --quiet"
TRAIN = ("medclf train --splits part/splits.csv --img-size 32 --epochs 1 --threads 1 --weights none "
         "--arch squeezenet1_1 --out out --run-name r --no-progress")
TEST = "medclf test --run run --no-progress"
REPORT = "medclf report --run run --no-plots"
COMPARE = "medclf compare run other"
STUDY = "medclf study study.yaml --out out"
STUDY_OK = "name: s\ndata: {root: data}\npartition: {seed: 0}\ntrain: {epochs: 1, img-size: 32}\n"
SEED_TRAIN = ("python/train_torchvision.py -project_directory seed -num_epochs 1 -model_save_name new.pth "
              "-img_shape 3 32 32 -batch_size 8")
SEED_TEST = "python/test_torchvision.py -dir seed -save m.pth -result_json_name out.json -img_size 3 32 32"
CALC = "R/calc_model_performance.R p.json"
COMPARE_R = "R/compare_models.R run/predictions_test.json p.json"
PREDS = "run/predictions_test.json"
NAN_ROW = [[0.8, 0.2], ["NaN", "NaN"], [0.3, 0.7], [0.1, 0.9]]
ABOVE_1 = [[0.8, 0.2], [-0.5, 1.5], [0.3, 0.7], [0.1, 0.9]]


def drop_val_and_first_test(rows):
    """Test predictions that differ from the run's earlier ones, and nothing to predict on val."""
    first_test = next(r for r in rows if r["split"] == "test")
    return [r for r in rows if r["split"] != "val" and r is not first_test]


def in_split(split):
    return {"where": lambda row: row["split"] == split}


CASES = [
    # ---- partition: metadata CSV, class folders, label maps
    Case("partition/metadata-0-byte", {"meta.csv": b""}, PARTITION_META, "meta.csv"),
    Case("partition/metadata-header-only", {"meta.csv": "image,label\n"}, PARTITION_META, "meta.csv"),
    Case("partition/metadata-duplicate-ids", {"meta.csv": META + "no/no0.png,no\n"}, PARTITION_META, "meta.csv",
         ("no/no0.png",)),
    Case("partition/metadata-missing-column", {"meta.csv": META}, PARTITION_META.replace("image ", "image_id "),
         "meta.csv", ("image_id",)),
    Case("partition/metadata-not-utf8", {"meta.csv": latin1(META + "yes/yes2.png,l\xe9sion\n")}, PARTITION_META,
         "meta.csv", ("UTF-8",)),
    Case("partition/missing-data-root", {}, "medclf partition --data-root nowhere --out out --quiet", "nowhere"),
    Case("partition/data-root-is-a-file", {"afile": "x"}, "medclf partition --data-root afile --out out --quiet",
         "afile"),
    Case("partition/label-map-json-wrong-type", {"map.json": ["no", "yes"]}, PARTITION_DIR + " --label-map map.json",
         "map.json"),
    Case("partition/label-map-json-truncated", {"map.json": '{"no": "neg", '}, PARTITION_DIR + " --label-map map.json",
         "map.json"),
    Case("partition/label-map-csv-one-column", {"map.csv": "from\nno\n"}, PARTITION_DIR + " --label-map map.csv",
         "map.csv"),
    Case("partition/other-seed-over-existing-splits", {}, "medclf partition --data-root data --out part --val 0.25 "
         "--test 0.25 --seed 1 --quiet", "splits.csv"),
    # ---- organize: splits.csv and partition.json
    Case("organize/splits-0-byte", {"part/splits.csv": b""}, ORGANIZE, "splits.csv"),
    Case("organize/splits-header-only", {"part/splits.csv": HEADER}, ORGANIZE, "splits.csv"),
    Case("organize/splits-duplicate-paths", {"part/splits.csv": lambda t: t + t.splitlines()[1] + "\n"},
         ORGANIZE, "splits.csv", ("more than once",)),
    Case("organize/splits-missing-column", {"part/splits.csv": edit_csv(drop_column("label_index"))}, ORGANIZE,
         "splits.csv", ("label_index",)),
    Case("organize/splits-unknown-split", {"part/splits.csv": edit_csv(set_first("split", "training"))}, ORGANIZE,
         "splits.csv", ("training",)),
    Case("organize/splits-not-utf8", {"part/splits.csv": lambda t: latin1(t + "no/x.png,n\xe9,0,train,g\n")},
         ORGANIZE, "splits.csv", ("UTF-8",)),
    Case("organize/image-missing", {"data/yes/yes3.png": None}, ORGANIZE, "yes3.png"),
    Case("organize/splits-folder-without-splits", {"empty": DIR}, ORGANIZE.replace("part/splits.csv", "empty"),
         "empty"),
    Case("organize/partition-json-wrong-type", {"part/partition.json": ["no", "yes"]}, ORGANIZE, "partition.json"),
    Case("organize/partition-json-classes-wrong-type", {"part/partition.json": edit_json(
        lambda o: {**o, "classes": "no,yes"})}, ORGANIZE, "partition.json", ("classes",)),
    Case("organize/label-index-out-of-range", {"part/splits.csv": edit_csv(set_first("label_index", "7"))},
         ORGANIZE, "splits.csv"),
    # ---- train
    Case("train/truncated-images", {"data/yes/*": truncate}, TRAIN, "data/yes/yes", ("truncated",)),
    Case("train/text-saved-as-jpg", {"data/yes/scan.jpg": "GIF89a, but text", "part/splits.csv": edit_csv(
        set_first("path", "yes/scan.jpg", **in_split("train")))}, TRAIN, "scan.jpg", ("not an image",)),
    Case("train/missing-data-root", {}, TRAIN + " --data-root nowhere", "nowhere"),
    Case("train/weights-not-a-checkpoint", {"w.pt": "not a checkpoint"},
         TRAIN.replace("-weights none", "-weights w.pt"), "w.pt"),
    Case("train/label-index-out-of-range", {"part/splits.csv": edit_csv(set_first("label_index", "7",
                                                                                  **in_split("train")))},
         TRAIN, "splits.csv"),
    Case("train/label-disagrees-with-index", {"part/splits.csv": edit_csv(set_first(
        "label_index", "1", where=lambda r: r["label"] == "no"))}, TRAIN, "splits.csv"),
    Case("train/resume-config-wrong-type", {"out/r/config.json": ["arguments"]}, TRAIN + " --resume",
         "config.json", copies={"run": "out/r"}),
    # ---- test
    Case("test/run-without-best-pt", {"run/best.pt": None}, TEST, "best.pt"),
    Case("test/best-pt-not-a-checkpoint", {"run/best.pt": "text, not torch"}, TEST, "best.pt"),
    Case("test/empty-run-folder", {"empty": DIR}, TEST.replace("run run", "run empty"), "empty"),
    Case("test/config-json-wrong-type", {"run/config.json": [1, 2]}, TEST, "config.json"),
    Case("test/text-saved-as-png", {"data/*/*": "this is not an image"}, TEST, "data/", ("not an image",)),
    Case("test/val-split-emptied", {"part/splits.csv": edit_csv(drop_val_and_first_test)},
         TEST + " --splits part/splits.csv", "splits.csv"),
    Case("test/other-splits-with-train-images", {"other/splits.csv": edit_csv(
        lambda rows: [{**r, "split": "test"} if r["split"] == "train" else r for r in rows])},
        TEST + " --splits other/splits.csv", "splits.csv", copies={"part": "other"}),
    # ---- report
    Case("report/predictions-0-byte", {PREDS: b""}, REPORT, "predictions_test.json"),
    Case("report/predictions-wrong-types", {PREDS: predictions(labels="0,0,1,1")}, REPORT, "predictions_test.json",
         ("labels",)),
    Case("report/predictions-unequal-lengths", {PREDS: predictions(labels=[0, 0, 1])}, REPORT,
         "predictions_test.json"),
    Case("report/predictions-nan-strings", {PREDS: predictions(probabilities=NAN_ROW)}, REPORT,
         "predictions_test.json"),
    Case("report/probabilities-above-1", {PREDS: predictions(probabilities=ABOVE_1)}, REPORT,
         "predictions_test.json", ("outside [0, 1]",)),
    Case("report/predictions-not-utf8", {PREDS: lambda t: latin1(t.replace('"no"', '"n\xe9"'))}, REPORT,
         "predictions_test.json", ("UTF-8",)),
    Case("report/predictions-is-a-directory", {PREDS: DIR}, REPORT, "predictions_test.json"),
    Case("report/config-json-wrong-type", {"run/config.json": [1]}, REPORT, "config.json"),
    # ---- compare
    Case("compare/other-without-predictions", {"other": DIR}, COMPARE, "other"),
    Case("compare/other-unequal-lengths", {"other/predictions_test.json": predictions(paths=["a.png"])},
         COMPARE, "other", copies={"run": "other"}),
    Case("compare/other-wrong-json-type", {"other/predictions_test.json": "[1, 2, 3]"}, COMPARE, "other",
         copies={"run": "other"}),
    Case("compare/other-truncated", {"other/predictions_test.json": lambda t: t[:40]}, COMPARE, "other",
         copies={"run": "other"}),
    # ---- study
    Case("study/yaml-syntax-error", {"study.yaml": "name: s\ndata: {root: data\n"}, STUDY, "study.yaml"),
    Case("study/unknown-top-level-key", {"study.yaml": STUDY_OK + "trian: {epochs: 2}\n"}, STUDY, "study.yaml",
         ("trian",)),
    Case("study/wrong-type", {"study.yaml": STUDY_OK.replace("epochs: 1", "epochs: two")}, STUDY, "study.yaml"),
    Case("study/is-a-directory", {"study.yaml": DIR}, STUDY, "study.yaml", ("folder",)),
    Case("study/not-utf8", {"study.yaml": latin1(STUDY_OK + "# caf\xe9\n")}, STUDY, "study.yaml", ("UTF-8",)),
    Case("study/arch-typo-dry-run", {"study.yaml": STUDY_OK.replace("epochs: 1", "epochs: 1, arch: densenet12")},
         STUDY + " --dry-run", "study.yaml"),
    # ---- seed scripts
    Case("seed/partition-datasets-missing-dir", {}, "partition/partition_datasets.py -proj_dir nowhere", "nowhere",
         ("not found",)),
    Case("seed/train-class-idx-not-a-number", {"seed/csv/train.csv": lambda t: t + "yes0.png,one\n"}, SEED_TRAIN,
         "train.csv", ("class_idx",)),
    Case("seed/train-csv-0-byte", {"seed/csv/val.csv": b""}, SEED_TRAIN, "val.csv"),
    Case("seed/test-config-wrong-type", {"seed/results/medclf_m/config.json": {"classes": 2}}, SEED_TEST,
         "config.json"),
    Case("seed/calc-probabilities-above-1", {"p.json": predictions(probabilities=ABOVE_1)}, CALC, "p.json",
         ("outside [0, 1]",)),
    Case("seed/calc-nan-strings", {"p.json": predictions(probabilities=NAN_ROW)}, CALC, "p.json"),
    Case("seed/calc-directory", {"p.json": DIR}, CALC, "p.json"),
    Case("seed/calc-not-utf8", {"p.json": latin1(json.dumps(predictions(classes=["n\xe9", "yes"]),
                                                            ensure_ascii=False))}, CALC, "p.json", ("UTF-8",)),
    Case("seed/compare-unequal-lengths", {"p.json": predictions(labels=[0, 0, 1])}, COMPARE_R, "p.json"),
    Case("seed/compare-0-byte", {"p.json": b""}, COMPARE_R, "p.json"),
]


def run_case(case, base, work, commands):
    """Copy the workspace to `work`, break it as the case says, run the command (None: no Rscript)."""
    if case.command.startswith("R/") and shutil.which("Rscript") is None:
        return None
    copy_workspace(base, work)
    for source, target in case.copies.items():
        shutil.copytree(work / source, work / target)
    apply_setup(work, case.setup)
    return run_hashed(work, command(case.command, commands))


@pytest.fixture(scope="module")
def outcomes(base, request, tmp_path_factory):
    """Every selected case, run two or more at a time: each is a command in its own folder (a fork of
    a process that has imported torch already: preloaded_commands.py)."""
    module = sys.modules[__name__]
    selected = [item.callspec.params["case"] for item in request.session.items
                if item.module is module and "case" in getattr(getattr(item, "callspec", None), "params", {})]
    root = tmp_path_factory.mktemp("malformed_cases")
    works = {case.id: root / case.id.replace("/", "__") for case in selected}
    with PreloadedCommands(ENV, str(root)) as commands, \
            ThreadPoolExecutor(max_workers=max(2, min(4, os.cpu_count() or 2))) as pool:
        results = pool.map(lambda case: run_case(case, base, works[case.id], commands), selected)
        return dict(zip((case.id for case in selected), results))


def _param(case):
    return pytest.param(case, id=case.id)


def test_the_table_covers_every_command():
    assert len(CASES) >= 40 and len({c.id for c in CASES}) == len(CASES)
    tools = {c.command.split()[1] if c.command.startswith("medclf ") else c.command.split()[0] for c in CASES}
    assert tools == {"partition", "organize", "train", "test", "report", "compare", "study",
                     "partition/partition_datasets.py", "python/train_torchvision.py", "python/test_torchvision.py",
                     "R/calc_model_performance.R", "R/compare_models.R"}


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_malformed_input_is_refused_cleanly(case, outcomes):
    if outcomes[case.id] is None:
        pytest.skip("Rscript not on PATH")
    assert_refused_cleanly(outcomes[case.id], case.names, case.expect)
