"""``studio doctor``: versions, device, optional pieces and every environment finding, each with its fix."""

from __future__ import annotations

import platform
import shutil
import sys
from dataclasses import dataclass, field
from importlib import util as importlib_util
from pathlib import Path

from studio.environment.check import ERROR, WARNING, Finding, quick_check
from studio.environment.lockfile import lock_path, parse_lock, tested_torch
from studio.environment.packages import KEY_PACKAGES, installed_version, release


@dataclass
class OptionalPiece:
    name: str
    available: bool
    detail: str


@dataclass
class DoctorReport:
    python: str
    platform: str
    versions: dict[str, str | None]
    tested_torch: str | None
    device: str | None
    optional: list[OptionalPiece] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(finding.severity == ERROR for finding in self.findings)

    def as_dict(self) -> dict:
        return {
            "python": self.python, "platform": self.platform, "versions": self.versions,
            "tested_torch": self.tested_torch, "device": self.device, "ok": self.ok,
            "optional": [vars(piece) for piece in self.optional],
            "findings": [{"severity": f.severity, "packages": list(f.packages), "problem": f.problem,
                          "fix": f.fix, "line": f.line()} for f in self.findings],
        }

    def text(self) -> str:
        lines = [f"Studio on Python {self.python} ({self.platform})", "packages:"]
        for name, version in self.versions.items():
            shown = version or "not installed"
            if name == "torch" and self.tested_torch and version and release_text(version) != self.tested_torch:
                shown += f"  (CI tests {self.tested_torch})"
            lines.append(f"  {name:<14}{shown}")
        if self.device:
            lines.append(f"device: {self.device}")
        lines.append("optional:")
        lines.extend(f"  {'yes' if piece.available else 'no ':<4}{piece.name}: {piece.detail}" for piece in self.optional)
        if self.findings:
            lines.append("findings:")
            lines.extend(f"  {finding.severity}: {finding.line()}" for finding in self.findings)
        lines.append("environment OK" if self.ok else "environment BROKEN: fix the errors above before training")
        return "\n".join(lines)


def release_text(version: str) -> str:
    return version.split("+")[0]


def lock_drift_findings(lock: Path | None = None) -> list[Finding]:
    """Installed versions that differ from the tested lock (only in a source checkout that has one)."""
    path = lock or lock_path()
    if not path.exists():
        return []
    differing = []
    for pin in parse_lock(path.read_text()):
        if not pin.applies():
            continue
        version = installed_version(pin.name)
        if version is not None and release(version) != pin.version:
            differing.append(f"{pin.name} {version} (lock {pin.version})")
    if not differing:
        return []
    shown = ", ".join(differing[:6]) + (f" and {len(differing) - 6} more" if len(differing) > 6 else "")
    return [Finding(WARNING, (f"{len(differing)} package(s)",), f"differ from the tested lock: {shown}",
                    "run ./scripts/setup to install the tested versions")]


def optional_pieces() -> list[OptionalPiece]:
    pieces = [
        OptionalPiece("8-bit optimizers (bitsandbytes)", importlib_util.find_spec("bitsandbytes") is not None,
                      "adamw8bit" if importlib_util.find_spec("bitsandbytes") else "pip install bitsandbytes"),
        OptionalPiece("web UI (gradio)", importlib_util.find_spec("gradio") is not None,
                      "studio webui" if importlib_util.find_spec("gradio") else "pip install gradio"),
    ]
    has_playwright = importlib_util.find_spec("playwright") is not None
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    pieces.append(OptionalPiece(
        "browser tests (playwright + Chromium)", has_playwright and browser is not None,
        browser if has_playwright and browser else "./scripts/install_browser (Debian's chromium) and pip install playwright",
    ))
    return pieces


def diagnose(*, with_device: bool = True) -> DoctorReport:
    from studio.environment.device import detect_device

    lock = lock_path()
    tested = tested_torch(lock.read_text()) if lock.exists() else None
    versions = {name: (str(v) if (v := installed_version(name)) is not None else None) for name in KEY_PACKAGES}
    findings = quick_check() + lock_drift_findings(lock)
    device = None
    if with_device and versions["torch"] is not None and not any(f.severity == ERROR for f in findings):
        try:
            device = detect_device().line()
        except Exception as error:  # a broken CUDA install is a finding, not a crash
            findings.append(Finding(ERROR, (f"torch {versions['torch']}",), f"the device check failed ({error})",
                                    "reinstall torch for your CUDA version, or run ./scripts/setup"))
    return DoctorReport(
        python=platform.python_version(), platform=f"{sys.platform} {platform.machine()}", versions=versions,
        tested_torch=tested,
        device=device, optional=optional_pieces(), findings=findings,
    )
