"""The ``studio`` command. Each subcommand lives in its own module with ``register(subparsers)``."""

from __future__ import annotations

import argparse
import importlib
import sys

from studio.environment.check import require_working_environment
from studio.errors import StudioError, disk_full_error, is_disk_full
from studio.interrupts import sigterm_as_interrupt
from studio.threads import claim_cpu_share, prepare_environment

# Commands that run models: they take a fair share of the CPU's cores (see studio.threads).
CPU_HEAVY_COMMANDS = {"prepare", "train", "demo", "eval", "export", "generate"}

# Subcommand modules, in the order a person works. Each defines register(subparsers).
COMMAND_MODULES = [
    "studio.cli.models_cmd",
    "studio.cli.prepare_cmd",
    "studio.cli.train_cmd",
    "studio.cli.demo_cmd",
    "studio.cli.settings_cmd",
    "studio.cli.eval_cmd",
    "studio.cli.export_cmd",
    "studio.cli.generate_cmd",
    "studio.cli.jobs_cmd",
    "studio.cli.webui_cmd",
    "studio.cli.doctor_cmd",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="studio",
        description="Fine-tune and personalise text-to-image diffusion models.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    prepare_environment()  # before anything imports torch
    parser = build_parser()
    args = parser.parse_args(argv)
    with sigterm_as_interrupt():  # a plain kill unwinds like Ctrl-C: temporaries are removed
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    try:
        if not getattr(args, "skip_environment_check", False):
            require_working_environment()  # cheap: package metadata only, before any work
        if args.command in CPU_HEAVY_COMMANDS:
            claim_cpu_share()  # share the cores fairly with other Studio processes (studio.threads)
        result = args.func(args)
    except StudioError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except OSError as error:
        if not is_disk_full(error):
            raise
        print(f"error: {disk_full_error(error, 'files', error.filename or 'the disk')}", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
