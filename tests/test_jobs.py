"""The persistent job queue: names, the SQLite store, submit/cancel/resume, workers and the CLI."""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import tiny_config

from studio.errors import StudioError
from studio.jobs import (
    Dispatcher,
    Workspace,
    cancel,
    job_progress,
    recover,
    resume,
    submit_eval,
    submit_train,
)
from studio.jobs.db import CANCELLED, FAILED, FINISHED, INTERRUPTED, QUEUED, RUNNING, JobStore
from studio.jobs.dispatcher import finalize, pid_alive
from studio.jobs.reports import ScoreRow, comparison, read_report
from studio.names import child_path, safe_name

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_IMAGES = sorted(glob.glob(str(ROOT / "datasets" / "sample_subject" / "*.*g")))


# ---------------------------------------------------------------------------- helpers
def fresh_workspace(tmp_path_factory, shared_data_dir: Path, name: str) -> Workspace:
    """A data dir with its own job queue whose built-in models are the session's (built once)."""
    root = tmp_path_factory.mktemp(name)
    models = shared_data_dir / "models"
    models.mkdir(parents=True, exist_ok=True)
    (root / "models").symlink_to(models, target_is_directory=True)
    return Workspace.open(root)


@pytest.fixture(scope="module")
def ws(tmp_path_factory, tiny_data_dir, monkeypatch_module) -> Workspace:
    workspace = fresh_workspace(tmp_path_factory, tiny_data_dir, "jobs")
    monkeypatch_module.setenv("STUDIO_DATA_DIR", str(workspace.root))
    monkeypatch_module.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch_module.setenv("STUDIO_DEVICE", "cpu")
    return workspace


@pytest.fixture(scope="module")
def monkeypatch_module():
    patch = pytest.MonkeyPatch()
    yield patch
    patch.undo()


@pytest.fixture(scope="module")
def subject(ws) -> Path:
    from studio.subjects import prepare_subject

    return prepare_subject(SAMPLE_IMAGES, "sks", "toy", ws.subject_dir("Toy Bear"), resolution=64).directory


def small_lora(**overrides):
    return tiny_config("lora", checkpoint_every=5, lora_rank=2, log_every=1, **overrides)


def wait_for(predicate, timeout: float = 240.0, poll: float = 0.3):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout} s")


def studio_cli(ws: Workspace, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "studio", "jobs", "--data-dir", str(ws.root), *args],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)


# ---------------------------------------------------------------------------- names
@pytest.mark.parametrize("text, expected", [
    ("My Dog (2)", "my-dog-2"),
    ("../../etc/passwd", "etc-passwd"),
    ("..", "untitled"),
    ("", "untitled"),
    ("   ", "untitled"),
    (".hidden", "hidden"),
    ("-rf", "rf"),
    ("Crème brûlée", "creme-brulee"),
    ("a/b\\c:d*e?f", "a-b-c-d-e-f"),
    ("CON", "untitled"),
    ("x" * 200, "x" * 64),
    ("teddy_bear.v2", "teddy_bear.v2"),
])
def test_safe_name(text, expected):
    assert safe_name(text) == expected


def test_child_path_stays_inside(tmp_path):
    assert child_path(tmp_path, "../../x") == (tmp_path / "x").resolve()
    assert child_path(tmp_path, "/etc/passwd").parent == tmp_path.resolve()
    assert child_path(tmp_path, "..", "subject").name == "subject"


# ---------------------------------------------------------------------------- store and service
def test_store_claims_one_job_per_device(tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite")
    a = store.add("train", "a", {}, device="cpu")
    b = store.add("train", "b", {}, device="cpu")
    c = store.add("eval", "c", {}, device="cuda:0", run_dir=lambda job_id: f"runs/{job_id}")
    assert (a.state, c.run_dir) == (QUEUED, f"runs/{c.id}")
    claimed = [store.claim_next(), store.claim_next(), store.claim_next()]
    assert [j.id if j else None for j in claimed] == [a.id, c.id, None]  # b waits for the cpu
    assert store.get(a.id).state == RUNNING and store.get(a.id).attempts == 1
    assert store.transition(a.id, (RUNNING,), FINISHED, ended=time.time())
    assert not store.transition(a.id, (RUNNING,), FAILED)  # already ended: first writer wins
    assert store.claim_next().id == b.id
    assert [j.id for j in store.list(states=(RUNNING,))] == [c.id, b.id]
    with pytest.raises(StudioError, match="no job #999"):
        store.get(999)
    assert JobStore(tmp_path / "jobs.sqlite").get(b.id).name == "b"  # persisted


def test_submit_validates_and_queue_controls(ws, subject):
    with pytest.raises(StudioError, match="Subject 'nope' not found"):
        submit_train(ws, small_lora(), "nope")
    job = submit_train(ws, small_lora(), "toy bear", name="../evil name")
    assert job.state == QUEUED and job.kind == "train" and job.device == "cpu"
    assert Path(job.run_dir).parent == ws.runs_dir and Path(job.run_dir).name == f"{job.id:04d}-evil-name"
    assert job.params["subject_dir"] == str(subject) and job.params["config"]["steps"] == 30
    with pytest.raises(StudioError, match="has not finished training"):
        submit_eval(ws, job.id)
    assert cancel(ws, job.id).state == CANCELLED
    with pytest.raises(StudioError, match="only queued or running"):
        cancel(ws, job.id)
    again = resume(ws, job.id)
    assert again.state == QUEUED and not again.resume  # it never started: a fresh start, not a resume
    cancel(ws, job.id)


def test_recover_marks_dead_running_job_interrupted(tmp_path):
    ws = Workspace.open(tmp_path)
    job = ws.store.add("export", "x", {}, run_dir=str(tmp_path / "run"))
    ws.store.claim_next()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    ws.store.update(job.id, pid=dead.pid)
    assert not pid_alive(dead.pid, job.id)
    assert [j.id for j in recover(ws)] == [job.id]
    interrupted = ws.store.get(job.id)
    assert interrupted.state == INTERRUPTED and "resume" in interrupted.reason
    assert resume(ws, job.id).state == QUEUED


def test_finalize_reports_signal_and_log_tail(tmp_path):
    ws = Workspace.open(tmp_path)
    job = ws.store.add("export", "x", {}, run_dir=str(tmp_path / "run"))
    ws.store.claim_next()
    (ws.logs_dir / f"job-{job.id:06d}.log").write_text("loading\nCUDA out of memory\n")
    finalize(ws, job.id, -signal.SIGKILL)
    failed = ws.store.get(job.id)
    assert failed.state == FAILED
    assert "SIGKILL" in failed.reason and "out of memory" in failed.reason


def test_comparison_reads_reports_defensively(ws, tmp_path):
    from studio.atomic import write_json

    job = ws.store.add("train", "cmp", {"config": {"method": "lora"}}, run_dir=str(tmp_path / "run"))
    assert comparison(ws, job) == [] and read_report(job.run_dir) is None
    write_json(tmp_path / "run" / "eval" / "report.json",
               {"scores": {"clip_i": 0.8, "dino": "bad", "pres": None}, "base_scores": {"clip_i": 0.5}, "base": "tiny-sd"})
    rows = comparison(ws, job)
    assert rows[0] == ScoreRow(f"#{job.id} lora", "this run",
                               {"clip_i": 0.8, "clip_t": None, "dino": None, "pres": None, "div": None})
    assert rows[1].role == "base model" and rows[1].scores["clip_i"] == 0.5


# ---------------------------------------------------------------------------- real workers
def test_worker_failure_is_recorded_with_its_reason(ws, subject):
    job = submit_train(ws, small_lora(base=str(ws.root / "no-such-model")), subject, name="broken")
    dispatcher = Dispatcher(ws, poll_s=0.2)
    dispatcher.tick()
    failed = wait_for(lambda: (j := ws.store.get(job.id)).state == FAILED and j, poll=0.5)
    assert "no-such-model" in failed.reason
    dispatcher.children[job.id].wait(timeout=60)
    dispatcher.tick()
    assert job.id not in dispatcher.children and ws.store.get(job.id).state == FAILED


def test_killed_worker_fails_without_taking_the_dispatcher_down(ws, subject):
    job = submit_train(ws, small_lora(), subject, name="killed")
    dispatcher = Dispatcher(ws, poll_s=0.2)
    dispatcher.tick()
    process = dispatcher.children[job.id]
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    dispatcher.tick()
    failed = ws.store.get(job.id)
    assert failed.state == FAILED and "SIGKILL" in failed.reason
    assert resume(ws, job.id).state == QUEUED
    cancel(ws, job.id)


def test_cli_submit_run_cancel_resume(ws, subject):
    """`studio jobs` end to end on a real tiny LoRA run: cancel checkpoints, resume finishes it."""
    submitted = studio_cli(ws, "submit", "--subject", "toy-bear", "--name", "cli", "--set", "method=lora",
                           "--set", "resolution=64", "--set", "steps=40", "--set", "checkpoint_every=4",
                           "--set", "sample_every=0", "--set", "lora_rank=2", "--set", "learning_rate=0.001")
    assert submitted.returncode == 0, submitted.stderr
    job = ws.store.list(kind="train")[0]
    assert job.name == "cli" and job.state == QUEUED
    runner = subprocess.Popen([sys.executable, "-m", "studio", "jobs", "--data-dir", str(ws.root), "run", "--until-idle"],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: job_progress(ws.store.get(job.id), ws.logs_dir).step >= 5, timeout=300)
        cancelled = studio_cli(ws, "cancel", str(job.id))
        assert cancelled.returncode == 0, cancelled.stderr
        stopped = ws.store.get(job.id)
        assert stopped.state == CANCELLED, (stopped.state, stopped.reason)
        step = job_progress(stopped, ws.logs_dir).step
        assert 0 < step < 40 and list(Path(stopped.run_dir, "checkpoints").glob("step-*"))
        assert studio_cli(ws, "resume", str(job.id)).returncode == 0
        wait_for(lambda: ws.store.get(job.id).state == FINISHED, timeout=300)
        runner.wait(timeout=60)
    finally:
        if runner.poll() is None:
            runner.terminate()
    listing = studio_cli(ws, "list").stdout
    assert f"{job.id:>4}  train   finished" in listing
    shown = studio_cli(ws, "show", str(job.id)).stdout
    assert "step 40/40" in shown and "resumed" in shown
    assert (Path(job.run_dir) / "result.json").is_file()
