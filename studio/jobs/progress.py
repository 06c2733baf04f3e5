"""What a job is doing right now, read from files only (events.jsonl, samples, the worker log).

The web UI polls this about once a second and ``studio jobs show`` prints it; both read the same
run-directory contract the trainer writes, so neither needs the worker to answer anything.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from studio.jobs.db import Job

LOG_TAIL_LINES = 40


@dataclass
class Sample:
    step: int
    path: Path
    prompt: str


@dataclass
class JobProgress:
    """A snapshot of a job for display."""

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

    @property
    def fraction(self) -> float:
        return min(1.0, self.step / self.total) if self.total else (1.0 if self.job.state == "finished" else 0.0)

    def summary(self) -> str:
        """One line: ``running · step 12/30 · loss 0.1234 · 2.1 it/s · ETA 9 s``."""
        parts = [self.job.state]
        if self.total:
            parts.append(f"step {self.step}/{self.total}")
        if self.loss is not None:
            parts.append(f"loss {self.loss:.4f}")
        if self.it_s:
            parts.append(f"{self.it_s:.2f} it/s")
        if self.job.state == "running" and self.eta_s is not None:
            parts.append(f"ETA {format_duration(self.eta_s)}")
        elif self.job.state == "running" and self.phase:
            parts.append(self.phase)
        return " · ".join(parts)


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
    # tqdm redraws a line with carriage returns; keep only what the terminal would show.
    cleaned = (line.rsplit("\r", 1)[-1] for line in data.splitlines())
    return "\n".join(deque((line for line in cleaned if line.strip()), maxlen=lines))


def job_progress(job: Job, logs_dir: Path, *, log_lines: int = LOG_TAIL_LINES) -> JobProgress:
    """Step, loss curve, ETA and samples of a training job (eval/export jobs: state and log)."""
    from trainers.events import read_events  # imports torch (trainers/__init__); only when needed

    progress = JobProgress(job=job, log_tail=tail(log_path(job, logs_dir), log_lines))
    if job.kind != "train" or not job.run_dir:
        return progress
    run_dir = Path(job.run_dir)
    for event in read_events(run_dir):
        kind = event.get("type")
        if kind in ("started", "resumed"):
            progress.total = int(event.get("total") or progress.total)
            progress.step = int(event.get("step") or 0)
            progress.phase = "preparing" if kind == "started" else f"resumed at step {progress.step}"
            # A resumed run repeats the steps after its checkpoint; keep the curve monotonic.
            progress.losses = [(s, v) for s, v in progress.losses if s <= progress.step]
        elif kind == "step":
            progress.step = int(event.get("step", progress.step))
            progress.total = int(event.get("total") or progress.total)
            progress.loss = event.get("loss")
            progress.eta_s = event.get("eta_s")
            progress.it_s = event.get("it_s")
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
    return progress


def progress_dict(progress: JobProgress) -> dict:
    """A JSON-friendly snapshot (the web UI's ``job_info`` API endpoint returns this)."""
    job = progress.job
    return {
        "id": job.id, "kind": job.kind, "name": job.name, "state": job.state, "reason": job.reason,
        "run_dir": job.run_dir, "parent_id": job.parent_id, "step": progress.step, "total": progress.total,
        "loss": progress.loss, "eta_s": progress.eta_s, "it_s": progress.it_s, "losses": progress.losses,
        "samples": [str(s.path) for s in progress.samples], "summary": progress.summary(),
    }
