"""Issue 13, faults and races: real full disks (tmpfs), real signals, a damaged checkpoint, two processes on one run.

The full-disk tests mount a 2 MB tmpfs (they need root; without it they are skipped, saying so).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import tiny_config, train_until_cancelled
from safetensors.torch import load_file

import trainers
from studio.atomic import stale_temporaries
from studio.cli import main as cli
from studio.errors import RunBusyError, StudioError
from studio.rundir import claimable, prepare_run_dir
from studio.runlock import is_locked, run_lock
from trainers.events import read_events

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def small_disk(tmp_path):
    """A real 2 MB filesystem (tmpfs), unmounted afterwards."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs for a real full disk (needs root): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path, leave: int) -> Path:
    """Fill ``disk`` up to ``leave`` free bytes with one file (returned, so a test can free the space)."""
    stats = os.statvfs(disk)
    filler = disk / "filler"
    filler.write_bytes(b"\0" * max(0, stats.f_bavail * stats.f_frsize - leave))
    return filler


def studio(*args: str, **kwargs) -> subprocess.Popen:
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "studio", *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def wait_until(predicate, timeout: float = 180.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


# ---------------------------------------------------------------- case 1: export --force never deletes a run
def test_export_force_refuses_a_run_and_any_folder_that_is_not_an_export(tiny_lora_run, tmp_path, capsys):
    before = sorted(p.relative_to(tiny_lora_run) for p in tiny_lora_run.rglob("*") if ".studio.lock" not in p.name)
    assert cli(["export", str(tiny_lora_run), "--out", str(tiny_lora_run), "--force"]) == 2
    assert "never replaces a run" in capsys.readouterr().err
    assert cli(["export", str(tiny_lora_run), "--out", str(tiny_lora_run.parent), "--force"]) == 2
    assert "never replaces a run" in capsys.readouterr().err
    holder = tmp_path / "holder"
    (holder / "old").mkdir(parents=True)
    shutil.copy(tiny_lora_run / "config.yaml", holder / "old")
    shutil.copytree(tiny_lora_run / "subject", holder / "old" / "subject")
    assert cli(["export", str(tiny_lora_run), "--out", str(holder), "--force"]) == 2
    assert "holds the run" in capsys.readouterr().err
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.txt").write_text("years of work")
    assert cli(["export", str(tiny_lora_run), "--out", str(mine), "--force"]) == 2
    assert "not a Studio export (no export.json)" in capsys.readouterr().err
    assert (mine / "thesis.txt").read_text() == "years of work" and (holder / "old" / "config.yaml").exists()
    after = sorted(p.relative_to(tiny_lora_run) for p in tiny_lora_run.rglob("*") if ".studio.lock" not in p.name)
    assert before == after


def test_export_force_replaces_an_earlier_export(tiny_lora_run, tmp_path):
    out = tmp_path / "export"
    assert cli(["export", str(tiny_lora_run), "--format", "diffusers", "--out", str(out)]) == 0
    stamp = json.loads((out / "export.json").read_text())["created"]
    assert cli(["export", str(tiny_lora_run), "--format", "diffusers", "--out", str(out)]) == 2
    assert cli(["export", str(tiny_lora_run), "--format", "diffusers", "--out", str(out), "--force"]) == 0
    assert (out / "export.json").is_file() and json.loads((out / "export.json").read_text())["created"] >= stamp
    assert stale_temporaries(tmp_path) == []


# ---------------------------------------------------------------- case 5: a damaged newest checkpoint
def test_resume_falls_back_to_the_newest_intact_checkpoint(sample_subject, tmp_path):
    settings = {"steps": 6, "checkpoint_every": 2, "checkpoints_to_keep": 2, "batch_size": 1, "log_every": 1}
    straight = tmp_path / "straight"
    trainers.train(tiny_config("lora", **settings), sample_subject, straight)
    run = tmp_path / "run"

    train_until_cancelled(tiny_config("lora", **settings), sample_subject, run, at_step=4)
    damaged = run / "checkpoints" / "step-000004" / "trainable.safetensors"
    damaged.write_bytes(b"\xff" * 16)  # what a failing disk or an interrupted copy leaves: an invalid header
    seen: list[dict] = []
    result = trainers.resume(run, listener=seen.append)
    assert result["steps"] == 6
    skipped = [e for e in seen if e["type"] == "checkpoint_skipped"]
    assert len(skipped) == 1 and skipped[0]["path"] == "checkpoints/step-000004"
    assert "trainable.safetensors" in skipped[0]["reason"] and "resumed from step-000002" in skipped[0]["message"]
    assert [e for e in seen if e["type"] == "resumed"][0]["step"] == 2
    name = "pytorch_lora_weights.safetensors"
    mine, reference = load_file(str(run / "adapter" / name)), load_file(str(straight / "adapter" / name))
    assert all(torch.equal(mine[k], reference[k]) for k in reference)  # bitwise: the lost steps were redone exactly


def test_resume_with_no_readable_checkpoint_names_each_file_and_the_fix(sample_subject, tmp_path):
    run = tmp_path / "run"

    train_until_cancelled(tiny_config("lora", steps=4, checkpoint_every=2, batch_size=1), sample_subject, run, at_step=2)
    (run / "checkpoints" / "step-000002" / "trainer.json").write_text("{")
    with pytest.raises(StudioError, match=r"step-000002 \(trainer.json: JSONDecodeError.*Delete those folders to restart"):
        trainers.resume(run)


# ---------------------------------------------------------------- case 6: two processes, one run
def test_exactly_one_of_many_racing_processes_creates_a_run(sample_subject, tmp_path):
    """Real processes, released together by a barrier file, 10 rounds: every round exactly one wins."""
    script = (
        "import sys, time, os\n"
        "from pathlib import Path\n"
        "from studio.config import load_config\n"
        "from studio.errors import StudioError\n"
        "from studio.rundir import claimable, prepare_run_dir\n"
        "from studio.runlock import run_lock\n"
        "go, out, subject = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]\n"
        "config = load_config(None, {'resolution': 64})\n"
        "while not go.exists(): time.sleep(0.001)\n"
        "try:\n"
        "    if not claimable(out): raise StudioError('exists')\n"
        "    with run_lock(out, 'train'):\n"
        "        prepare_run_dir(config, subject, out)\n"
        "        time.sleep(0.3)\n"
        "    print('won')\n"
        "except StudioError as e: print('refused', type(e).__name__)\n"
    )
    for round_ in range(10):
        go, out = tmp_path / f"go{round_}", tmp_path / f"run{round_}"
        racers = [subprocess.Popen([sys.executable, "-c", script, str(go), str(out), str(sample_subject)], cwd=ROOT,
                                   stdout=subprocess.PIPE, text=True) for _ in range(4)]
        time.sleep(0.5 if round_ else 1.5)
        go.touch()
        outcomes = [p.communicate(timeout=120)[0].strip() for p in racers]
        assert outcomes.count("won") == 1, outcomes
        assert (out / "config.yaml").is_file() and not is_locked(out)


def test_a_second_process_on_a_busy_run_is_refused(sample_subject, tmp_path):
    run = tmp_path / "run"

    train_until_cancelled(tiny_config("lora", steps=400, checkpoint_every=2, batch_size=1), sample_subject, run, at_step=2)
    first = studio("train", "--resume", str(run), "--quiet")
    wait_until(lambda: is_locked(run) or first.poll() is not None, what="the first resume to take the run lock")
    second = studio("train", "--resume", str(run), "--quiet")
    _, err = second.communicate(timeout=300)
    assert second.returncode == 2 and f"Run {run} is busy: a resume (process {first.pid})" in err
    with pytest.raises(RunBusyError):
        trainers.resume(run)
    with pytest.raises(RunBusyError, match="busy"), run_lock(run, "export"):  # what export and eval take
        pass
    first.send_signal(signal.SIGTERM)  # a plain kill: checkpoint, record "cancelled", say how to resume
    _, err = first.communicate(timeout=300)
    assert first.returncode == 2 and "Training cancelled at step" in err and "--resume" in err
    assert read_events(run)[-1]["type"] == "cancelled" and not is_locked(run)


# ---------------------------------------------------------------- case 8: failure paths leave nothing behind
def test_disk_full_while_creating_a_run_leaves_nothing_and_says_so(sample_subject, small_disk, capsys):
    filler = fill(small_disk, leave=24_000)
    out = small_disk / "run"
    code = cli(["train", "--recipe", "tiny-lora", "--subject", str(sample_subject), "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "Ran out of disk space while writing the new run" in err and "Traceback" not in err
    assert not out.exists() and sorted(p.name for p in small_disk.iterdir()) == ["filler"]
    filler.unlink()
    assert claimable(out)
    with run_lock(out, "train"):
        prepare_run_dir(tiny_config("lora"), sample_subject, out)
    assert (out / "config.yaml").is_file()


def test_disk_full_during_export_leaves_nothing_and_says_so(tiny_lora_run, small_disk, capsys):
    fill(small_disk, leave=40_000)
    code = cli(["export", str(tiny_lora_run), "--out", str(small_disk / "export")])
    err = capsys.readouterr().err
    assert code == 2 and "Ran out of disk space while writing the export" in err and "Traceback" not in err
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler"]


def test_a_failed_start_leaves_no_run_behind(sample_subject, tmp_path, capsys):
    out = tmp_path / "run"
    for base in (str(tmp_path / "missing" / "model.safetensors"), "nobody/not-cached-anywhere"):
        code = cli(["train", "--recipe", "tiny-lora", "--subject", str(sample_subject), "--out", str(out), "--quiet",
                    "--base", base])
        assert code == 2 and base in capsys.readouterr().err
        assert not out.exists()
    existing = tmp_path / "existing"
    existing.mkdir()
    with pytest.raises(StudioError):
        trainers.train(tiny_config("lora", base="not-a-model"), sample_subject, existing)
    assert existing.is_dir() and list(existing.iterdir()) == []  # a folder the user made stays, empty


def test_signals_during_export_leave_no_temporaries(tiny_lora_run, tmp_path):
    """kill -9 leaves a hidden temporary; the next export of that folder removes it; SIGTERM removes its own."""
    out = tmp_path / "export"

    def interrupted(sig: int) -> subprocess.Popen:
        before = set(stale_temporaries(tmp_path, "export"))
        export = studio("export", str(tiny_lora_run), "--out", str(out))
        wait_until(lambda: set(stale_temporaries(tmp_path, "export")) - before or export.poll() is not None,
                   what="the export's own temporary")
        export.send_signal(sig)
        export.wait(timeout=120)
        return export

    assert interrupted(signal.SIGKILL).returncode == -signal.SIGKILL
    assert len(stale_temporaries(tmp_path, "export")) == 1 and not out.exists()
    assert interrupted(signal.SIGTERM).returncode == 130  # unwound like Ctrl-C: "interrupted"
    assert stale_temporaries(tmp_path, "export") == [] and not out.exists()


def test_a_crashed_checkpoint_write_is_cleaned_at_the_next_start(sample_subject, tmp_path):
    run = tmp_path / "run"

    train_until_cancelled(tiny_config("lora", steps=4, checkpoint_every=2, batch_size=1), sample_subject, run, at_step=2)
    crashed = run / "checkpoints" / ".step-000004.k3j9x0qa.tmp"  # the name atomic_dir gives a checkpoint being written
    crashed.mkdir()
    (crashed / "trainable.safetensors").write_bytes(b"partial")
    assert stale_temporaries(run, recursive=True) == [crashed]
    trainers.resume(run)
    assert stale_temporaries(run, recursive=True) == [] and (run / "result.json").is_file()
