"""CPU threads shared fairly between Studio's processes, so concurrent work slows down gently.

torch's CPU kernels use one OpenMP thread per core, and by default an idle OpenMP thread spins rather
than sleeps. Two such processes on a 2-core machine (a training job and the web UI generating, or two
jobs) then fight for the cores with spinning threads, and a step that takes 16 ms alone took 5 s.

Two remedies, applied by every heavy Studio process (CLI commands that load models, job workers, the
web UI's own generation):

- ``OMP_WAIT_POLICY=PASSIVE`` before torch loads: waiting threads sleep instead of spinning.
- Each process takes an equal share of the cores: it registers itself in a machine-wide folder of
  process ids and sets ``torch.set_num_threads(cores // active processes)``, and re-checks the share
  now and then from its main loop (:func:`rebalance`), as processes come and go.

``STUDIO_THREADS=N`` fixes the count (no sharing). Measured in ``benchmarks/concurrency.py``.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from studio.processes import process_alive

THREADS_ENV = "STUDIO_THREADS"
REBALANCE_EVERY_S = 5.0
_state = {"registered": False, "last_check": 0.0, "threads": None}


def registry_dir() -> Path:
    """One folder per machine and user: the ids of Studio processes now using the CPU."""
    path = Path(tempfile.gettempdir()) / f"studio-cpu-users-{os.getuid()}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def active_processes() -> int:
    """Live registered Studio processes (stale entries of dead ones are removed)."""
    count = 0
    for entry in registry_dir().iterdir():
        if not entry.name.isdigit():
            continue
        if process_alive(int(entry.name)):
            count += 1
        else:
            entry.unlink(missing_ok=True)
    return max(1, count)


def fair_share(cores: int | None = None, processes: int | None = None) -> int:
    cores = cores or os.cpu_count() or 1
    return max(1, cores // max(1, processes or active_processes()))


def prepare_environment() -> None:
    """Before torch is imported: idle OpenMP threads sleep instead of spinning."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _unregister(path: Path) -> None:
    path.unlink(missing_ok=True)
    _state["registered"] = False


@contextlib.contextmanager
def cpu_share() -> Iterator[int]:
    """Hold a share of the CPU for the block (the web UI while it generates), then give it back."""
    already = _state["registered"]
    threads = claim_cpu_share()
    try:
        yield threads
    finally:
        if not already:
            _unregister(registry_dir() / str(os.getpid()))


def claim_cpu_share() -> int:
    """Register this process as a CPU user and take its share of the cores; returns the thread count."""
    prepare_environment()
    if not _state["registered"]:
        entry = registry_dir() / str(os.getpid())
        entry.touch()
        atexit.register(_unregister, entry)
        _state["registered"] = True
    return rebalance(force=True)


def rebalance(*, force: bool = False) -> int | None:
    """Re-take this process's share if other Studio processes came or went (at most every few seconds).

    Call from the thread that runs torch's work (a thread count is per calling thread)."""
    if not _state["registered"]:
        return None  # a library caller's process: its threads are its own business
    now = time.monotonic()
    if not force and now - _state["last_check"] < REBALANCE_EVERY_S:
        return _state["threads"]
    _state["last_check"] = now
    import torch

    fixed = os.environ.get(THREADS_ENV, "").strip()
    threads = int(fixed) if fixed.isdigit() and int(fixed) > 0 else fair_share()
    if threads != torch.get_num_threads():
        torch.set_num_threads(threads)
    _state["threads"] = threads
    return threads
