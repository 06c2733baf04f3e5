"""The web UI through its API (gradio_client), and jobs surviving a restart of the UI.

The UI runs as a real ``studio webui`` process, as a person would start it; the restart test stops
it in the middle of a training job and starts it again.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from test_jobs import SAMPLE_IMAGES, fresh_workspace, wait_for

from studio.jobs import Workspace
from studio.jobs.dispatcher import pid_alive

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class UIServer:
    """``studio webui`` in a subprocess on a free port of 127.0.0.1, for one workspace."""

    def __init__(self, ws: Workspace, log: Path):
        self.ws = ws
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log = log
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 240.0) -> UIServer:
        env = dict(os.environ, STUDIO_DATA_DIR=str(self.ws.root), STUDIO_DEVICE="cpu", HF_HUB_OFFLINE="1")
        with open(self.log, "ab") as handle:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "studio", "webui", "--port", str(self.port), "--data-dir", str(self.ws.root)],
                cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"studio webui exited with {self.process.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(self.url + "config", timeout=5) as response:
                    if response.status == 200:
                        return self
            except OSError:
                time.sleep(0.5)
        raise AssertionError(f"studio webui did not answer within {timeout} s:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        """Stop the UI like Ctrl-C would; workers it started keep running."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def kill_workers(self) -> None:
        for job in self.ws.store.list(states=("running",)):
            if pid_alive(job.pid, job.id):
                os.kill(job.pid, signal.SIGKILL)

    def client(self):
        from gradio_client import Client

        return Client(self.url, verbose=False, download_files=str(self.ws.root / "client-downloads"))


def create_subject(client, name: str = "toy") -> str:
    from gradio_client import handle_file

    return client.predict([handle_file(p) for p in SAMPLE_IMAGES], name, "sks", "toy", "tiny-sd", 64, "center",
                          api_name="/create_subject")


@pytest.fixture(scope="module")
def ui(tmp_path_factory, tiny_data_dir):
    ws = fresh_workspace(tmp_path_factory, tiny_data_dir, "webui-api")
    server = UIServer(ws, ws.root / "ui.log").start()
    yield server
    server.stop()
    server.kill_workers()


def test_subject_identifier_and_validation_through_the_api(ui):
    client = ui.client()
    message, suggestions = client.predict("dog", "tiny-sd", api_name="/check_identifier")
    assert "common" in message
    created = create_subject(client, "../Toy Bear!")
    assert "created" in created and "toy-bear" in created
    assert (ui.ws.subjects_dir / "toy-bear" / "subject.json").is_file()
    assert not (ui.ws.root.parent / "Toy Bear!").exists()
    status, job_id = client.predict(subject="toy-bear", recipe="tiny-lora", name="x", resolution=60,
                                    api_name="/start_training")
    assert "resolution=60 is not divisible by 8" in status and job_id is None
    assert ui.ws.store.list() == []


def test_bad_photos_are_reported_per_file(ui, tmp_path):
    from gradio_client import handle_file

    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    files = [handle_file(p) for p in [*SAMPLE_IMAGES[:2], str(broken)]]
    status = ui.client().predict(files, "dupes", "sks", "toy", "tiny-sd", 64, "center", api_name="/create_subject")
    assert status.startswith("**Error:** Cannot prepare the subject")
    assert "\nbroken.png: is not an image" in status  # named as the person named it, not by the upload path
    assert not (ui.ws.subjects_dir / "dupes").exists()


def test_only_the_data_dir_is_served(ui):
    def status(path: Path | str) -> int:
        try:
            with urllib.request.urlopen(f"{ui.url}gradio_api/file={path}", timeout=10) as response:
                return response.status
        except urllib.error.HTTPError as error:
            return error.code

    assert status(ROOT / "pyproject.toml") == 403  # the project (the server's working directory)
    assert status("/etc/hostname") == 403
    assert status(ui.ws.store.path) == 403  # the job database
    ui.ws.logs_dir.joinpath("probe.log").write_text("x")
    assert status(ui.ws.logs_dir / "probe.log") == 403
    probe = ui.ws.runs_dir / "probe.txt"
    probe.write_text("x")
    assert status(probe) == 200  # run outputs are what the UI shows
    probe.unlink()


def test_auth_argument():
    from studio.cli.webui_cmd import parse_auth
    from studio.errors import StudioError

    assert parse_auth("me:a:b") == ("me", "a:b") and parse_auth(None) is None
    for bad in ("me", ":pw", "me:"):
        with pytest.raises(StudioError, match="USER:PASS"):
            parse_auth(bad)


def test_jobs_survive_a_restart_of_the_ui(ui):
    """Stop the UI mid-job: the worker goes on and is adopted; when the worker dies too, the job is
    interrupted, and Resume continues it from its last checkpoint to the end.

    The worker is paused (SIGSTOP) while the UI restarts so that a fast machine cannot finish the
    job before the test looks at it.
    """
    client = ui.client()
    if not (ui.ws.subjects_dir / "toy-bear").is_dir():
        create_subject(client, "toy-bear")
    status, job_id = client.predict(subject="toy-bear", recipe="tiny-lora", name="restart", steps=40, batch_size=1,
                                    checkpoint_every=4, sample_every=0, log_every=1, lora_rank=2,
                                    api_name="/start_training")
    assert "Queued" in status, status
    job_id = int(job_id)

    def info():
        return client.predict(job_id, api_name="/job_info")

    wait_for(lambda: info()["step"] >= 5, timeout=300, poll=0.2)
    worker = ui.ws.store.get(job_id).pid
    os.kill(worker, signal.SIGSTOP)
    ui.stop()
    job = ui.ws.store.get(job_id)
    assert job.state == "running" and pid_alive(worker, job.id)  # the worker outlives the UI
    ui.start()
    client = ui.client()
    assert info()["state"] == "running"
    before = info()["step"]
    os.kill(worker, signal.SIGCONT)
    wait_for(lambda: info()["step"] > before, timeout=120, poll=0.2)  # adopted, and still training
    os.kill(worker, signal.SIGKILL)

    stopped = wait_for(lambda: (i := info())["state"] != "running" and i, timeout=60)
    assert stopped["state"] == "interrupted" and "resume" in stopped["reason"]
    assert list((Path(stopped["run_dir"]) / "checkpoints").glob("step-*")), "a resumable checkpoint must exist"

    client.predict(str(job_id), api_name="/resume_job")
    done = wait_for(lambda: (i := info())["state"] in ("finished", "failed") and i, timeout=400)
    assert done["state"] == "finished", done["reason"]
    assert done["step"] == done["total"] == 40
    from trainers.events import read_events

    resumed = [e for e in read_events(done["run_dir"]) if e["type"] == "resumed"]
    assert resumed and 0 < resumed[-1]["step"] <= stopped["step"]
    assert (Path(done["run_dir"]) / "result.json").is_file()
