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


def check_port_free(host: str, port: int) -> None:
    """Refuse, naming the flag, a port that is out of range or already in use (before gradio starts)."""
    import socket

    if not 1 <= port <= 65535:
        raise StudioError(f"--port {port} is not a port number; use one from 1 to 65535 (default 7860).")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        raise StudioError(f"--host {host} cannot be resolved ({error}); use 127.0.0.1 or this machine's address.") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as error:
            raise StudioError(
                f"Cannot serve on {host}:{port}: {error.strerror or error}. Another program (perhaps another "
                f"`studio webui`) uses that port; stop it or pass another --port, e.g. --port {port + 1 if port < 65535 else 7860}."
            ) from None


def run(args: argparse.Namespace) -> int:
    auth = parse_auth(args.auth)
    if args.host not in ("127.0.0.1", "localhost", "::1") and auth is None:
        print(f"warning: serving on {args.host} without --auth; anyone who can reach this port can use Studio.")
    check_port_free(args.host, args.port)
    from webui.env import configure

    configure(args.data_dir)  # before gradio is imported
    from webui.app import launch

    launch(host=args.host, port=args.port, auth=auth, data_dir=args.data_dir, dispatch=not args.no_dispatch)
    return 0
