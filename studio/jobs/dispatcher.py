"""Starting queued jobs in worker processes and noticing how they end.

A :class:`Dispatcher` runs as a thread inside the web UI, or in the foreground with
``studio jobs run``. Each tick it: records jobs whose worker is gone, escalates cancellations
(SIGTERM after a grace period), and starts the next queued job on every free device. Workers run
in their own session, so they outlive a UI that stops; the next dispatcher adopts them by pid.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from studio.jobs.db import CANCELLED, FAILED, INTERRUPTED, RUNNING, Job
from studio.jobs.progress import log_path, tail
from studio.jobs.service import CANCEL_FILE
from studio.jobs.workspace import Workspace
from studio.processes import process_alive
from studio.run_layout import config_path

LOG = logging.getLogger(__name__)
CANCEL_GRACE_S = 5.0
KILL_AFTER_S = 60.0
WORKER_MODULE = "studio.jobs.worker"


def pid_alive(pid: int | None, job_id: int | None = None) -> bool:
    """Whether ``pid`` is a live (not zombie) process, and our worker for ``job_id`` where /proc can tell."""
    if not process_alive(pid):
        return False
    proc = Path(f"/proc/{pid}")
    if not proc.exists():
        return True  # no /proc (macOS): trust kill(0)
    try:
        if proc.joinpath("stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
            return False
        if job_id is not None:
            argv = proc.joinpath("cmdline").read_bytes().split(b"\0")
            return WORKER_MODULE.encode() in argv and str(job_id).encode() in argv
    except (OSError, IndexError):
        return False
    return True


def _signal_name(code: int) -> str:
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


def _failed_event_reason(job: Job) -> str | None:
    """The reason of a 'failed' event the trainer wrote during this attempt, if any."""
    if job.kind != "train" or not job.run_dir:
        return None
    from studio.run_events import read_events

    failed = [e for e in read_events(job.run_dir) if e.get("type") == "failed" and e.get("time", 0) >= (job.started or 0)]
    return str(failed[-1].get("reason") or "training failed") if failed else None


def failure_reason(ws: Workspace, job: Job, returncode: int | None) -> str:
    """Why a worker ended without recording it: the run's failed event, else exit status and log tail."""
    recorded = _failed_event_reason(job)
    if recorded:
        return recorded
    if returncode is None:
        status = "the worker process ended"
    elif returncode < 0:
        status = f"the worker was killed by {_signal_name(returncode)}"
        if returncode == -signal.SIGKILL:
            status += " (often the system running out of memory)"
    else:
        status = f"the worker exited with code {returncode}"
    last = tail(log_path(job, ws.logs_dir), 5)
    return f"{status}" + (f"; last output:\n{last}" if last else "")


def finalize(ws: Workspace, job_id: int, returncode: int | None) -> None:
    """Record the end of a worker that did not record it itself (crash, kill, cancel by signal)."""
    job = ws.store.get(job_id)
    if job.state != RUNNING:
        return
    if job.cancel_requested:
        ws.store.transition(job.id, (RUNNING,), CANCELLED, ended=time.time(), reason="cancelled by the user")
    elif returncode is None and not _failed_event_reason(job):  # an adopted worker vanished without a trace
        reason = "the worker process ended without recording why; resume to continue from the last checkpoint"
        ws.store.transition(job.id, (RUNNING,), INTERRUPTED, ended=time.time(), reason=reason)
    else:
        ws.store.transition(job.id, (RUNNING,), FAILED, ended=time.time(), reason=failure_reason(ws, job, returncode))


def recover(ws: Workspace) -> list[Job]:
    """After a restart: a running job whose worker is gone becomes interrupted (resumable)."""
    changed = []
    for job in ws.store.list(states=(RUNNING,)):
        if pid_alive(job.pid, job.id):
            continue
        step = ""
        if job.kind == "train":
            from studio.jobs.progress import job_progress

            step = f" at step {job_progress(job, ws.logs_dir).step}"
        reason = f"the worker stopped{step} while no Studio was watching it; resume to continue from the last checkpoint"
        if ws.store.transition(job.id, (RUNNING,), INTERRUPTED, ended=time.time(), reason=reason):
            changed.append(ws.store.get(job.id))
    return changed


def enforce_cancellations(ws: Workspace, sent: dict[int, int], grace_s: float = CANCEL_GRACE_S) -> None:
    """Make cancelled workers stop; ``sent`` remembers the signal already sent to each job.

    A trainer deletes ``RUN/cancel.request`` when it sees it and then writes its checkpoint, so it
    is left alone while it does. A worker that has not noticed the flag after ``grace_s`` (busy
    loading a model, sampling, or not a trainer at all) gets one SIGTERM, which it handles the same
    way; one still alive ``KILL_AFTER_S`` after the request gets SIGKILL.
    """
    now = time.time()
    for job in ws.store.list(states=(RUNNING,)):
        if not job.cancel_requested or not job.pid or not pid_alive(job.pid, job.id):
            continue
        waited = now - job.cancel_requested
        run = Path(job.run_dir)
        flag_pending = (run / CANCEL_FILE).exists() or not config_path(run).exists()
        if waited >= KILL_AFTER_S:
            sig = signal.SIGKILL
        elif job.kind != "train" or (flag_pending and waited >= grace_s):
            sig = signal.SIGTERM
        else:
            continue
        if sent.get(job.id) == sig:
            continue
        sent[job.id] = sig
        try:
            os.kill(job.pid, sig)
        except ProcessLookupError:
            pass


class Dispatcher:
    """Starts queued jobs (``max_per_device`` at a time per device) and watches their workers."""

    def __init__(self, ws: Workspace, *, poll_s: float = 1.0, max_per_device: int = 1, grace_s: float = CANCEL_GRACE_S):
        self.ws = ws
        self.poll_s = poll_s
        self.max_per_device = max_per_device
        self.grace_s = grace_s
        self.children: dict[int, subprocess.Popen] = {}
        self._signalled: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Dispatcher:
        recover(self.ws)
        self._thread = threading.Thread(target=self._loop, name="studio-dispatcher", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop dispatching; running workers keep going (a later dispatcher adopts them)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:  # the UI must outlive any bookkeeping error; log it and go on
                LOG.exception("job dispatcher tick failed")
            self._stop.wait(self.poll_s)

    def tick(self) -> None:
        self.reap()
        enforce_cancellations(self.ws, self._signalled, self.grace_s)
        while not self._stop.is_set():
            job = self.ws.store.claim_next(self.max_per_device)
            if job is None:
                break
            self.spawn(job)

    def reap(self) -> None:
        """Record workers that have ended: our children by exit code, adopted ones by pid."""
        for job_id, process in list(self.children.items()):
            code = process.poll()
            if code is not None:
                del self.children[job_id]
                finalize(self.ws, job_id, code)
        for job in self.ws.store.list(states=(RUNNING,)):
            if job.id in self.children:
                continue
            if job.pid and not pid_alive(job.pid, job.id):
                finalize(self.ws, job.id, None)
            elif not job.pid and job.started and time.time() - job.started > 60:
                finalize(self.ws, job.id, None)  # claimed by a dispatcher that died before starting it

    def spawn(self, job: Job) -> subprocess.Popen:
        env = dict(os.environ)
        env["STUDIO_DATA_DIR"] = str(self.ws.root)
        env.setdefault("PYTHONUNBUFFERED", "1")
        if job.device.startswith("cuda:"):
            env["CUDA_VISIBLE_DEVICES"] = job.device.split(":", 1)[1]
        log = log_path(job, self.ws.logs_dir)
        with open(log, "ab") as handle:
            process = subprocess.Popen(
                [sys.executable, "-m", WORKER_MODULE, str(job.id), "--db", str(self.ws.store.path)],
                stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=env, start_new_session=True,
            )
        self.children[job.id] = process
        self.ws.store.update(job.id, pid=process.pid)
        return process

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until no job is queued or running (for ``studio jobs run --until-idle``)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.ws.store.list(states=("queued", "running")):
            if deadline is not None and time.monotonic() > deadline:
                return False
            time.sleep(self.poll_s)
        return True
