"""What the UI shows of a job between its events: work progress (evaluation, export, class images), the
ETA as it counts down, "updated N s ago", a stall, and time estimates from speed measured here."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

from studio.jobs import Workspace
from studio.jobs.db import FINISHED, RUNNING
from studio.jobs.estimates import estimate_text
from studio.jobs.progress import ProgressFile, job_progress, progress_path
from studio.work_progress import reporting_to, track


def running_job(ws: Workspace, kind: str, run_dir: Path, config: dict | None = None):
    job = ws.store.add(kind, "toy", {"config": config or {}}, run_dir=str(run_dir))
    return ws.store.update(job.id, state=RUNNING, started=time.time())


def write_events(run_dir: Path, events: list[dict]) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))


def test_evaluation_progress_counts_images_and_keeps_the_newest(tmp_path):
    ws = Workspace.open(tmp_path / "data")
    job = running_job(ws, "eval", tmp_path / "run")
    with reporting_to(ProgressFile(progress_path(job.id, ws.logs_dir))):
        tracker = track("generating personalised images", 10, "image")
        for index in range(4):
            tracker.advance(1, images=[tmp_path / f"{index}.png"])
    progress = job_progress(ws.store.get(job.id), ws.logs_dir)
    assert progress.counts() == "images 4/10" and progress.fraction == 0.4
    assert [Path(p).name for p in progress.work.images] == ["0.png", "1.png", "2.png", "3.png"]
    summary = progress.summary()
    assert "generating personalised images" in summary and "ETA" in summary and re.search(r"updated \d s ago", summary)


def test_class_images_show_before_the_first_training_step(tmp_path):
    ws = Workspace.open(tmp_path / "data")
    run_dir = tmp_path / "run"
    job = running_job(ws, "train", run_dir)
    write_events(run_dir, [{"type": "started", "step": 0, "total": 30, "time": time.time()}])
    with reporting_to(ProgressFile(progress_path(job.id, ws.logs_dir))):
        track("generating class images", 8, "image").advance(3)
    progress = job_progress(ws.store.get(job.id), ws.logs_dir)
    assert progress.counts() == "images 3/8" and "generating class images" in progress.summary()
    now = time.time()
    write_events(run_dir, [{"type": "started", "step": 0, "total": 30, "time": now},
                           {"type": "step", "step": 5, "total": 30, "loss": 0.5, "eta_s": 25.0, "it_s": 1.0, "time": now}])
    progress = job_progress(ws.store.get(job.id), ws.logs_dir)
    assert progress.counts() == "step 5/30"  # once training steps, the steps are the progress


def test_eta_counts_down_and_a_long_silence_is_called_a_stall(tmp_path):
    ws = Workspace.open(tmp_path / "data")
    run_dir = tmp_path / "run"
    job = running_job(ws, "train", run_dir)
    then = time.time() - 10
    write_events(run_dir, [{"type": "started", "step": 0, "total": 100, "time": then - 2},
                           {"type": "step", "step": 1, "total": 100, "loss": 1.0, "eta_s": 99.0, "it_s": 1.0, "time": then - 1},
                           {"type": "step", "step": 2, "total": 100, "loss": 1.0, "eta_s": 98.0, "it_s": 1.0, "time": then}])
    progress = job_progress(ws.store.get(job.id), ws.logs_dir)
    assert 87 <= progress.remaining_s() <= 89  # 98 s estimated 10 s ago
    assert "updated 10 s ago" in progress.summary(now=then + 10)
    later = then + 400  # steps came every second; 400 s of silence is a stall
    assert progress.stalled(now=later) and progress.remaining_s(now=later) is None
    assert "no progress for 6 min 40 s" in progress.summary(now=later) and "ETA" not in progress.summary(now=later)


def test_time_estimate_comes_from_a_finished_run_like_it(tmp_path):
    ws = Workspace.open(tmp_path / "data")
    config = {"base": "tiny-sd", "method": "lora", "resolution": 64, "batch_size": 2}
    assert "no time estimate" in estimate_text(ws, config, 400)
    run_dir = tmp_path / "run"
    job = running_job(ws, "train", run_dir, config)
    write_events(run_dir, [{"type": "step", "step": s, "it_s": 4.0, "time": 0} for s in range(1, 21)])
    ws.store.update(job.id, state=FINISHED)
    text = estimate_text(ws, config, 400)
    assert "About 1 min 40 s for 400 steps at 4.00 steps/s" in text and f"#{job.id}" in text
    assert "no time estimate" in estimate_text(ws, dict(config, resolution=512), 400)  # another shape
