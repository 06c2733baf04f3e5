"""The environment check every command runs first: cheap (package metadata only, nothing imported),
so a broken environment stops with one clear line naming the packages and the fix, before any work.

``studio doctor`` prints these findings beside versions and the device; the web UI shows them on its
first page.
"""

from __future__ import annotations

import html
import os
from dataclasses import dataclass

from packaging.utils import canonicalize_name

from studio.environment.known_breaks import KNOWN_BREAKS
from studio.environment.packages import installed_version, release, studio_requirements, unmet_requirements_of
from studio.errors import StudioError

ERROR, WARNING = "error", "warning"
SKIP_ENV = "STUDIO_SKIP_ENV_CHECK"  # set to 1 to run anyway (at your own risk)
# Packages whose own declared requirements must hold: an unmet one fails at import.
CORE_PACKAGES = ("diffusers", "transformers", "peft", "accelerate", "huggingface-hub", "safetensors")


@dataclass(frozen=True)
class Finding:
    severity: str  # ERROR blocks every command; WARNING is shown
    packages: tuple[str, ...]  # "name version" for each package involved
    problem: str
    fix: str

    def line(self) -> str:
        return f"{' + '.join(self.packages)}: {self.problem}. Fix: {self.fix}."


class EnvironmentBroken(StudioError):
    """Installed packages are known not to work together (or miss Studio's needs)."""

    def __init__(self, findings: list[Finding]):
        self.findings = findings
        super().__init__(cli_message(findings))


def cli_message(findings: list[Finding]) -> str:
    lines = [finding.line() for finding in findings]
    return "the Python environment is broken: " + " ".join(lines) + " (`studio doctor` shows the whole check.)"


def browser_message(findings: list[Finding]) -> str:
    """The same findings for the web UI's first page (Markdown, HTML-escaped: ranges hold '<')."""
    if not findings:
        return ""
    lines = "\n".join(f"- {html.escape(finding.line())}" for finding in findings)
    return ("### The Python environment is broken\n" + lines + "\n\nTraining, evaluation and export jobs "
            "will fail until this is fixed. The fix is a command to run in a terminal, in Studio's folder; "
            "`studio doctor` there shows the whole check. Then restart the web UI.")


def _described(name: str) -> str:
    version = installed_version(name)
    return f"{name} {version}" if version is not None else f"{name} (not installed)"


def known_break_findings() -> list[Finding]:
    findings = []
    for rule in KNOWN_BREAKS:
        versions = {}
        for name in rule.packages:
            version = installed_version(name)
            if version is None:
                break
            versions[name] = release(version)
        else:
            if rule.breaks(versions):
                findings.append(Finding(ERROR, tuple(_described(name) for name in rule.packages),
                                        rule.what_breaks, rule.fix))
    return findings


def requirement_findings(already_named: set[str]) -> list[Finding]:
    """Studio's own ranges (pyproject) and the core libraries' declared requirements."""
    findings = []
    for requirement in studio_requirements():
        name = canonicalize_name(requirement.name)
        if name in already_named:
            continue
        version = installed_version(name)
        if version is None:
            findings.append(Finding(ERROR, (f"{name} (not installed)",), f"Studio needs {requirement}",
                                    "run ./scripts/setup, or pip install -e ."))
        elif not requirement.specifier.contains(release(version), prereleases=True):
            findings.append(Finding(ERROR, (f"{name} {version}",), f"Studio needs {requirement}",
                                    f"pip install '{requirement}' (or run ./scripts/setup)"))
    for package in CORE_PACKAGES:
        if installed_version(package) is None:
            continue
        for requirement, version in unmet_requirements_of(package):
            needed = canonicalize_name(requirement.name)
            if needed in already_named:
                continue
            have = f"{needed} {version}" if version is not None else f"{needed} (not installed)"
            findings.append(Finding(ERROR, (_described(package), have),
                                    f"{package} needs {requirement}",
                                    f"pip install '{requirement}' (or run ./scripts/setup)"))
    return findings


def quick_check() -> list[Finding]:
    """Every finding the cheap check makes (metadata only; a few milliseconds)."""
    findings = known_break_findings()
    named = {canonicalize_name(text.split()[0]) for finding in findings for text in finding.packages}
    return findings + requirement_findings(named)


def blocking_findings() -> list[Finding]:
    return [finding for finding in quick_check() if finding.severity == ERROR]


def require_working_environment() -> None:
    """Raise :class:`EnvironmentBroken` with every blocking finding, unless STUDIO_SKIP_ENV_CHECK=1."""
    if os.environ.get(SKIP_ENV) == "1":
        return
    errors = blocking_findings()
    if errors:
        raise EnvironmentBroken(errors)
