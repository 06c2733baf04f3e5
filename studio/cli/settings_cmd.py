"""``studio settings``: every training setting with its type, default, range and help."""

from __future__ import annotations

import argparse

from studio.settings_doc import settings_markdown


def register(subparsers) -> None:
    parser = subparsers.add_parser("settings", help="List every training setting (from the one declaration).")
    parser.add_argument("--markdown", action="store_true", help="Print the markdown table of docs/settings.md.")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    print(settings_markdown(), end="")
    return 0
