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


def test_comparison_reads_reports_defensively(tmp_path):
    from studio.atomic import write_json

    ws = Workspace.open(tmp_path / "data")
    subject = {"sources": [{"sha256": "b"}, {"sha256": "a"}]}
    jobs = []
    for name, method in (("one", "lora"), ("two", "dreambooth"), ("other-subject", "lora")):
        job = ws.store.add("train", name, {"config": {"method": method}}, run_dir=str(tmp_path / name))
        ws.store.transition(job.id, (QUEUED,), FINISHED)
        write_json(tmp_path / name / "subject" / "subject.json",
                   subject if name != "other-subject" else {"sources": [{"sha256": "c"}]})
        jobs.append(ws.store.get(job.id))
    assert comparison(ws, jobs[0]) == [] and read_report(jobs[0].run_dir) is None
    write_json(tmp_path / "one" / "eval" / "report.json",
               {"scores": {"clip_i": 0.8, "dino": "bad", "pres": None}, "base_scores": {"clip_i": 0.5}, "base": "tiny-sd"})
    for name in ("two", "other-subject"):
        write_json(tmp_path / name / "eval" / "report.json", {"method": "dreambooth", "scores": {"clip_i": 0.9}})
    (tmp_path / "two" / "eval" / "broken.json").write_text("{")
    rows = comparison(ws, jobs[0])
    assert rows[0] == ScoreRow(f"#{jobs[0].id} lora", "this run",
                               {"clip_i": 0.8, "clip_t": None, "dino": None, "pres": None, "div": None})
    assert rows[1].role == "base model" and rows[1].scores["clip_i"] == 0.5
    assert [(r.label, r.role) for r in rows[2:]] == [(f"#{jobs[1].id} dreambooth", "other run")]  # same photos only


# ---------------------------------------------------------------------------- real workers
def test_worker_failure_is_recorded_with_its_reason(ws, subject):
    job = submit_train(ws, small_lora(base=str(ws.root / "no-such-model")), subject, name="broken")
    dispatcher = Dispatcher(ws, poll_s=0.2)
    dispatcher.tick()
    assert ws.store.get(job.id).state == RUNNING and job.id in dispatcher.children
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


def test_cli_submit_list_show_cancel_resume(ws, subject, capsys):
    """`studio jobs ...` is a thin front over the same functions (in process: no worker is started)."""
    from studio.cli import main

    args = ["jobs", "--data-dir", str(ws.root)]
    assert main([*args, "submit", "--recipe", "tiny-lora", "--subject", "toy-bear", "--name", "cli",
                 "--set", "steps=12", "--set", "lora_rank=2"]) == 0
    job = ws.store.list(kind="train")[0]
    assert job.name == "cli" and job.state == QUEUED and job.params["config"]["steps"] == 12
    assert job.params["config"]["base"] == "tiny-sd"  # from the recipe
    assert main([*args, "list"]) == 0
    assert f"{job.id:>4}  train   queued" in capsys.readouterr().out
    assert main([*args, "show", str(job.id)]) == 0
    assert "queued" in capsys.readouterr().out
    assert main([*args, "cancel", str(job.id)]) == 0
    assert ws.store.get(job.id).state == CANCELLED
    assert main([*args, "resume", str(job.id)]) == 0
    assert ws.store.get(job.id).state == QUEUED
    assert main([*args, "cancel", str(job.id)]) == 0
    assert main([*args, "resume", "999"]) == 2  # a user error, reported without a traceback
    assert "no job #999" in capsys.readouterr().err
    assert main([*args, "submit", "--subject", "toy-bear", "--set", "steps=-1"]) == 2
    assert "Invalid value -1 for 'steps'" in capsys.readouterr().err
