"""One lock per run: an OS file lock (``flock``) held for the life of a train, resume, eval or export.

The lock file is ``RUN/.studio.lock``. The kernel drops the lock when the holder exits in any way
(kill -9 included), so a crash never leaves a run locked. A second process that asks for a busy run
is refused at once with a message naming the run, what holds it and its process id. Within one
process the lock is re-entrant (an export that evaluates, a test that trains then exports).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from studio.errors import RunBusyError

LOCK_FILE = ".studio.lock"

_held: dict[str, tuple[int, int]] = {}  # resolved run dir -> (fd, depth)
_guard = threading.Lock()


def _holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        return "another process"
    action, pid = info.get("action"), info.get("pid")
    return f"a {action} (process {pid})" if action and pid else "another process"


@contextlib.contextmanager
def run_lock(run_dir: str | os.PathLike, action: str) -> Iterator[Path]:
    """Hold the lock of ``run_dir`` (created if missing) while the block runs; refuse if busy."""
    directory = Path(run_dir).expanduser().resolve()
    key = str(directory)
    with _guard:
        if key in _held:
            fd, depth = _held[key]
            _held[key] = (fd, depth + 1)
            reentered = True
        else:
            reentered = False
    if reentered:
        try:
            yield directory
        finally:
            with _guard:
                fd, depth = _held[key]
                _held[key] = (fd, depth - 1)
        return
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(fd)
        os.close(fd)
        raise RunBusyError(
            f"Run {directory} is busy: {holder} is using it. Wait for it to finish (or stop it), then run this "
            "again; two processes never write one run."
        ) from None
    try:
        record = json.dumps({"action": action, "pid": os.getpid(), "since": round(time.time(), 3)}).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, record, 0)
        with _guard:
            _held[key] = (fd, 1)
        yield directory
    finally:
        with _guard:
            _held.pop(key, None)
        os.close(fd)  # closing the descriptor releases the lock


def is_locked(run_dir: str | os.PathLike) -> bool:
    """Whether some process holds the lock of ``run_dir`` right now (for tests and `studio jobs`)."""
    path = Path(run_dir).expanduser().resolve() / LOCK_FILE
    if str(path.parent) in _held:
        return True
    if not path.exists():
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False
