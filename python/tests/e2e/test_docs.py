"""Documentation that cannot drift: every command block in README.md and docs/*.md runs.

One test case per doc file (a new doc file is picked up by the glob). Its ```bash / ```sh blocks
run in order, one logical command at a time (backslash continuations and multi-line compound
commands are joined until `bash -n` accepts them), in a scratch copy of the repository root:

    TMP/repo/<every tracked top-level entry>  -> symlink to the checkout (studies/, scripts/, ...)
    TMP/repo/results/                            empty: outputs land here, never in the checkout
    TMP/shared/data/brain_mri/                the real ../shared/data/brain_mri (253 images), as folders
                                              of links to its files: a page that copies the folder and
                                              moves the copy's images (organize --mode move) moves links
    TMP/shared/data/ham10000_dev/             a lesion-whole subset of the real one (ham_subset below:
                                              about 30 images per diagnosis and every image a page names)
    TMP/bin/{medclf,python,python3}              run the checked-out package with this interpreter: `medclf`
                                              and `python X.py` as forks of a process that has already
                                              imported torch (preloaded_commands.py; 0.2 s instead of 3 s each)

```powershell / ```ps1 / ```pwsh blocks run with `pwsh` where it exists (skipped, with the reason
printed, where it does not). An untagged fence whose first line is a command fails: tag it ```bash
to run it or ```text for a synopsis or an output example.

The settings are shrunk by rewriting the command's words before running it (REWRITES, SET_SHRINK
and ADDED below; the failure message shows the original and the rewritten command):

| in the documented command                  | runs as                                            |
|--------------------------------------------|----------------------------------------------------|
| --img-size N, --epochs N, --patience N      | --img-size 32, --epochs 1, --patience 1            |
| --n-per-class N, --boot N                   | --n-per-class 8, --boot 200                        |
| --folds K, --repeats R (partition, cv)      | --folds 2, --repeats 1                             |
| --C GRID (medclf probe)                     | --C 0.01 (one value: no grid search)               |
| -num_epochs N, -img_shape/-img_size 3 H W   | -num_epochs 1, -img_shape/-img_size 3 32 32 (seed-002 scripts) |
| medclf train, cv, crop, embed (without --threads) | + --threads 1 --no-progress                |
| medclf lr-find                              | + --threads 1 --no-progress --steps 30 where absent |
| medclf study FILE, medclf sweep FILE         | + --set train.epochs=1 train.img-size=32 train.patience=1 train.threads=1 |
| --trials N (medclf sweep)                   | --trials 2                                         |
| --set train.epochs=N (and the keys above)   | the shrunk value                                   |
| medclf demo / bash scripts/demo.sh          | + --n-per-class 8 --epochs 1 --img-size 32 where absent |
| benchmarks/duplicates.py                    | + --max-per-dataset 40 --n-speed 200 where absent; --n-speed N -> 200 |
| benchmarks/serve_load.py                    | + --seconds 3 where absent; --seconds N -> 3       |
| benchmarks/cache_build.py                   | + --limit 40 --sizes 32 where absent               |
| benchmarks/recipes_ablation.py              | --configs plain, --seeds 0; + --threads 1 --epochs 1 --img-size 32 where absent |
| --swa-epochs N (medclf train)               | --swa-epochs 1                                     |
| bash scripts/test.sh ...                    | bash scripts/setup.sh (the test suite cannot run itself from inside itself) |

The environment: OMP/MKL threads 1, no bytecode, no progress bars, and VIRTUAL_ENV = TMP, so
scripts/setup.sh uses TMP/bin/python: the interpreter running the tests, except that it refuses
`-m pip` (setup then checks that environment is up to date and never installs anything from here;
where it is not, the test fails with setup's message).
"""

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import REPO, SHARED_DATA
from preloaded_commands import PreloadedCommands

pytestmark = pytest.mark.slow  # runs every documented command

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
BASH_LANGS = {"bash", "sh", "shell"}
PWSH_LANGS = {"powershell", "ps1", "pwsh"}
COMMAND_WORDS = {"medclf", "python", "python3", "bash", "sh", "Rscript", "pwsh", "export", "cd"}
OUTPUT_DIRS = {"results"}  # tracked but holding outputs: an empty folder in the scratch copy
COMMAND_TIMEOUT_S = 600

# option -> the values it runs with (for `--opt V` and `--opt=V`), in medclf and the seed-002 scripts
REWRITES = {
    "--img-size": ["32"], "--epochs": ["1"], "--patience": ["1"], "--n-per-class": ["8"], "--boot": ["200"],
    "-num_epochs": ["1"], "-img_shape": ["3", "32", "32"], "-img_size": ["3", "32", "32"],
    "--n-speed": ["200"], "--seconds": ["3"], "--trials": ["2"], "--folds": ["2"], "--repeats": ["1"], "--C": ["0.01"],
    "--swa-epochs": ["1"], "--seeds": ["0"], "--configs": ["plain"], "--n": ["4"],
}
# `medclf study|sweep --set KEY=V`: the shrunk value of each key (added where the command lacks it)
SET_SHRINK = {"train.epochs": "1", "train.img-size": "32", "train.patience": "1", "train.threads": "1"}
# medclf subcommand or Python script -> options added where absent
ADDED = {
    "train": [["--threads", "1"], ["--no-progress"]],
    "cv": [["--threads", "1"], ["--no-progress"]],
    "crop": [["--threads", "1"], ["--no-progress"]],
    "embed": [["--threads", "1"], ["--no-progress"]],
    "lr-find": [["--threads", "1"], ["--no-progress"], ["--steps", "30"]],
    "demo": [["--n-per-class", "8"], ["--epochs", "1"], ["--img-size", "32"]],
    "benchmarks/duplicates.py": [["--max-per-dataset", "40"], ["--n-speed", "200"]],
    "benchmarks/serve_load.py": [["--seconds", "3"]],
    "benchmarks/clustered_report_speed.py": [["--repeats", "1"]],
    "benchmarks/cache_build.py": [["--limit", "40"], ["--sizes", "32"]],
    "benchmarks/recipes_ablation.py": [["--threads", "1"], ["--configs", "plain"], ["--epochs", "1"], ["--img-size", "32"]],
}
# scripts whose extra arguments go to a medclf subcommand (so they get that subcommand's rewrites)
SCRIPT_SUBCOMMAND = {"scripts/demo.sh": "demo"}
# scripts replaced by another command, with the reason
REPLACED_SCRIPTS = {
    "scripts/test.sh": (["bash", "scripts/setup.sh"],
                        "runs the whole test suite, this test included: only its setup step runs here"),
}
STATE_COMMAND = r"^((export\s+)?[A-Za-z_]\w*=|cd\s|source\s|\.\s)"  # replayed before each later command
SHELL_OPERATORS = {"|", "||", "&", "&&", ";"}  # words between them form one simple command


@dataclass
class Block:
    doc: str
    line: int  # of the opening fence
    lang: str
    text: str
    commands: list = field(default_factory=list)


class DocError(Exception):
    """A doc problem found before running anything (untagged command block, unparsable command)."""


def fenced_blocks(text, doc):
    """Every fenced code block of a markdown text: Block(doc, line, lang, text)."""
    blocks, current, fence = [], None, None
    for number, line in enumerate(text.splitlines(), start=1):
        match = re.match(r"^\s*(`{3,}|~{3,})\s*([\w+-]*)", line)
        if current is None and match:
            fence, current = match.group(1), Block(doc, number, match.group(2).lower(), "")
        elif current is not None and line.strip().startswith(fence) and not line.strip().strip(fence[0]):
            blocks.append(current)
            current = None
        elif current is not None:
            current.text += line + "\n"
    if current is not None:
        raise DocError(f"{doc}:{current.line}: a code fence is never closed")
    return blocks


def logical_commands(block):
    """Split a block into commands: join continuation lines, and lines until `bash -n` accepts them."""
    commands, pending = [], ""
    for line in block.text.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending += line + "\n"
        if line.rstrip().endswith("\\"):
            continue
        if _bash_accepts(pending):
            commands.append(pending.strip())
            pending = ""
    if pending:
        raise DocError(f"{block.doc}:{block.line}: this command cannot be parsed by bash:\n{pending}")
    return commands


def _bash_accepts(script):
    return subprocess.run(["bash", "-n", "-c", script], capture_output=True).returncode == 0


def tokenize(command, where):
    """The command's words, quotes kept (so $VARS and $(...) run as written), comment dropped."""
    lexer = shlex.shlex(command, posix=False)
    lexer.whitespace_split = True
    lexer.commenters = ""  # as in bash, only a word that starts with # starts a comment
    try:
        words = list(lexer)
    except ValueError as err:
        raise DocError(f"{where}: cannot split this command into words ({err}):\n{command}") from None
    return words[:next((i for i, w in enumerate(words) if w.startswith("#")), len(words))]


def split_simple(tokens):
    """[[words], operator, [words], ...]: the simple commands between shell operators."""
    parts, words = [], []
    for token in tokens:
        if token in SHELL_OPERATORS:
            parts += [words, token]
            words = []
        else:
            words.append(token)
    return parts + [words]


def shrink_options(words):
    out, i = [], 0
    while i < len(words):
        word = words[i]
        name, eq, value = word.partition("=")
        if name in REWRITES and eq:
            out.append(f"{name}={REWRITES[name][0]}")
        elif word in REWRITES:
            new = REWRITES[word]
            out += [word, *new]
            i += len(new)
        elif word == "--set" and i + 1 < len(words) and words[i + 1].partition("=")[0] in SET_SHRINK:
            key = words[i + 1].partition("=")[0]
            out += [word, f"{key}={SET_SHRINK[key]}"]
            i += 1
        else:
            out.append(word)
        i += 1
    return out


def add_missing(words, subcommand):
    words = list(words)
    for option in ADDED.get(subcommand, []):
        if option[0] not in words and not any(w.startswith(option[0] + "=") for w in words):
            words += option
    if subcommand in ("study", "sweep"):
        present = {words[i + 1].partition("=")[0] for i, w in enumerate(words[:-1]) if w == "--set"}
        for key, value in SET_SHRINK.items():
            if key not in present:
                words += ["--set", f"{key}={value}"]
    return words


def rewrite_simple(words):
    """Shrink one simple command; returns (words, note) where note says why it was replaced."""
    start = 0
    while start < len(words) and re.match(r"^[A-Za-z_]\w*=", words[start]):
        start += 1  # VAR=value prefixes
    env, words = words[:start], words[start:]
    if not words:
        return env, None
    if words[0] in ("bash", "sh") and len(words) > 1:
        script = words[1].removeprefix("./")
        if script in REPLACED_SCRIPTS:
            replacement, reason = REPLACED_SCRIPTS[script]
            return env + replacement, f"`{' '.join(words)}` replaced: it {reason}"
        if script in SCRIPT_SUBCOMMAND:
            return env + add_missing(shrink_options(words), SCRIPT_SUBCOMMAND[script]), None
    if words[0] == "medclf" and len(words) > 1:
        return env + add_missing(shrink_options(words), words[1]), None
    script = next((w.removeprefix("./") for w in words[:2] if w.endswith(".py")), None)
    return env + add_missing(shrink_options(words), script), None


def rewrite(command, where):
    """The command as it runs in the test, and the notes on replaced commands. Line by line, so a
    comment ends at its line; a quote that spans lines keeps the whole command as one piece."""
    joined = command.replace("\\\n", " ")
    try:
        lines = [tokenize(line, where) for line in joined.splitlines()]
    except DocError:
        lines = [tokenize(joined, where)]
    out, notes = [], []
    for words in lines:
        pieces = []
        for part in split_simple(words):
            if isinstance(part, str):
                pieces.append(part)
                continue
            part, note = rewrite_simple(part)
            notes += [note] if note else []
            pieces.append(" ".join(part))  # the words keep their quotes (non-POSIX split)
        out.append(" ".join(p for p in pieces if p))
    return "\n".join(line for line in out if line), notes


def check_untagged(block):
    first = next((line.split()[0] for line in block.text.splitlines() if line.strip()), "")
    if not block.lang and first in COMMAND_WORDS:
        raise DocError(f"{block.doc}:{block.line}: an untagged code block starts with a command "
                       f"({first}): tag it ```bash to run it in the docs test, or ```text for a "
                       f"synopsis or an output example:\n{block.text}")


def parse_doc(text, doc):
    """The doc's blocks that run, with their commands; DocError for any unparsable command."""
    runnable = []
    for block in fenced_blocks(text, doc):
        check_untagged(block)
        if block.lang in BASH_LANGS:
            block.commands = logical_commands(block)
            runnable.append(block)
        elif block.lang in PWSH_LANGS:
            block.commands = [block.text.strip()]
            runnable.append(block)
    return runnable


def link_tree(source, out):
    """`out` as a copy of the folder `source` whose files are links to the originals."""
    for folder, _, files in os.walk(source):
        target = out / Path(folder).relative_to(source)
        target.mkdir(parents=True, exist_ok=True)
        for name in files:
            (target / name).symlink_to(Path(folder) / name)


def data_state():
    """(path, size, mtime) of every file of the shared data: a page must leave it as it was."""
    return {(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in SHARED_DATA.rglob("*") if p.is_file()}


HAM_IMAGES_PER_DX = 30  # of 1,983: the pages' HAM10000 commands run on about 230 images


def ham_subset(source, out, per_dx=HAM_IMAGES_PER_DX):
    """A smaller HAM10000 development set for the documented commands, real images all the same:
    per diagnosis, whole lesions in lesion_id order until `per_dx` images, plus the lesions of every
    image a page names (ISIC_...). The metadata CSV keeps only their rows; images are links."""
    import csv

    named = {m for doc in DOCS for m in re.findall(r"ISIC_\d{7}", doc.read_text(encoding="utf-8"))}
    with open(source / "HAM10000_metadata.csv", newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        fields, rows = reader.fieldnames, list(reader)
    lesions = {}
    for row in rows:
        lesions.setdefault(row["lesion_id"], []).append(row)
    keep, taken = {r["lesion_id"] for r in rows if r["image_id"] in named}, {}
    for lesion in sorted(lesions):
        dx = lesions[lesion][0]["dx"]
        if taken.get(dx, 0) < per_dx:
            keep.add(lesion)
        if lesion in keep:
            taken[dx] = taken.get(dx, 0) + len(lesions[lesion])
    (out / "images").mkdir(parents=True)
    kept = [r for r in rows if r["lesion_id"] in keep]
    with open(out / "HAM10000_metadata.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(kept)
    for row in kept:
        for image in (source / "images").glob(row["image_id"] + ".*"):
            (out / "images" / image.name).symlink_to(image)
    for extra in source.iterdir():
        if extra.name not in ("images", "HAM10000_metadata.csv"):
            (out / extra.name).symlink_to(extra)
    return len(kept)


def make_scratch(tmp, commands):
    """TMP/repo mirroring the checkout's root, TMP/shared/data, and TMP/bin with the CLI shims
    (`medclf` and `python X.py` run through `commands`, a PreloadedCommands)."""
    repo = tmp / "repo"
    repo.mkdir()
    listed = subprocess.run(["git", "-C", str(REPO), "ls-files"], capture_output=True, text=True)
    tops = {line.split("/")[0] for line in listed.stdout.splitlines()} if listed.returncode == 0 else \
        {p.name for p in REPO.iterdir() if p.name not in {".git", ".venv"}}
    for name in sorted(tops):
        if name in OUTPUT_DIRS:
            (repo / name).mkdir()
        elif (REPO / name).exists():
            (repo / name).symlink_to(REPO / name)
    (tmp / "shared" / "data").mkdir(parents=True)
    for dataset in sorted(SHARED_DATA.iterdir()):
        if dataset.name == "ham10000_dev":
            ham_subset(dataset, tmp / "shared" / "data" / dataset.name)
        elif dataset.is_dir():
            link_tree(dataset, tmp / "shared" / "data" / dataset.name)
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    no_pip = ('if [ "$1" = -m ] && [ "$2" = pip ]; then echo "docs test: refusing to run pip here; '
              'set up this checkout first: bash scripts/setup.sh" >&2; exit 1; fi\n')
    commands.write_shims(bin_dir, no_pip_line=no_pip)
    return repo, bin_dir


def scratch_env(bin_dir):
    env = dict(os.environ)
    env.update({
        "PATH": f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
        "PYTHONPATH": str(REPO / "python") + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""),
        "VIRTUAL_ENV": str(bin_dir.parent),  # setup.sh's Python: the shim, which runs no pip
        "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1",
        "MPLBACKEND": "Agg", "TQDM_DISABLE": "1",
    })
    for name in ("CONDA_PREFIX", "MEDCLF_VENV"):
        env.pop(name, None)
    return env


@pytest.fixture(scope="module")
def preloaded(tmp_path_factory):
    """One server per test process that has imported torch, medclf and the rest: each documented
    `medclf` command is a fork of it (preloaded_commands.py) instead of a new interpreter."""
    scratch = tmp_path_factory.mktemp("docs_preloaded")
    with PreloadedCommands(scratch_env(scratch), str(scratch)) as commands:
        yield commands


def checkout_files():
    """Untracked and ignored files in the checkout (where stray outputs would appear), bytecode aside."""
    status = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--ignored",
                             "--untracked-files=all"], capture_output=True, text=True)
    return {line[3:] for line in status.stdout.splitlines()
            if line[:2] in ("??", "!!") and "__pycache__" not in line}


def failure(block, command, rewritten, notes, proc):
    tail = "\n".join((proc.stderr or "").strip().splitlines()[-25:])
    out_tail = "\n".join((proc.stdout or "").strip().splitlines()[-10:])
    return (f"{block.doc}: a command of the ```{block.lang} block at line {block.line} failed "
            f"(exit {proc.returncode}).\nblock:\n{block.text}\ncommand:   {command}\n"
            f"rewritten: {rewritten}\n" + "".join(f"note: {n}\n" for n in notes)
            + f"stdout tail:\n{out_tail}\nstderr tail:\n{tail}")


def run_block(block, repo, env, exports):
    """Run each command of a block in repo; returns a failure message or None."""
    for command in block.commands:
        started = time.monotonic()
        if block.lang in PWSH_LANGS:
            proc = subprocess.run(["pwsh", "-NoProfile", "-Command", command], cwd=repo, env=env,
                                  capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
            rewritten, notes = command, []
        else:
            rewritten, notes = rewrite(command, f"{block.doc}:{block.line}")
            script = "set -eo pipefail\n" + "".join(e + "\n" for e in exports) + rewritten
            try:
                proc = subprocess.run(["bash", "-c", script], cwd=repo, env=env, capture_output=True,
                                      text=True, timeout=COMMAND_TIMEOUT_S)
            except subprocess.TimeoutExpired as err:
                return f"{block.doc}:{block.line}: `{rewritten}` ran past {COMMAND_TIMEOUT_S} s\n{err.stderr}"
            if re.match(STATE_COMMAND, rewritten):
                exports.append(rewritten)  # variables and cd stay in effect for the doc's later commands
        print(f"[docs] {block.doc}:{block.line}: {rewritten}" + "".join(f"  ({n})" for n in notes)
              + f"  [{time.monotonic() - started:.1f} s]")
        if proc.returncode != 0:
            return failure(block, command, rewritten, notes, proc)
    return None


@pytest.mark.parametrize("doc", DOCS, ids=[p.relative_to(REPO).as_posix() for p in DOCS])
def test_every_command_block_runs(doc, tmp_path, preloaded):
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} not present: the documented commands run on it (set MEDCLF_SHARED_DATA)")
    blocks, problem = [], None
    try:
        blocks = parse_doc(doc.read_text(encoding="utf-8"), doc.relative_to(REPO).as_posix())
    except DocError as err:
        problem = str(err)
    if problem:
        pytest.fail(problem, pytrace=False)
    skipped = [b for b in blocks if b.lang in PWSH_LANGS and shutil.which("pwsh") is None]
    for block in skipped:
        print(f"[docs] {block.doc}:{block.line}: ```{block.lang} block skipped: pwsh is not installed")
    repo, bin_dir = make_scratch(tmp_path, preloaded)
    env, exports, before, start = scratch_env(bin_dir), [], checkout_files(), time.monotonic()
    data_before = data_state()
    for block in blocks:
        if block not in skipped:
            message = run_block(block, repo, env, exports)
            if message:
                pytest.fail(message, pytrace=False)
    print(f"[docs] {doc.name}: {sum(len(b.commands) for b in blocks)} commands in {time.monotonic() - start:.0f} s")
    stray = checkout_files() - before
    assert not stray, f"{doc.name}'s commands wrote into the checkout instead of the scratch copy: {sorted(stray)}"
    changed = sorted(data_before ^ data_state())
    assert not changed, f"{doc.name}'s commands changed the shared data {SHARED_DATA}: {changed[:5]}"
    if skipped and len(skipped) == len(blocks):
        pytest.skip(f"{doc.name}: only ```powershell blocks, and pwsh is not installed")


# The harness itself, on hand-written markdown: the rewrites and the parse errors.

def test_rewrite_table_shrinks_documented_settings():
    command = ("medclf train --splits s.csv --img-size 128 --epochs=50 --patience 5 \\\n"
               "    --out results --run-name r   # comment")
    rewritten, notes = rewrite(command, "x")
    assert rewritten == ("medclf train --splits s.csv --img-size 32 --epochs=1 --patience 1 --out results "
                         "--run-name r --threads 1 --no-progress")
    assert notes == []
    study, _ = rewrite("medclf study studies/a.yaml --set train.epochs=2 --set train.img-size=64", "x")
    assert study == ("medclf study studies/a.yaml --set train.epochs=1 --set train.img-size=32 "
                     "--set train.patience=1 --set train.threads=1")
    swept, _ = rewrite("medclf sweep studies/a.yaml --trials 12", "x")
    assert swept == ("medclf sweep studies/a.yaml --trials 2 --set train.epochs=1 --set train.img-size=32 "
                     "--set train.patience=1 --set train.threads=1")
    seed, _ = rewrite("python python/train_torchvision.py -num_epochs 256 -img_shape 3 224 224 --use_GPU", "x")
    assert seed == "python python/train_torchvision.py -num_epochs 1 -img_shape 3 32 32 --use_GPU"
    demo, _ = rewrite("bash scripts/demo.sh --epochs 3 && echo ok", "x")
    assert demo == "bash scripts/demo.sh --epochs 1 --n-per-class 8 --img-size 32 && echo ok"
    test_sh, notes = rewrite("bash scripts/test.sh -k x", "x")
    assert test_sh == "bash scripts/setup.sh" and "replaced" in notes[0]
    load, _ = rewrite("python benchmarks/serve_load.py --run r --seconds 60", "x")
    assert load == "python benchmarks/serve_load.py --run r --seconds 3"
    quoted, _ = rewrite("medclf partition --label-map 'mel=m,*=b' --out \"$OUT/a b\"", "x")
    assert quoted == "medclf partition --label-map 'mel=m,*=b' --out \"$OUT/a b\""


def test_blocks_and_commands_are_found_in_order():
    text = ("# t\n```bash\nmedclf a \\\n  --x 1\n\n# note\nfor f in a b; do\n  echo $f\ndone\n```\n"
            "```text\nmedclf synopsis [--x]\n```\n~~~sh\nexport A=1\n~~~\n")
    blocks = fenced_blocks(text, "t.md")
    assert [(b.lang, b.line) for b in blocks] == [("bash", 2), ("text", 11), ("sh", 14)]
    assert logical_commands(blocks[0]) == ["medclf a \\\n  --x 1", "for f in a b; do\n  echo $f\ndone"]
    loop, _ = rewrite("for n in 1 2; do  # each\n  medclf train --epochs $n\ndone", "x")
    assert loop == "for n in 1 2; do\nmedclf train --epochs 1 --threads 1 --no-progress\ndone"


@pytest.mark.parametrize("text, message", [
    ("```bash\nmedclf study 'unclosed\n```\n", "cannot be parsed"),
    ("```bash\nif true; then\n```\n", "cannot be parsed"),
    ("```\nmedclf report --run R\n```\n", "untagged code block"),
    ("```bash\necho never closed\n", "never closed"),
])
def test_unparsable_doc_commands_are_refused(text, message):
    with pytest.raises(DocError, match=message):
        parse_doc(text, "t.md")


def test_commands_run_in_the_scratch_copy_with_state_and_clear_failures(tmp_path, preloaded):
    text = ("```bash\nexport WHERE=results\ncd \"$WHERE\"\n"
            "python_file=$(python -c 'import sys; print(sys.executable)')  # a comment\n"
            "test -d ../studies && echo a#b > ../made  # writes TMP/repo/made\n```\n"
            "```sh\nmedclf partition --data-root no_such_folder --out out/x\n```\n")
    blocks = parse_doc(text, "t.md")
    repo, bin_dir = make_scratch(tmp_path, preloaded)
    env, exports = scratch_env(bin_dir), []
    assert run_block(blocks[0], repo, env, exports) is None  # export and cd carried to later commands
    assert (repo / "made").read_text() == "a#b\n" and not (REPO / "made").exists()
    shim = subprocess.run(["bash", "-c", "python -c 'import medclf; print(medclf.__file__)'"], cwd=repo,
                          env=env, capture_output=True, text=True).stdout.strip()
    assert Path(shim).resolve() == (REPO / "python" / "medclf" / "__init__.py").resolve()
    pip = subprocess.run(["bash", "-c", '"$VIRTUAL_ENV/bin/python" -m pip install nothing'], cwd=repo, env=env,
                         capture_output=True, text=True)
    assert pip.returncode == 1 and "refusing to run pip" in pip.stderr  # setup.sh can never install from here
    message = run_block(blocks[1], repo, env, exports)
    assert "block at line 7" in message and "rewritten: medclf partition --data-root no_such_folder" in message
    assert "no_such_folder" in message.split("stderr tail:")[1]  # medclf's own error line is shown
