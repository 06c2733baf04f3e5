"""The committed dependency lock (``requirements.lock``): reading it, checking it against pyproject and
against what is installed, and pruning what only torch needs.

The lock is a pip constraints file compiled by ``uv pip compile --universal`` from pyproject.toml's
dependencies, the ``test`` extra and the build backend (``[build-system] requires``). torch, and the packages that only torch pulls in (CUDA libraries,
triton, sympy, ...), are left out on purpose: ``scripts/setup`` keeps the torch a user already has (a
CUDA build) or installs the CPU wheel, and the lock must fit either. The torch that CI tested with is
recorded in the lock's header (``# tested-with: torch==X``).
"""

from __future__ import annotations

import re

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

LOCK_NAME = "requirements.lock"
TESTED_WITH_PREFIX = "# tested-with:"
# torch itself: scripts/setup installs it (keeping a CUDA build), never the lock.
UNLOCKED_ROOTS = frozenset({"torch"})
BUILD_SYSTEM = "build-system"  # the lock's name for pyproject's [build-system] requires


@dataclass(frozen=True)
class LockedPin:
    name: str  # canonical name
    version: Version
    marker: Marker | None
    via: tuple[str, ...]  # canonical names of the packages that need it ("studio" for pyproject, BUILD_SYSTEM)

    def applies(self, environment: dict[str, str] | None = None) -> bool:
        return self.marker is None or self.marker.evaluate(environment)


def project_root() -> Path:
    return Path(__file__).resolve().parents[2]


def lock_path(root: Path | None = None) -> Path:
    return (root or project_root()) / LOCK_NAME


_PIN = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[^\s;]+)\s*(?:;\s*(?P<marker>.+))?$")


def parse_lock(text: str) -> list[LockedPin]:
    """Pins with their markers and the 'via' annotations uv writes under each."""
    pins: list[LockedPin] = []
    current: dict | None = None

    def flush() -> None:
        if current is not None:
            pins.append(LockedPin(current["name"], current["version"], current["marker"], tuple(current["via"])))

    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        match = _PIN.match(line)
        if match:
            flush()
            marker = match.group("marker")
            current = {"name": canonicalize_name(match.group("name")), "version": Version(match.group("version")),
                       "marker": Marker(marker) if marker else None, "via": []}
            continue
        if current is None or not line.startswith("#"):
            continue
        body = line.lstrip("#").strip()
        if body == "via":
            continue
        if body.startswith("via "):
            body = body[4:].strip()
        if body and not body.startswith(("-r ", "-c ")):
            if body.startswith(BUILD_SYSTEM):
                current["via"].append(BUILD_SYSTEM)
            else:
                current["via"].append("studio" if "(pyproject.toml)" in body else canonicalize_name(body.split()[0]))
    flush()
    return pins


def tested_torch(text: str) -> str | None:
    """The torch version CI tested the lock with (its header's ``# tested-with: torch==X``)."""
    for line in text.splitlines():
        if line.startswith(TESTED_WITH_PREFIX):
            return line[len(TESTED_WITH_PREFIX):].strip().removeprefix("torch==")
    return None


def prune_torch_only(pins: Iterable[LockedPin]) -> tuple[list[LockedPin], set[str]]:
    """Drop torch and every package that only torch (or another dropped package) needs.

    Returns the kept pins and the dropped names. A package also needed by something else stays locked.
    """
    pins = list(pins)
    dropped = set(UNLOCKED_ROOTS)
    changed = True
    while changed:
        changed = False
        for pin in pins:
            if pin.name not in dropped and pin.via and set(pin.via) <= dropped:
                dropped.add(pin.name)
                changed = True
    return [pin for pin in pins if pin.name not in dropped], dropped


def render_lock(pins: Iterable[LockedPin], *, header: list[str]) -> str:
    lines = list(header)
    for pin in pins:
        line = f"{pin.name}=={pin.version}"
        if pin.marker is not None:
            line += f" ; {pin.marker}"
        lines.append(line)
        lines.extend(f"    # via {via}" for via in pin.via)
    return "\n".join(lines) + "\n"


def project_requirements(root: Path | None = None, extras: tuple[str, ...] = ("test",)) -> list[Requirement]:
    """pyproject.toml's dependencies plus the given extras, as parsed requirements."""
    data = tomllib.loads(((root or project_root()) / "pyproject.toml").read_text())
    project = data["project"]
    texts = list(project.get("dependencies", []))
    for extra in extras:
        texts.extend(project.get("optional-dependencies", {}).get(extra, []))
    return [Requirement(text) for text in texts]


def build_requirements(root: Path | None = None) -> list[Requirement]:
    """pyproject.toml's ``[build-system] requires``: what pip builds Studio with. Locked like the rest
    (``scripts/setup`` passes the lock as build constraints too), so a fresh machine builds with what CI did."""
    data = tomllib.loads(((root or project_root()) / "pyproject.toml").read_text())
    return [Requirement(text) for text in data.get("build-system", {}).get("requires", [])]


def disagreements(requirements: Iterable[Requirement], pins: Iterable[LockedPin],
                  environment: dict[str, str] | None = None) -> list[str]:
    """Each direct requirement the lock misses or pins outside pyproject's range, for one environment."""
    applicable = {pin.name: pin for pin in pins if pin.applies(environment)}
    problems = []
    for requirement in requirements:
        name = canonicalize_name(requirement.name)
        if name in UNLOCKED_ROOTS or (requirement.marker and not requirement.marker.evaluate(environment)):
            continue
        pin = applicable.get(name)
        if pin is None:
            problems.append(f"{requirement} is in pyproject.toml but not in {LOCK_NAME}")
        elif not requirement.specifier.contains(pin.version, prereleases=True):
            problems.append(f"{LOCK_NAME} pins {name}=={pin.version}, outside pyproject.toml's {requirement}")
    return problems
