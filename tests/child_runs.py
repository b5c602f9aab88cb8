"""Test work in child processes: the interpreter cases (round-robin shards, one a CPU core, two on CI's machine,
their JSON reports merged) and offline compiles. A test module starts its children when collection is done (its
``start_background_reports``, called by ``tests/conftest.py``) at low priority, so they run on the core the
single-threaded suite leaves idle; the module's tests collect them when they come (or start them then, when the
module runs alone)."""

from __future__ import annotations

import atexit
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_LIVE: list = []  # started, not yet collected: killed if the run ends first


def _lower_priority():
    os.nice(10)


def start(argv, cwd=None, **env) -> subprocess.Popen:
    """``argv`` at low priority, this checkout first on the path, ``env`` added; its output kept for the caller."""
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", **env)
    proc = subprocess.Popen(
        [str(a) for a in argv],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_lower_priority if hasattr(os, "nice") else None,
    )
    _LIVE.append(proc)
    return proc


def spawn(script, *args, **env) -> list:
    """``python script *args i/n`` for each interpreter shard i of n (``TRITON_INTERPRET=1``)."""
    n = max(1, min(2, os.cpu_count() or 1))
    return [start([sys.executable, script, *args, f"{i}/{n}"], TRITON_INTERPRET="1", **env) for i in range(n)]


def output(proc, timeout: float = 900) -> tuple[int, str, str]:
    """(return code, stdout, stderr) of a started child, once it ends."""
    out, err = proc.communicate(timeout=timeout)
    if proc in _LIVE:
        _LIVE.remove(proc)
    return proc.returncode, out, err


def collect(procs, timeout: float = 900) -> dict:
    """The shards' reports merged (each prints one JSON object as its last ``{`` line); a shard that failed or
    printed none fails the caller with its output."""
    report = {}
    for proc in procs:
        code, out, err = output(proc, timeout)
        lines = [ln for ln in out.splitlines() if ln.startswith("{")]
        assert code == 0 and lines, f"interpreter run failed:\n{out[-3000:]}\n{err[-3000:]}"
        report.update(json.loads(lines[-1]))
    return report


@atexit.register
def _kill_uncollected():
    for proc in _LIVE:
        proc.kill()
