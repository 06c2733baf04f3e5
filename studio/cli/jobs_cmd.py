"""``studio jobs``: the same job queue as the web UI, from a terminal (a thin front over studio.jobs)."""

from __future__ import annotations

import argparse
import datetime as dt
import time
from typing import Any

from studio.errors import StudioError


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "jobs",
        help="list, submit, cancel and resume queued jobs (shared with the web UI)",
        description=(
            "The persistent job queue in DATA_DIR/jobs.sqlite. Jobs run in worker processes started by the web "
            "UI (`studio webui`) or by `studio jobs run`; both read the same queue."
        ),
    )
    parser.add_argument("--data-dir", metavar="DIR", help="studio data directory (default $STUDIO_DATA_DIR or ~/.cache/studio)")
    actions = parser.add_subparsers(dest="jobs_command", metavar="ACTION")
    actions.required = True

    listing = actions.add_parser("list", help="list jobs, newest first")
    listing.add_argument("--state", action="append", help="only jobs in this state (repeatable)")
    listing.set_defaults(func=run_list)

    show = actions.add_parser("show", help="details, progress and log tail of one job")
    show.add_argument("job_id", type=int)
    show.set_defaults(func=run_show)

    cancel = actions.add_parser("cancel", help="stop a job (training checkpoints first and can be resumed)")
    cancel.add_argument("job_id", type=int)
    cancel.add_argument("--no-wait", action="store_true", help="only ask; do not wait for the worker to stop")
    cancel.set_defaults(func=run_cancel)

    resume = actions.add_parser("resume", help="queue a cancelled, failed or interrupted job again")
    resume.add_argument("job_id", type=int)
    resume.set_defaults(func=run_resume)

    submit = actions.add_parser("submit", help="queue a training job")
    submit.add_argument("--recipe", help="recipe name in recipes/ or a .yaml path")
    submit.add_argument("--subject", required=True, help="subject folder, or the name of a subject in the data dir")
    submit.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a setting, e.g. --set steps=200 (repeatable)")
    submit.add_argument("--name", help="job name (default: the subject's folder name)")
    submit.add_argument("--device", help="device to queue for (default cuda:0 with a GPU, else cpu)")
    submit.set_defaults(func=run_submit)

    runner = actions.add_parser("run", help="start queued jobs in the foreground (when no web UI is running)")
    runner.add_argument("--until-idle", action="store_true", help="exit when nothing is queued or running")
    runner.add_argument("--max-per-device", type=int, default=1, help="jobs at a time per device (default 1)")
    runner.set_defaults(func=run_dispatcher)


def _workspace(args: argparse.Namespace):
    import os

    from studio.jobs import Workspace
    from studio.paths import DATA_DIR_ENV

    if args.data_dir:  # built-in models and caches then live there too, as in the worker
        os.environ[DATA_DIR_ENV] = args.data_dir
    return Workspace.open(args.data_dir)


def _when(timestamp: float | None) -> str:
    return dt.datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S") if timestamp else "-"


def run_list(args: argparse.Namespace) -> int:
    ws = _workspace(args)
    jobs = ws.store.list(states=tuple(args.state) if args.state else None)
    if not jobs:
        print(f"No jobs in {ws.store.path}.")
        return 0
    print(f"{'ID':>4}  {'KIND':6}  {'STATE':11}  {'CREATED':19}  NAME")
    for job in jobs:
        print(f"{job.id:>4}  {job.kind:6}  {job.state:11}  {_when(job.created):19}  {job.name}")
    return 0


def run_show(args: argparse.Namespace) -> int:
    from studio.jobs import job_progress

    ws = _workspace(args)
    job = ws.store.get(args.job_id)
    progress = job_progress(job, ws.logs_dir)
    rows = [
        ("job", job.label), ("state", progress.summary()), ("run", job.run_dir), ("device", job.device),
        ("created", _when(job.created)), ("started", _when(job.started)), ("ended", _when(job.ended)),
    ]
    if job.parent_id:
        rows.append(("of job", f"#{job.parent_id}"))
    if job.reason:
        rows.append(("reason", job.reason))
    if progress.samples:
        rows.append(("samples", f"{len(progress.samples)} (latest {progress.samples[-1].path})"))
    for key, value in rows:
        print(f"{key:>8}: {value}")
    if progress.log_tail:
        print("\n" + progress.log_tail)
    return 0


def run_cancel(args: argparse.Namespace) -> int:
    from studio.jobs import cancel
    from studio.jobs.dispatcher import KILL_AFTER_S, enforce_cancellations

    ws = _workspace(args)
    job = cancel(ws, args.job_id)
    if job.state != "running" or args.no_wait:
        print(f"{job.label}: {job.state if job.state != 'running' else 'cancel requested'}.")
        return 0
    print(f"{job.label}: asked to stop; waiting for it to checkpoint...", flush=True)
    sent: dict[int, int] = {}
    deadline = time.monotonic() + KILL_AFTER_S + 5
    while time.monotonic() < deadline:
        enforce_cancellations(ws, sent)
        job = ws.store.get(job.id)
        if job.state != "running":
            break
        time.sleep(0.5)
    print(f"{job.label}: {job.state}." + (f" Resume with `studio jobs resume {job.id}`." if job.kind == "train" else ""))
    return 0


def run_resume(args: argparse.Namespace) -> int:
    from studio.jobs import resume

    job = resume(_workspace(args), args.job_id)
    print(f"{job.label} queued again" + (" (continues from its last checkpoint)." if job.resume else "."))
    return 0


def run_submit(args: argparse.Namespace) -> int:
    from studio.config import load_config, parse_overrides
    from studio.jobs import submit_train

    config = load_config(args.recipe, parse_overrides(args.overrides))
    job = submit_train(_workspace(args), config, args.subject, name=args.name, device=args.device)
    print(f"Queued {job.label} ({config.method}, {config.steps} steps on {config.base}) -> {job.run_dir}")
    print("It starts when `studio webui` or `studio jobs run` is running.")
    return 0


def run_dispatcher(args: argparse.Namespace) -> int:
    from studio.jobs import Dispatcher

    if args.max_per_device < 1:
        raise StudioError("--max-per-device must be at least 1.")
    ws = _workspace(args)
    dispatcher = Dispatcher(ws, max_per_device=args.max_per_device).start()
    print(f"Dispatching jobs from {ws.store.path} (Ctrl-C stops dispatching; running workers continue).", flush=True)
    try:
        if args.until_idle:
            time.sleep(dispatcher.poll_s * 2)
            dispatcher.wait_idle()
        else:
            while True:
                time.sleep(3600)
    finally:
        dispatcher.stop()
    return 0
