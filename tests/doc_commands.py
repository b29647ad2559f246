"""The doc tests' `torch-badnet ARGS` commands, each in a process forked from one that imported torch once.

A shown command run in bash starts Python and imports torch first: about 2.7 s on a 2-core EPYC, some 70 times
over the docs. Here a server process, started with the doc's environment, imports torch, numpy, h5py and the
command line once; each plain `torch-badnet ARGS` forks it, the child changes to the doc's folder, points its
stdout and stderr at files and runs `torch_badnet.cli.main` as the installed program does (`leave`: flush, then
exit without teardown). The server never runs a torch op, so no thread pool exists when it forks. A command that
is not plain (an environment prefix, a quote, a glob, a pipe or a redirection) runs in bash as before, and so does
every command with TORCH_BADNET_DOC_FORK=0.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import select
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

PLAIN = re.compile(r"torch-badnet(?: [A-Za-z0-9_./=:,+%@-]+)*")  # no shell syntax: the words are the argv
SERVER = r"""
import io, json, os, sys
import h5py, numpy, torch  # what every command pays: once
import matplotlib
import torch_badnet.cli.main as cli
import torch_badnet.convert.keras_h5, torch_badnet.convert.onnx_import, torch_badnet.defense.pipeline

for line in sys.stdin:
    request = json.loads(line)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.chdir(request["cwd"])
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
                target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
                os.dup2(target, fd)
                os.close(target)
            sys.stdin = open(0, encoding="utf-8", closefd=False)
            sys.stdout, sys.stderr = (io.TextIOWrapper(io.FileIO(fd, "w", closefd=False), encoding="utf-8",
                                                       write_through=True, line_buffering=True) for fd in (1, 2))
            sys.argv = ["torch-badnet", *request["argv"]]
            code = cli.main(request["argv"])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            import traceback
            traceback.print_exc()
        finally:
            cli.leave(code)
    _, status = os.waitpid(pid, 0)
    print(os.waitstatus_to_exitcode(status), flush=True)
"""
_servers: dict[tuple, subprocess.Popen[str]] = {}


def plain_argv(command: str) -> list[str] | None:
    """The argv of a plain `torch-badnet ARGS` command, else None (bash runs it)."""
    if os.environ.get("TORCH_BADNET_DOC_FORK") == "0" or not PLAIN.fullmatch(command.strip()):
        return None
    return shlex.split(command)[1:]


def _server(env: dict[str, str]) -> subprocess.Popen[str]:
    key = tuple(sorted(env.items()))
    server = _servers.get(key)
    if server is None or server.poll() is not None:
        server = subprocess.Popen([sys.executable, "-c", SERVER], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  text=True, cwd=tempfile.gettempdir())
        _servers[key] = server
    return server


def run_forked(argv: list[str], cwd: Path, env: dict[str, str], timeout: float,
               merged: bool = False) -> subprocess.CompletedProcess[str]:
    """`torch-badnet *argv` in `cwd` as a child of the server for `env`: its exit status and output (stdout and
    stderr in one stream, as `2>&1` gives, with `merged`)."""
    server = _server(env)
    with tempfile.TemporaryDirectory() as tmp:
        out, err = Path(tmp) / "stdout", Path(tmp) / ("stdout" if merged else "stderr")
        out.touch()
        err.touch()
        server.stdin.write(json.dumps({"argv": argv, "cwd": str(cwd), "stdout": str(out), "stderr": str(err)}) + "\n")
        server.stdin.flush()
        ready, _, _ = select.select([server.stdout], [], [], timeout)
        if not ready:
            server.kill()
            raise subprocess.TimeoutExpired(["torch-badnet", *argv], timeout)
        reply = server.stdout.readline()
        if not reply:
            raise RuntimeError(f"the doc-command server ended (exit {server.wait()}) running torch-badnet {' '.join(argv)}")
        stdout, stderr = out.read_text(encoding="utf-8"), "" if merged else err.read_text(encoding="utf-8")
    return subprocess.CompletedProcess(["torch-badnet", *argv], int(reply), stdout, stderr)


@atexit.register
def _stop_servers() -> None:
    for server in _servers.values():
        if server.poll() is None:
            server.stdin.close()
            server.wait(30)
