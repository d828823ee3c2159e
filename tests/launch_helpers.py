"""Several processes on CPU, as the tests and benchmarks/bench_eval.py start them: ``accelerate
launch`` of ``python -m sigma_core ...`` (torchrun workers over gloo, one thread each) on a port
no other process holds, and a launcher run whose workers are all killed on a timeout."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


class WorkersHung(AssertionError):
    """A launcher that did not finish in time (its workers killed); a test fails with it."""


def free_port() -> int:
    """A port no other process holds now, for a rendezvous (a fixed one can be taken)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cpu_env(**changes: str) -> dict[str, str]:
    """This environment for CPU workers: accelerate's CPU mode, one thread a process, offline,
    the checkout importable."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
            "ACCELERATE_USE_CPU": "true", "PYTHONPATH": str(ROOT), **changes}  # fmt: skip


def accelerate_cpu(argv: Sequence[str], processes: int = 2) -> list[str]:
    """``accelerate launch`` of ``python -m sigma_core ARGV`` in ``processes`` processes on this
    machine (with :func:`cpu_env`, CPU processes over gloo)."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
            "--num_processes", str(processes), "--num_machines", "1", "--mixed_precision", "no",
            "--dynamo_backend", "no", "--main_process_port", str(free_port()),
            "-m", "sigma_core", *argv]  # fmt: skip


def run_workers(
    cmd: Sequence[str], env: dict[str, str], timeout: float = 200
) -> subprocess.CompletedProcess[str]:
    """Run a launcher and its workers; on a timeout every one of them is killed (no orphaned
    worker) and WorkersHung says what they printed."""
    proc = subprocess.Popen(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=ROOT, start_new_session=True)  # fmt: skip
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        import psutil

        # torchrun starts each worker in a session of its own: kill them one by one
        for child in psutil.Process(proc.pid).children(recursive=True):
            child.kill()
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise WorkersHung(
            f"workers hung for {timeout:.0f} s:\n{out[-2000:]}\n{err[-4000:]}"
        ) from None
    return subprocess.CompletedProcess(list(cmd), proc.returncode, out, err)
