"""`python -m alignlab.cli ARGV` many times, without paying torch's imports each time.

`CLIForks(env)` starts one interpreter (this file) with `env`, which imports alignlab's command
line and the modules behind it once (~4 s), then forks a child per command. The child runs
`alignlab.cli` as `__main__` exactly as `python -m` does (`runpy`), with its own stdout,
stderr, working folder and exit status, and ends the way the interpreter would: the exit code
of SystemExit, or the traceback on stderr and code 1 for an uncaught exception.

What a fresh interpreter does differently is import alignlab: compare one command through
`fresh_cli` to catch anything printed at import time.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import runpy
import signal
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

PRELOAD = ("alignlab.preflight", "alignlab.eval.cli", "alignlab.eval.rm_cli", "alignlab.lab.cli")
"""Imported by the server, with every recipe module of `alignlab.cli.RECIPES`."""
CHILD_TIMEOUT_S = 240


@dataclasses.dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def fresh_cli(argv: list[str], env: dict[str, str], cwd: Path) -> Result:
    """`python -m alignlab.cli ARGV` in a new interpreter."""
    done = subprocess.run(
        [sys.executable, "-m", "alignlab.cli", *argv],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=CHILD_TIMEOUT_S,
    )
    return Result(done.returncode, done.stdout, done.stderr)


class CLIForks:
    """A server interpreter that forks one `alignlab.cli` run per `run` call."""

    def __init__(self, env: dict[str, str], preload: tuple[str, ...] = PRELOAD) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="cli_forks_"))
        self.count = 0
        self.server = subprocess.Popen(
            [sys.executable, __file__, *preload],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )

    def run(self, argv: list[str], cwd: Path) -> Result:
        self.count += 1
        out, err = self.folder / f"{self.count}.out", self.folder / f"{self.count}.err"
        request = {"argv": argv, "cwd": str(cwd), "stdout": str(out), "stderr": str(err)}
        self.server.stdin.write(json.dumps(request) + "\n")
        self.server.stdin.flush()
        answer = self.server.stdout.readline()
        if not answer:
            raise RuntimeError("the CLI fork server died")
        return Result(int(answer), out.read_text(), err.read_text())

    def close(self) -> None:
        self.server.stdin.close()
        self.server.wait(timeout=60)


def _child(request: dict) -> int:
    """Run alignlab.cli as __main__ and return the exit code the interpreter would give."""
    stdin = os.open(os.devnull, os.O_RDONLY)  # the server's stdin carries the requests
    os.dup2(stdin, 0)
    os.close(stdin)
    for fd, name in ((1, "stdout"), (2, "stderr")):
        target = os.open(request[name], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(target, fd)
        os.close(target)
    os.chdir(request["cwd"])
    signal.alarm(CHILD_TIMEOUT_S)  # a hung command dies with SIGALRM instead of hanging
    sys.argv = ["alignlab", *request["argv"]]
    # `python -m` runs cli.py as __main__ before anything imports alignlab.cli
    sys.modules.pop("alignlab.cli", None)
    try:
        runpy.run_module("alignlab.cli", run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as exit_:
        if exit_.code is None or isinstance(exit_.code, int):
            code = exit_.code or 0
        else:
            print(exit_.code, file=sys.stderr)
            code = 1
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    return code


def _serve(preload: list[str]) -> None:
    from alignlab.cli import RECIPES

    for name in [*preload, *(module for module, _ in RECIPES.values())]:
        importlib.import_module(name)
    for line in sys.stdin:
        request = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            os._exit(_child(request))
        _, status = os.waitpid(pid, 0)
        print(os.waitstatus_to_exitcode(status), flush=True)


if __name__ == "__main__":
    _serve(sys.argv[1:])
