"""Run `medclf ...` and `python SCRIPT.py ...` in forks of one process that has already imported torch.

A short command spends most of its time importing torch and torchvision (about 3 s of 4 on a 2-core
machine); the docs test runs about 190 such commands and the malformed-input test about 50. A fork
of a process that has imported them starts in milliseconds and then runs what `python -m medclf` or
`python SCRIPT.py` runs (the package's `__main__`, or the script as `__main__`) with the caller's
working directory, environment, stdin/stdout/stderr and exit status. Every command is a fresh fork
of the same preloaded parent, so nothing passes from one command to the next.

What a fork cannot change: settings read once when a library loads (OMP_NUM_THREADS,
MKL_NUM_THREADS, MPLBACKEND, PYTHONPATH, hash randomization) keep the server's values, so the server
is started with the environment its callers use. MEDCLF_TEST_PRELOAD=0 runs every command as its
own process instead (`commands.argv` then returns the plain command line).

    with PreloadedCommands(env) as commands:
        subprocess.run(commands.argv("medclf", ["report", "--run", "r"]), env=env)
        commands.write_shims(bin_dir)   # bin_dir/medclf and bin_dir/python for shell commands

The client side (`python -I -S preloaded_commands.py client SOCKET KIND TARGET ARGS...`) imports only
the standard library, without site-packages, so it starts in about 20 ms.
"""

import json
import os
import socket
import sys

PRELOAD = ("torch", "torchvision", "numpy", "PIL.Image", "matplotlib.pyplot", "medclf.cli",
           "medclf.commands.registry", "medclf.train.training", "medclf.infer.predict", "medclf.evaluate.report")
NO_STATUS = 70  # the exit status the client reports when the command's process ended without one (killed)


def enabled():
    return os.environ.get("MEDCLF_TEST_PRELOAD", "1") != "0"


class PreloadedCommands:
    """The server process (started on enter, stopped with its commands on exit) and its client argv."""

    def __init__(self, env, workdir):
        self.env, self.socket_path, self.server = dict(env), os.path.join(workdir, "preloaded.sock"), None

    def __enter__(self):
        import subprocess
        import time

        if not enabled():
            return self
        self.server = subprocess.Popen([sys.executable, __file__, "serve", self.socket_path], env=self.env,
                                       stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 120
        while not os.path.exists(self.socket_path + ".ready"):
            if self.server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the preloaded command server did not start (exit {self.server.poll()})")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        import signal

        if self.server is not None:
            try:
                os.killpg(self.server.pid, signal.SIGKILL)  # the server and any command still running
            except ProcessLookupError:
                pass
            self.server.wait()

    def argv(self, kind, target, args):
        """The command line that runs `medclf ARGS` (kind "module", target "medclf") or
        `python TARGET ARGS` (kind "script") through the server, or directly when preloading is off."""
        if self.server is None:
            return [sys.executable, *(["-m", target] if kind == "module" else [target]), *args]
        return [sys.executable, "-I", "-S", __file__, "client", self.socket_path, kind, target, *args]

    def write_shims(self, bin_dir, no_pip_line=""):
        """bin_dir/medclf and bin_dir/python(3): `python X.py` goes to the server, any other python call
        (-c, -m pip, ...) runs the interpreter itself."""
        medclf = " ".join(f'"{w}"' for w in self.argv("module", "medclf", [])) + ' "$@"'
        script = " ".join(f'"{w}"' for w in self.argv("script", "$1", [])) + ' "${@:2}"'
        python = (no_pip_line + f'case "$1" in *.py) [ -f "$1" ] && exec {script} ;; esac\n'
                  f'exec "{sys.executable}" "$@"')
        for name, body in {"medclf": f"exec {medclf}", "python": python, "python3": python}.items():
            path = os.path.join(bin_dir, name)
            with open(path, "w") as fh:
                fh.write(f"#!/bin/bash\n{body}\n")
            os.chmod(path, 0o755)


# ------------------------------------------------------------------ the client

def client(socket_path, kind, target, args):
    request = json.dumps({"kind": kind, "target": target, "args": args, "cwd": os.getcwd(),
                          "env": dict(os.environ)}).encode()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(socket_path)
        sent = socket.send_fds(sock, [request], [0, 1, 2])
        sock.sendall(request[sent:])
        sock.shutdown(socket.SHUT_WR)
        reply = b"".join(iter(lambda: sock.recv(64), b""))
    if not reply:
        print(f"preloaded command `{target} {' '.join(args)}` ended without an exit status (killed?)", file=sys.stderr)
        return NO_STATUS
    return int(reply)


# ------------------------------------------------------------------ the server and each command's fork

def serve(socket_path):
    import importlib
    import signal

    for name in PRELOAD:
        importlib.import_module(name)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(socket_path)
    listener.listen(128)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # finished commands are reaped by the kernel
    open(socket_path + ".ready", "w").close()
    while True:
        connection, _ = listener.accept()
        if os.fork() == 0:
            listener.close()
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the command waits for its own subprocesses
            run_command(connection)
        connection.close()


def receive(connection):
    data, fds, _, _ = socket.recv_fds(connection, 1 << 20, 3)
    chunks = [data]
    while chunk := connection.recv(1 << 20):
        chunks.append(chunk)
    return json.loads(b"".join(chunks)), fds


def attach_streams(fds):
    import io

    for target, fd in zip((0, 1, 2), fds):
        os.dup2(fd, target)
        os.close(fd)
    sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False), line_buffering=False)
    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), line_buffering=os.isatty(1), write_through=False)
    sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), line_buffering=True, errors="backslashreplace")
    sys.__stdin__, sys.__stdout__, sys.__stderr__ = sys.stdin, sys.stdout, sys.stderr


def exit_status(code):
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def run_command(connection):
    """In the fork: become the requested command, then report its exit status. Never returns."""
    import atexit
    import runpy
    import threading
    import traceback
    import types

    request, fds = receive(connection)
    attach_streams(fds)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    status = 0
    try:
        if request["kind"] == "module":
            sys.argv = [request["target"], *request["args"]]
            sys.path[0] = os.getcwd()
            runpy.run_module(request["target"], run_name="__main__", alter_sys=True)
        else:
            path = os.path.abspath(request["target"])
            sys.argv = [request["target"], *request["args"]]
            sys.path[0] = os.path.dirname(os.path.realpath(path))
            main = types.ModuleType("__main__")
            main.__file__, main.__builtins__ = path, __builtins__
            sys.modules["__main__"] = main
            with open(path, "rb") as fh:
                code = compile(fh.read(), path, "exec")
            exec(code, main.__dict__)
    except SystemExit as exit_:
        status = exit_status(exit_.code)
    except BaseException:
        traceback.print_exc()
        status = 1
    # What the interpreter does at exit: wait for non-daemon threads, run atexit, flush.
    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    try:
        connection.sendall(str(status).encode())
    finally:
        os._exit(status)


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(sys.argv[2])
    elif sys.argv[1] == "client":
        sys.exit(client(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:]))
