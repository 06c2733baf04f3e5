"""``studio models list`` and ``studio models materialize NAME DIR``."""

from __future__ import annotations

import argparse

from studio.models import builtins, materialize


def register(subparsers) -> None:
    parser = subparsers.add_parser("models", help="List and materialise built-in models.")
    actions = parser.add_subparsers(dest="models_command", metavar="ACTION")
    actions.required = True
    listing = actions.add_parser("list", help="List built-in models and whether they are materialised.")
    listing.set_defaults(func=run_list)
    make = actions.add_parser("materialize", help="Write a built-in model as a standard folder other tools load.")
    make.add_argument("name", help="Built-in model name, e.g. tiny-sd.")
    make.add_argument("directory", help="Folder to write (must not exist or be empty).")
    make.add_argument("--force", action="store_true", help="Replace an existing folder.")
    make.set_defaults(func=run_materialize)


def run_list(args: argparse.Namespace) -> int:
    for name, model in builtins().items():
        print(f"{name:22s} {model.kind:9s} {model.description}")
    print("\nAlso accepted anywhere a model is asked for: a diffusers folder, a .safetensors checkpoint, or a hub id.")
    return 0


def run_materialize(args: argparse.Namespace) -> int:
    target = materialize(args.name, args.directory, force=args.force)
    print(f"Wrote {args.name} to {target}; load it with diffusers/transformers from_pretrained.")
    return 0
