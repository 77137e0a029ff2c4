"""Child processes of the reliability tests: what the parents and the workers share.

The parent's side: :func:`child_env` (the environment of a child, with the repository on
``PYTHONPATH``), :func:`command` (a worker's command line), :func:`run_json` (a child that
prints a JSON object as its last line) and :func:`run_burst` (workers released at once by a
start barrier). The worker's side (``_store_worker.py``, ``_recognizer_worker.py``, which
import this module as a plain script too): :func:`emit`, :func:`parser`, :func:`ready` and :func:`steps`.
Standard library only: a worker starts in a few milliseconds.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------- the parent's side
def child_env(**extra: str) -> dict[str, str]:
    """This process's environment with the repository on ``PYTHONPATH``, and ``extra``."""
    return {**os.environ, "PYTHONPATH": str(ROOT), **extra}


def command(script: Path, mode: str, home: Path, /, **options: object) -> list[str]:
    """The command line running the worker ``script`` in ``mode`` on ``home``; each option
    becomes ``--name value`` (underscores in the name as dashes), in the given order."""
    argv = [sys.executable, str(script), mode, str(home)]
    for name, value in options.items():
        argv += [f"--{name.replace('_', '-')}", str(value)]
    return argv


def run_json(argv: list[str], *, timeout: float, env: dict[str, str], cwd: Path | None = None) -> tuple[Any, str]:
    """Run ``argv`` to its end; it must exit 0 and print a JSON value as its last line of
    stdout. Returns that value and the child's stderr."""
    p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd, check=False)
    assert p.returncode == 0, f"exit {p.returncode}\n{p.stderr[-4000:]}"
    return json.loads(p.stdout.strip().splitlines()[-1]), p.stderr


def run_burst(commands: list[list[str]], *, env: dict[str, str], timeout: float) -> tuple[list[list[str]], float, float]:
    """Start one worker per command, wait until each has printed ``READY``, release them all
    at once (a line on their stdin) and collect what they print; each must exit 0.

    Returns the stdout lines of each worker, the seconds from the release to the last exit
    and the seconds of start-up (from the first start to the release)."""
    t0 = time.perf_counter()
    procs = [subprocess.Popen(c, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for c in commands]
    try:
        for p in procs:  # every worker is ready (models loaded, store opened)
            line = p.stdout.readline().strip()
            assert line == "READY", (line, p.stderr.read() if p.poll() is not None else "")
        t1 = time.perf_counter()
        for p in procs:  # start barrier
            p.stdin.write("go\n")
            p.stdin.flush()
        outs = []
        for p in procs:
            out, err = p.communicate(timeout=timeout)
            assert p.returncode == 0, err[-3000:]
            outs.append(out.splitlines())
        return outs, time.perf_counter() - t1, t1 - t0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()


# --------------------------------------------------------------------------- the worker's side
def emit(line: str) -> None:
    """Print one line of the worker's protocol, flushed at once."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def parser() -> argparse.ArgumentParser:
    """The arguments every worker takes: ``burst`` or ``loop``, the home, ``--worker`` (a
    burst's worker number), ``--seed`` (a loop's) and ``--n`` (a burst's operations)."""
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=("burst", "loop"))
    ap.add_argument("home")
    ap.add_argument("--worker", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n", type=int, default=75)
    return ap


def ready(args: argparse.Namespace) -> int:
    """Print ``READY``; a burst then waits at the start barrier (a line on stdin). Returns
    the number the worker's operations are made from: ``--worker`` in a burst, else ``--seed``."""
    emit("READY")
    if args.mode == "burst":
        sys.stdin.readline()  # start barrier
    return int(args.worker if args.mode == "burst" else args.seed)


def steps(args: argparse.Namespace) -> Iterator[int]:
    """The numbers of the worker's operations, 0, 1, ...: ``--n`` of them in a burst, for
    ever in a loop (which runs until it is killed)."""
    i = 0
    while args.mode == "loop" or i < args.n:
        yield i
        i += 1
