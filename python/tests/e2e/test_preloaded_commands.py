"""The preloaded command server (preloaded_commands.py) that the docs and malformed-input tests run
their commands through: a command run through it must behave as the same command in a new process."""

import os
import subprocess
import sys

import pytest
from preloaded_commands import PreloadedCommands

SCRIPT = """import os, sys
import medclf
print(sys.argv[1:], __name__, os.getcwd(), os.environ.get("PROBE"), sys.stdin.read().strip())
print("to stderr", file=sys.stderr)
leaked = getattr(medclf, "_probe_state", None)
medclf._probe_state = "set by an earlier command"
print("leak:", leaked)
sys.exit(int(sys.argv[1]))
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("preloaded")
    with PreloadedCommands({**dict(os.environ), "OMP_NUM_THREADS": "1"}, str(folder)) as commands:
        if commands.server is None:
            pytest.skip("MEDCLF_TEST_PRELOAD=0: commands run as their own processes")
        yield commands


def _both(server, kind, target, args, cwd, env, stdin=""):
    direct = [sys.executable, *(["-m", target] if kind == "module" else [target]), *args]
    return [subprocess.run(argv, cwd=cwd, env=env, input=stdin, capture_output=True, text=True)
            for argv in (direct, server.argv(kind, target, args))]


def test_a_script_sees_its_argv_cwd_environment_and_stdin_and_exits_with_its_status(server, tmp_path):
    (tmp_path / "probe.py").write_text(SCRIPT)
    env = {**dict(os.environ), "PROBE": "from the caller"}
    direct, forked = _both(server, "script", "probe.py", ["3", "b c"], tmp_path, env, stdin="piped in\n")
    assert forked.returncode == direct.returncode == 3
    assert forked.stdout == direct.stdout
    assert f"['3', 'b c'] __main__ {tmp_path} from the caller piped in" in forked.stdout
    assert forked.stderr == direct.stderr == "to stderr\n"


def test_no_state_passes_from_one_command_to_the_next(server, tmp_path):
    (tmp_path / "probe.py").write_text(SCRIPT)
    for _ in range(2):
        done = subprocess.run(server.argv("script", "probe.py", ["0"]), cwd=tmp_path, capture_output=True, text=True)
        assert done.returncode == 0 and "leak: None" in done.stdout


def test_medclf_errors_and_uncaught_exceptions_look_as_in_a_new_process(server, tmp_path):
    direct, forked = _both(server, "module", "medclf", ["report", "--run", "missing"], tmp_path, dict(os.environ))
    assert forked.returncode == direct.returncode != 0
    assert forked.stderr == direct.stderr and "missing" in forked.stderr
    (tmp_path / "crash.py").write_text("raise ValueError('boom')\n")
    direct, forked = _both(server, "script", "crash.py", [], tmp_path, dict(os.environ))
    assert forked.returncode == direct.returncode == 1
    assert forked.stderr.splitlines()[0] == "Traceback (most recent call last):"
    assert forked.stderr.splitlines()[-1] == direct.stderr.splitlines()[-1] == "ValueError: boom"


def test_a_killed_command_is_reported_not_mistaken_for_success(server, tmp_path):
    (tmp_path / "die.py").write_text("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n")
    done = subprocess.run(server.argv("script", "die.py", []), cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode != 0 and "without an exit status" in done.stderr
