"""The dependency lock and the environment check (``studio doctor``, and the check every command runs).

A broken environment is made for real where it is cheap: a ``*.dist-info`` folder first on PYTHONPATH
is what ``importlib.metadata`` (and so pip, and Studio's check) reads as the installed version. The
packages' code stays the working one, so the tests show the check stops the command *before* any work.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from studio.environment.check import browser_message, quick_check
from studio.environment.doctor import lock_drift_findings
from studio.environment.known_breaks import torchvision_mismatch
from studio.environment.lockfile import (
    LOCK_NAME,
    UNLOCKED_ROOTS,
    build_requirements,
    disagreements,
    lock_path,
    parse_lock,
    project_requirements,
    prune_torch_only,
)
from studio.environment.lockfile import (
    tested_torch as torch_tested_with,
)

ROOT = Path(__file__).resolve().parent.parent
PYTHONS = ("3.10", "3.11", "3.12", "3.13")


def environment_for(python: str) -> dict[str, str]:
    return {"python_version": python, "python_full_version": f"{python}.0", "sys_platform": "linux",
            "platform_machine": "x86_64", "platform_system": "Linux", "os_name": "posix",
            "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}


def fake_installed(tmp_path: Path, **versions: str) -> Path:
    """A folder that, first on PYTHONPATH, makes package metadata report these versions."""
    folder = tmp_path / "fake-site"
    for name, version in versions.items():
        info = folder / f"{name}-{version}.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    return folder


def run_studio(args: list[str], pythonpath: Path, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    environment = dict(os.environ, PYTHONPATH=str(pythonpath), HF_HUB_OFFLINE="1", **env)
    return subprocess.run([sys.executable, "-m", "studio", *args], cwd=cwd, env=environment,
                          capture_output=True, text=True, timeout=120)


# ---------------------------------------------------------------------------- the lock
def test_lock_agrees_with_pyproject_on_every_supported_python():
    pins = parse_lock(lock_path().read_text())
    requirements = project_requirements()
    assert {r.name for r in requirements} >= {"diffusers", "transformers", "peft", "pytest"}
    for python in PYTHONS:
        assert disagreements(requirements, pins, environment_for(python)) == [], (
            f"{LOCK_NAME} and pyproject.toml disagree on Python {python}: run ./scripts/relock")


def test_lock_pins_the_build_backend_and_setup_builds_with_it():
    """pip builds Studio in an isolated environment from [build-system] requires; the lock pins that backend
    within pyproject's range, and scripts/setup hands the lock to pip for the build too."""
    pins = parse_lock(lock_path().read_text())
    requirements = build_requirements()
    assert {r.name for r in requirements} == {"setuptools"}
    for python in PYTHONS:
        assert disagreements(requirements, pins, environment_for(python)) == [], (
            f"{LOCK_NAME} does not pin pyproject.toml's build backend on Python {python}: run ./scripts/relock")
    assert any("build-system" in pin.via for pin in pins if pin.name == "setuptools")
    assert "--build-constraint requirements.lock" in (ROOT / "scripts" / "setup").read_text()


def test_lock_disagreement_is_caught():
    """The check above can fail: a lock outside pyproject's range, or missing a dependency."""
    pins = parse_lock("transformers==5.24.0\n    # via studio\npeft==0.21.2\n")
    problems = disagreements([Requirement("transformers>=4.44,<5.24"), Requirement("peft>=0.13"),
                              Requirement("diffusers>=0.32")], pins, environment_for("3.11"))
    assert len(problems) == 2
    assert "transformers==5.24.0" in problems[0] and "diffusers" in problems[1]


def test_lock_leaves_torch_to_setup_and_records_the_tested_torch():
    text = lock_path().read_text()
    names = {pin.name for pin in parse_lock(text)}
    assert not names & (UNLOCKED_ROOTS | {"triton", "sympy"}), "torch-only packages must stay out of the lock"
    assert not any(name.startswith("nvidia-") for name in names)
    assert Version(torch_tested_with(text)) >= Version("2.3")
    assert {"diffusers", "transformers", "peft", "accelerate", "huggingface-hub", "tokenizers"} <= names


def test_prune_keeps_what_others_need():
    uv_output = """
torch==2.13.0
    # via studio (pyproject.toml)
sympy==1.14.0
    # via torch
mpmath==1.3.0
    # via sympy
filelock==4.3.1
    # via
    #   datasets
    #   torch
datasets==5.2.0
    # via studio (pyproject.toml)
"""
    kept, dropped = prune_torch_only(parse_lock(uv_output))
    assert [pin.name for pin in kept] == ["filelock", "datasets"]
    assert dropped == {"torch", "sympy", "mpmath"}


@pytest.mark.skipif(bool(os.environ.get("STUDIO_UNLOCKED")), reason="set up without the lock on purpose")
def test_this_environment_was_installed_from_the_lock():
    """scripts/setup installs the lock: what CI tests is what the lock says."""
    assert lock_drift_findings() == []


# ---------------------------------------------------------------------------- the check
def test_working_environment_has_no_findings():
    assert quick_check() == []


def test_torchvision_pairing_rule():
    assert not torchvision_mismatch({"torch": Version("2.13.0"), "torchvision": Version("0.28.0")})
    assert not torchvision_mismatch({"torch": Version("2.14.1"), "torchvision": Version("0.29.1")})
    assert torchvision_mismatch({"torch": Version("2.13.0"), "torchvision": Version("0.29.1")})


def test_train_with_known_broken_pair_stops_before_any_work(tmp_path, sample_subject):
    """transformers 5.24 + peft 0.21: `studio train` with a text-encoder LoRA stops at once, naming both
    packages and the fix; nothing is created at --out; `studio doctor` says the same and exits 1."""
    fake = fake_installed(tmp_path, transformers="5.24.0", peft="0.21.2")
    out = tmp_path / "run"
    started = time.perf_counter()
    train = run_studio(["train", "--recipe", "tiny-lora", "--set", "train_text_encoder=true",
                        "--subject", str(sample_subject), "--out", str(out)], fake, tmp_path)
    elapsed = time.perf_counter() - started
    assert train.returncode == 2, train.stderr
    message = train.stderr.strip()
    assert "Traceback" not in message and len(message.splitlines()) == 1
    for needle in ("transformers 5.24.0", "peft 0.21.2", "pip install 'transformers<5.24'", "./scripts/setup"):
        assert needle in message
    assert not out.exists()
    assert elapsed < 30, "the check must come before models load"

    doctor = run_studio(["doctor", "--no-device"], fake, tmp_path)
    assert doctor.returncode == 1
    assert "transformers 5.24.0 + peft 0.21.2" in doctor.stdout and "pip install 'transformers<5.24'" in doctor.stdout
    report = json.loads(run_studio(["doctor", "--json", "--no-device"], fake, tmp_path).stdout)
    assert not report["ok"] and report["versions"]["transformers"] == "5.24.0"
    assert report["findings"][0]["line"] in message

    skipped = run_studio(["models", "list"], fake, tmp_path, STUDIO_SKIP_ENV_CHECK="1")
    assert skipped.returncode == 0, skipped.stderr


def test_a_missing_or_too_old_requirement_names_the_range(tmp_path):
    fake = fake_installed(tmp_path, diffusers="0.20.0")
    result = run_studio(["models", "list"], fake, tmp_path)
    assert result.returncode == 2
    assert "diffusers 0.20.0" in result.stderr and "diffusers>=0.32" in result.stderr


def test_doctor_reports_versions_and_device():
    result = subprocess.run([sys.executable, "-m", "studio", "doctor", "--json"], capture_output=True, text=True,
                            timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] and report["findings"] == []
    for name in ("torch", "diffusers", "transformers", "peft", "accelerate", "bitsandbytes", "gradio"):
        assert report["versions"][name], name
    assert report["device"].split(":")[0] in {"cpu", "cuda", "mps"}


def test_browser_message_escapes_version_ranges():
    from studio.environment.check import ERROR, Finding

    message = browser_message([Finding(ERROR, ("transformers 5.24.0", "peft 0.21.2"), "breaks",
                                       "pip install 'transformers<5.24'")])
    assert "transformers&lt;5.24" in message and "<5.24" not in message
    assert "--" not in message  # no command-line flags in the browser


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.skipif(not Path("/usr/bin/chromium").exists(), reason="/usr/bin/chromium is missing; run scripts/install_browser")
def test_web_ui_shows_the_same_findings_on_its_first_page(tmp_path, tmp_path_factory, tiny_data_dir, monkeypatch):
    """The UI starts in a broken environment (the CLI would stop) and says what is wrong, in the browser."""
    from playwright.sync_api import sync_playwright
    from test_jobs import fresh_workspace
    from test_webui_api import UIServer
    from test_webui_browser import CHROMIUM_ARGS

    monkeypatch.setenv("PYTHONPATH", str(fake_installed(tmp_path, transformers="5.24.0", peft="0.21.2")))
    ws = fresh_workspace(tmp_path_factory, tiny_data_dir, "broken-env")
    server = UIServer(ws, ws.root / "ui.log").start()
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
            page = browser.new_page()
            page.goto(server.url)
            banner = page.locator("#environment-problems")
            banner.wait_for(state="visible", timeout=60_000)
            text = banner.inner_text()
            browser.close()
    finally:
        server.stop()
    assert "The Python environment is broken" in text
    for needle in ("transformers 5.24.0 + peft 0.21.2", "pip install 'transformers<5.24'", "studio doctor"):
        assert needle in text
