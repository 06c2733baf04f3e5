"""Re-resolve the dependency lock: ``python -m studio.environment.relock`` (``scripts/relock`` runs it,
then installs the new set and runs the whole suite).

Resolution is uv's (``uv pip compile --universal``: one file with environment markers for every
supported Python), against pyproject.toml's ranges and build backend plus the torch CI tests with, so the rest of the set
is chosen to work beside that torch. torch and what only torch needs are then pruned (see
:mod:`studio.environment.lockfile`).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from studio.atomic import write_text
from studio.environment.lockfile import (
    BUILD_SYSTEM,
    LOCK_NAME,
    TESTED_WITH_PREFIX,
    build_requirements,
    lock_path,
    parse_lock,
    project_root,
    prune_torch_only,
    render_lock,
)

DEFAULT_TORCH = "2.13.0"
OLDEST_PYTHON = "3.10"


def header(torch_version: str) -> list[str]:
    return [
        "# Studio's dependency lock: the exact version of every dependency, direct and transitive, that CI",
        "# tested. scripts/setup installs with it as pip constraints. Do not edit by hand; move it forward",
        "# on purpose with ./scripts/relock (re-resolves, installs, runs the suite). See docs/dependencies.md.",
        "# torch, and what only torch needs, are left out: scripts/setup keeps your torch (a CUDA build) or",
        "# installs the CPU wheel.",
        f"{TESTED_WITH_PREFIX} torch=={torch_version}",
    ]


def compile_lock(root: Path, torch_version: str, upgrade_packages: list[str], full_upgrade: bool) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        constraints = Path(tmp) / "torch.txt"
        constraints.write_text(f"torch=={torch_version}\n")
        build = Path(tmp) / "build-system.txt"  # the build backend pip builds Studio with is locked too
        build.write_text("".join(f"{requirement}\n" for requirement in build_requirements(root)))
        output = Path(tmp) / "lock.txt"
        command = [
            sys.executable, "-m", "uv", "pip", "compile", "pyproject.toml", str(build), "--extra", "test", "--universal",
            "--python-version", OLDEST_PYTHON, "-c", str(constraints), "-o", str(output), "--quiet",
            "--no-header",
        ]
        existing = lock_path(root)
        if existing.exists() and not full_upgrade:
            # uv prefers the pins already in its output file: only what was asked to move moves.
            output.write_text(existing.read_text())
        if full_upgrade:
            command.append("--upgrade")
        for name in upgrade_packages:
            command += ["--upgrade-package", name]
        subprocess.run(command, cwd=root, check=True)
        return output.read_text().replace(f"-r {build}", BUILD_SYSTEM)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m studio.environment.relock", description=__doc__)
    parser.add_argument("--torch", default=DEFAULT_TORCH, help=f"the torch version CI tests with (default {DEFAULT_TORCH})")
    parser.add_argument("--upgrade-package", action="append", default=[], metavar="NAME",
                        help="move only this package (and what it needs) forward; may repeat")
    args = parser.parse_args(argv)
    root = project_root()
    full_upgrade = not args.upgrade_package
    pins = parse_lock(compile_lock(root, args.torch, args.upgrade_package, full_upgrade))
    kept, dropped = prune_torch_only(pins)
    write_text(lock_path(root), render_lock(kept, header=header(args.torch)))
    print(f"{LOCK_NAME}: {len(kept)} pins; left to torch: {', '.join(sorted(dropped))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
