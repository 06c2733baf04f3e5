"""``studio webui``: the web UI (Gradio), private and offline by default."""

from __future__ import annotations

import argparse
from typing import Any

from studio.errors import StudioError


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "webui",
        help="open the web UI: subject, train, jobs, evaluate, export, generate",
        description=(
            "Serve the Studio web UI. It binds to 127.0.0.1 (this machine only) unless --host says otherwise, "
            "sends no analytics, and serves only files inside the data directory. Jobs run in worker processes "
            "and survive a restart of the UI."
        ),
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; 0.0.0.0 exposes it to your network)")
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    parser.add_argument("--auth", metavar="USER:PASS", help="require this user name and password")
    parser.add_argument("--data-dir", metavar="DIR", help="studio data directory (default $STUDIO_DATA_DIR or ~/.cache/studio)")
    parser.add_argument("--no-dispatch", action="store_true", help="do not start queued jobs from this process")
    # The UI starts even in a broken environment and shows the check's findings on its first page.
    parser.set_defaults(func=run, skip_environment_check=True)


def parse_auth(value: str | None) -> tuple[str, str] | None:
    if not value:
        return None
    user, sep, password = value.partition(":")
    if not sep or not user or not password:
        raise StudioError("--auth must look like USER:PASS, both non-empty (e.g. --auth me:a-long-passphrase).")
    return user, password


def run(args: argparse.Namespace) -> int:
    auth = parse_auth(args.auth)
    if args.host not in ("127.0.0.1", "localhost", "::1") and auth is None:
        print(f"warning: serving on {args.host} without --auth; anyone who can reach this port can use Studio.")
    from webui.env import configure

    configure(args.data_dir)  # before gradio is imported
    from webui.app import launch

    launch(host=args.host, port=args.port, auth=auth, data_dir=args.data_dir, dispatch=not args.no_dispatch)
    return 0
