"""``studio train``: train a subject with a recipe, or resume a run."""

from __future__ import annotations

import argparse
from pathlib import Path

from studio.config import load_config, parse_overrides, recipe_names
from studio.errors import ConfigError
from studio.progress import TrainingProgressBar


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="Train LoRA / DreamBooth / textual inversion on a prepared subject.",
        description="Train a subject, or continue a run with --resume RUN.",
    )
    parser.add_argument("--recipe", help=f"Recipe name ({', '.join(recipe_names())}) or a YAML path.")
    parser.add_argument("--subject", help="Subject folder made by `studio prepare`.")
    parser.add_argument("--base", help="Base model (overrides the recipe's): built-in name, folder, .safetensors or hub id.")
    parser.add_argument("--out", help="Run directory to create.")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="Override a setting (repeatable).")
    parser.add_argument("--resume", metavar="RUN", help="Continue RUN from its last checkpoint.")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="Same as --set allow_pickle=true: allow a pickle (.ckpt/.bin) base or VAE (only from sources you trust).")
    parser.add_argument("--quiet", action="store_true", help="No progress bar.")
    parser.add_argument("--plan", action="store_true",
                        help="Only print the memory plan (predicted GPU peak, whether it fits, settings that would make it fit) and exit.")
    parser.add_argument("--gpu-memory", type=float, metavar="GIB",
                        help="Plan for a GPU with this much memory (GiB) instead of this machine's.")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import trainers

    progress = TrainingProgressBar(disable=args.quiet)
    if args.resume:
        if args.allow_pickle or args.overrides:
            raise ConfigError(f"--resume continues {args.resume} with the settings it was started with; drop "
                              "--allow-pickle/--set (or start a new run with --out).")
        result = trainers.resume(Path(args.resume), listener=progress, show_progress=not args.quiet)
        print(f"Finished: {Path(args.resume) / result['artifact']}")
        return 0
    if not args.plan and (not args.subject or not args.out):
        raise ConfigError("studio train needs --subject SUBJECT_DIR and --out RUN_DIR (or --resume RUN_DIR).")
    overrides = parse_overrides(args.overrides)
    if args.base:
        overrides["base"] = args.base
    if args.allow_pickle:
        overrides["allow_pickle"] = True
    config = load_config(args.recipe, overrides)
    if args.plan or args.gpu_memory is not None:
        from studio.memory_plan import plan_memory

        try:
            plan = plan_memory(config, device_gib=args.gpu_memory)
        except LookupError:
            print(f"Memory plan: the shape of {config.base} is not known without downloading it; no prediction.")
            plan = None
        if plan is not None:
            print(plan.describe())
        if args.plan:
            return 0 if plan is None or plan.fits is not False else 1
    result = trainers.train(config, Path(args.subject), Path(args.out), listener=progress, show_progress=not args.quiet)
    print(f"Finished: {Path(args.out) / result['artifact']}")
    return 0
