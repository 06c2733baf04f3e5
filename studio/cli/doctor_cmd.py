"""``studio doctor``: is this environment fit to run Studio, and if not, what fixes it."""

from __future__ import annotations

import argparse
import json
from typing import Any


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "doctor",
        help="check the environment: package versions, device, known-broken combinations, each with its fix",
        description=(
            "Print the versions of torch, diffusers, transformers, peft, accelerate, bitsandbytes and gradio, "
            "the device (CUDA/MPS/CPU with memory) and optional pieces, and check for package combinations known "
            "not to work together. Exits 1 when the environment is broken. Every other command runs the quick "
            "part of this check first."
        ),
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--no-device", action="store_true", help="skip the device check (does not import torch)")
    parser.set_defaults(func=run, skip_environment_check=True)


def run(args: argparse.Namespace) -> int:
    from studio.environment.doctor import diagnose

    report = diagnose(with_device=not args.no_device)
    print(json.dumps(report.as_dict(), indent=2) if args.json else report.text())
    return 0 if report.ok else 1
