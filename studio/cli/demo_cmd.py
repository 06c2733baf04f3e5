"""``studio demo``: the whole path offline on the bundled sample subject and a built-in tiny model."""

from __future__ import annotations

import argparse
from pathlib import Path

from studio.config import parse_overrides
from studio.errors import ConfigError
from studio.progress import TrainingProgressBar


def register(subparsers) -> None:
    parser = subparsers.add_parser("demo", help="Prepare the sample subject and train it offline on tiny-sd.")
    parser.add_argument("--out", default="studio-demo", help="Folder for the demo's subject and run (default ./studio-demo).")
    parser.add_argument("--recipe", default="tiny-lora", help="Recipe to train (default tiny-lora).")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from studio.demo import run_demo

    out = Path(args.out)
    if (out / "run").exists():
        raise ConfigError(f"{out / 'run'} already exists; pass another --out or remove it.")
    outcome = run_demo(out, recipe=args.recipe, overrides=parse_overrides(args.overrides), listener=TrainingProgressBar())
    run_dir = outcome["run"]
    print(f"Subject: {outcome['subject']}\nRun:     {run_dir}\nSamples: {run_dir / 'samples'}")
    print(f"Next: studio eval {run_dir}   |   studio export {run_dir} --format kohya --out {out / 'export'}")
    return 0
