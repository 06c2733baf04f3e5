"""What a job is doing right now, read from files only (events.jsonl, samples, the worker log).

The web UI polls this about once a second and ``studio jobs show`` prints it; both read the same
run-directory contract the trainer writes, so neither needs the worker to answer anything.
"""

from __future__ import annotations

import json
import re
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from studio.jobs.db import Job
from studio.work_progress import Update

LOG_TAIL_LINES = 40
ANSI_CODES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@dataclass
class Sample:
    step: int
    path: Path
    prompt: str


@dataclass
class JobProgress:
    """A snapshot of a job for display: training steps (events.jsonl) and other work (the progress file)."""

    job: Job
    step: int = 0
    total: int = 0
    loss: float | None = None
    eta_s: float | None = None
    it_s: float | None = None
    losses: list[tuple[int, float]] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    log_tail: str = ""
    phase: str = ""
    work: Update | None = None  # evaluation, export or class images (studio.work_progress)
    updated: float | None = None  # when anything last reported (epoch seconds)
    typical_gap_s: float | None = None  # the usual time between reports, for noticing a stall
    step_events: int = 0

    @property
    def in_steps(self) -> bool:
        """Whether the training loop is what is running (else ``work``, if any, is)."""
        return self.step_events > 0 or self.work is None

    @property
    def fraction(self) -> float:
        if self.job.state == "finished":
            return 1.0
        if not self.in_steps and self.work is not None and self.work.total:
            return min(1.0, self.work.done / self.work.total)
        return min(1.0, self.step / self.total) if self.total else 0.0

    def counts(self) -> str:
        """``step 12/30`` or ``images 44/208``."""
        if not self.in_steps and self.work is not None:
            unit = self.work.unit + ("s" if self.work.total != 1 else "")
            return f"{unit} {self.work.done}/{self.work.total}" if self.work.total else ""
        return f"step {self.step}/{self.total}" if self.total else ""

    def silent_s(self, now: float | None = None) -> float | None:
        """Seconds since the last report of a running job."""
        if self.job.state != "running" or self.updated is None:
            return None
        return max(0.0, (now or time.time()) - self.updated)

    def stalled(self, now: float | None = None) -> bool:
        """No report for much longer than usual (the machine may be busy or the work stuck)."""
        silent = self.silent_s(now)
        if silent is None:
            return False
        return silent > max(STALL_MIN_S, STALL_FACTOR * (self.typical_gap_s or 0.0))

    def remaining_s(self, now: float | None = None) -> float | None:
        """The ETA as of now: the last estimate less the time since it was made; None while stalled."""
        if self.job.state != "running" or self.stalled(now):
            return None
        estimate = self.eta_s if self.in_steps else (self.work.eta_s if self.work else None)
        if estimate is None:
            return None
        return max(0.0, estimate - (self.silent_s(now) or 0.0))

    def summary(self, now: float | None = None) -> str:
        """One line: ``running · step 12/30 · loss 0.1234 · 2.1 it/s · ETA 9 s · updated 1 s ago``."""
        parts = [self.job.state]
        if counts := self.counts():
            parts.append(counts)
        if self.in_steps:
            if self.loss is not None:
                parts.append(f"loss {self.loss:.4f}")
            if self.it_s:
                parts.append(f"{self.it_s:.2f} it/s")
        elif self.work is not None and self.job.state == "running":
            parts.append(self.work.phase)
        remaining = self.remaining_s(now)
        if remaining is not None:
            parts.append(f"ETA {format_duration(remaining)}")
        elif self.job.state == "running" and self.phase and self.in_steps and not self.step_events:
            parts.append(self.phase)
        silent = self.silent_s(now)
        if silent is not None:
            if self.stalled(now):
                parts.append(f"no progress for {format_duration(silent)}: the machine may be busy")
            else:
                parts.append(f"updated {format_duration(silent)} ago")
        return " · ".join(parts)


STALL_MIN_S = 30.0
STALL_FACTOR = 5.0


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def log_path(job: Job, logs_dir: Path) -> Path:
    return Path(logs_dir) / f"job-{job.id:06d}.log"


def progress_path(job_id: int, logs_dir: Path) -> Path:
    """The worker's snapshot of non-training work (evaluation, export, class images)."""
    return Path(logs_dir) / f"job-{job_id:06d}.progress.json"


class ProgressFile:
    """A :mod:`studio.work_progress` sink that keeps a job's snapshot file current (atomically, at most
    a few writes a second; the last update of a phase is always written)."""

    MIN_INTERVAL_S = 0.25

    def __init__(self, path: Path):
        self.path = Path(path)
        self._last_write = 0.0
        self._pending: dict | None = None

    def __call__(self, update: Update) -> None:
        now = time.monotonic()
        self._pending = update.as_dict()
        final = update.total and update.done >= update.total
        if final or not update.done or now - self._last_write >= self.MIN_INTERVAL_S:
            self.flush()

    def flush(self) -> None:
        """Write the newest update not yet written (the end of the work calls this)."""
        from studio.atomic import write_json

        if self._pending is not None:
            write_json(self.path, self._pending)
            self._pending = None
            self._last_write = time.monotonic()


def read_work(path: Path) -> Update | None:
    try:
        return Update.from_dict(json.loads(Path(path).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of a text file ("" if it does not exist); reads only the end."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, 2)
            size = handle.tell()
            handle.seek(max(0, size - 64 * 1024))
            data = handle.read().decode("utf-8", "replace")
    except OSError:
        return ""
    # tqdm redraws a line with carriage returns and cursor codes; keep only what the terminal would show.
    cleaned = (ANSI_CODES.sub("", line.rsplit("\r", 1)[-1]) for line in data.splitlines())
    return "\n".join(deque((line for line in cleaned if line.strip()), maxlen=lines))


def job_progress(job: Job, logs_dir: Path, *, log_lines: int = LOG_TAIL_LINES) -> JobProgress:
    """Step, loss curve, ETA and samples of a training job (eval/export jobs: state and log)."""
    from studio.run_events import read_events

    progress = JobProgress(job=job, log_tail=tail(log_path(job, logs_dir), log_lines))
    progress.work = read_work(progress_path(job.id, logs_dir))
    if progress.work is not None:
        progress.updated = progress.work.updated
        if progress.work.done:
            progress.typical_gap_s = (progress.work.updated - progress.work.started) / progress.work.done
    if job.kind != "train" or not job.run_dir:
        if progress.updated is None and job.state == "running":
            progress.updated = job.started
        return progress
    run_dir = Path(job.run_dir)
    step_times: list[float] = []
    for event in read_events(run_dir):
        kind = event.get("type")
        if isinstance(event.get("time"), int | float):
            progress.updated = max(progress.updated or 0.0, float(event["time"]))
        if kind in ("started", "resumed"):
            progress.total = int(event.get("total") or progress.total)
            progress.step = int(event.get("step") or 0)
            progress.phase = "preparing" if kind == "started" else f"resumed at step {progress.step}"
            progress.step_events = 0
            step_times = []
            # A resumed run repeats the steps after its checkpoint; keep the curve monotonic.
            progress.losses = [(s, v) for s, v in progress.losses if s <= progress.step]
        elif kind == "step":
            progress.step_events += 1
            progress.step = int(event.get("step", progress.step))
            progress.total = int(event.get("total") or progress.total)
            progress.loss = event.get("loss")
            progress.eta_s = event.get("eta_s")
            progress.it_s = event.get("it_s")
            if isinstance(event.get("time"), int | float):
                step_times.append(float(event["time"]))
            if isinstance(progress.loss, int | float):
                progress.losses.append((progress.step, float(progress.loss)))
        elif kind == "sample":
            prompts = event.get("prompts") or []
            for index, relative in enumerate(event.get("paths") or []):
                path = run_dir / relative
                if path.is_file():
                    prompt = prompts[index] if index < len(prompts) else ""
                    progress.samples.append(Sample(int(event.get("step", 0)), path, prompt))
        elif kind in ("finished", "failed", "cancelled"):
            progress.step = int(event.get("step", progress.step))
            progress.eta_s = None
    if len(step_times) >= 2:
        progress.typical_gap_s = (step_times[-1] - step_times[0]) / (len(step_times) - 1)
    if progress.updated is None and job.state == "running":
        progress.updated = job.started
    return progress


def progress_dict(progress: JobProgress) -> dict:
    """A JSON-friendly snapshot (the web UI's ``job_info`` API endpoint returns this)."""
    job = progress.job
    return {
        "id": job.id, "kind": job.kind, "name": job.name, "state": job.state, "reason": job.reason,
        "run_dir": job.run_dir, "parent_id": job.parent_id, "step": progress.step, "total": progress.total,
        "loss": progress.loss, "eta_s": progress.eta_s, "it_s": progress.it_s, "losses": progress.losses,
        "samples": [str(s.path) for s in progress.samples], "summary": progress.summary(),
        "counts": progress.counts(), "fraction": progress.fraction, "updated": progress.updated,
        "stalled": progress.stalled(), "work": progress.work.as_dict() if progress.work else None,
    }
