"""The worker process: ``python -m studio.jobs.worker JOB_ID --db DATA_DIR/jobs.sqlite``.

One process per job, so a crash, an out-of-memory kill or a stuck CUDA context takes down only
this job, never the web UI. It calls the same functions as the CLI (``trainers.train`` /
``trainers.resume``, ``studio.evaluation.evaluate_run``, ``studio.export.export_run``) and records
how the job ended in the queue. If it dies before it can, the dispatcher records it instead.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from studio.environment.check import require_working_environment
from studio.errors import StudioError, message_for
from studio.jobs.db import CANCELLED, FAILED, FINISHED, RUNNING, Job, JobStore
from studio.jobs.progress import ProgressFile, progress_path
from studio.jobs.workspace import Workspace
from studio.threads import claim_cpu_share
from studio.work_progress import reporting_to

EXIT_FAILED, EXIT_CANCELLED = 1, 3


class _Stop(BaseException):
    """SIGTERM in an evaluation or export (training handles SIGTERM itself)."""


def _print_event(event: dict) -> None:
    kind = event.get("type")
    if kind == "step":
        eta = event.get("eta_s")
        print(
            f"step {event.get('step')}/{event.get('total')}  loss {event.get('loss', float('nan')):.4f}  "
            f"lr {event.get('lr', 0):.2e}  {event.get('it_s') or 0:.2f} it/s" + (f"  eta {eta:.0f} s" if eta else ""),
            flush=True,
        )
    else:
        details = {k: v for k, v in event.items() if k not in ("type", "time", "paths", "prompts")}
        print(f"{kind}: {json.dumps(details, default=str)}", flush=True)


def run_train(job: Job) -> None:
    import trainers
    from studio.config import build_config

    if job.resume:
        print(f"Resuming {job.run_dir} from its last checkpoint", flush=True)
        trainers.resume(job.run_dir, listener=_print_event)
        return
    config = build_config(job.params["config"], source=f"job #{job.id}")
    trainers.train(config, job.params["subject_dir"], job.run_dir, listener=_print_event)


def _accepted(function: Any, options: dict[str, Any]) -> dict[str, Any]:
    """Options the function takes; others are reported and dropped (the API may be newer or older)."""
    names = set(inspect.signature(function).parameters)
    dropped = sorted(set(options) - names)
    if dropped:
        print(f"note: ignoring options this Studio's API does not take: {', '.join(dropped)}", flush=True)
    return {k: v for k, v in options.items() if k in names}


def run_eval(job: Job) -> None:
    from studio.evaluation import evaluate_run

    report = evaluate_run(job.run_dir, **_accepted(evaluate_run, job.params.get("options", {})))
    print(f"evaluation written to {Path(job.run_dir) / 'eval'}; scores: {json.dumps(report.get('scores', {}))}", flush=True)


def run_export(job: Job) -> None:
    from studio.export import export_run
    from trainers.checkpoint_view import checkpoint_run

    params = job.params
    extra = _accepted(export_run, {"log": lambda message: print(message, flush=True)})
    weights = checkpoint_run(job.run_dir, params.get("checkpoint", "best"))  # the best checkpoint unless asked
    if weights != Path(job.run_dir).resolve():
        print(f"exporting checkpoint {weights.parent.name} (checkpoint: {params.get('checkpoint', 'best')})", flush=True)
    result = export_run(weights, params["formats"], params["out_dir"], force=bool(params.get("force", True)), **extra)
    for item in getattr(result, "files", []) or []:
        print(f"  {item.get('path')}: {item.get('format')} ({item.get('check', 'verified')})", flush=True)
    print(f"exported to {params['out_dir']}", flush=True)


RUNNERS = {"train": run_train, "eval": run_eval, "export": run_export}


def execute(store: JobStore, job_id: int) -> int:
    """Run job ``job_id`` (already marked running by the dispatcher) and record how it ended."""
    job = store.get(job_id)
    if job.state != RUNNING:
        print(f"job #{job.id} is {job.state}, not running; nothing to do", file=sys.stderr)
        return EXIT_FAILED
    print(f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] worker {os.getpid()} starts {job.label} in {job.run_dir}", flush=True)
    if job.kind != "train":
        def stop(signum, frame):
            raise _Stop

        signal.signal(signal.SIGTERM, stop)
    progress = progress_path(job.id, Workspace(Path(store.path).parent, store).logs_dir)
    progress.unlink(missing_ok=True)
    try:
        require_working_environment()  # the same check and message as the CLI's, before any work
        with reporting_to(ProgressFile(progress)):  # evaluation, export and class images report here
            RUNNERS[job.kind](job)
    except (KeyboardInterrupt, _Stop) as error:
        return _record(store, job, CANCELLED, "cancelled by the user", EXIT_CANCELLED, error)
    except StudioError as error:
        cancelled = type(error).__name__ == "TrainingCancelled"
        if cancelled:
            return _record(store, job, CANCELLED, "cancelled by the user; resumable from its last checkpoint",
                           EXIT_CANCELLED, error)
        # The queue is the web UI's: a job's reason speaks the browser's language (controls, not flags).
        return _record(store, job, FAILED, message_for(error, "browser"), EXIT_FAILED, error)
    except Exception as error:  # anything else is a bug or an environment problem; keep the traceback
        traceback.print_exc()
        return _record(store, job, FAILED, f"{type(error).__name__}: {error}", EXIT_FAILED, error)
    store.transition(job.id, (RUNNING,), FINISHED, ended=time.time(), reason=None)
    print(f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] {job.label} finished", flush=True)
    return 0


def _record(store: JobStore, job: Job, state: str, reason: str, code: int, error: BaseException) -> int:
    print(f"{job.label} {state}: {reason or type(error).__name__}", file=sys.stderr, flush=True)
    store.transition(job.id, (RUNNING,), state, ended=time.time(), reason=reason or type(error).__name__)
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m studio.jobs.worker", description="Run one queued Studio job.")
    parser.add_argument("job_id", type=int)
    parser.add_argument("--db", required=True, help="path of the jobs.sqlite database")
    args = parser.parse_args(argv)
    quiet_log()
    claim_cpu_share()  # before the job's models load; sleeping OpenMP threads, a fair share of the cores
    return execute(JobStore(args.db), args.job_id)


# Library notices a person reading a job's log cannot act on (Studio keeps these parts in fp32 itself;
# a LoRA without text-encoder layers is normal).
HUSHED_WARNINGS = (r".*should be kept in float32.*", r".*No LoRA keys associated to.*", r".*open an issue.*")


def quiet_log() -> None:
    """A job's log is read by people: no progress-bar redraws (the progress file and events carry the
    progress), library notices at error level only. Call before the libraries are imported."""
    import warnings

    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    for pattern in HUSHED_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)


if __name__ == "__main__":
    sys.exit(main())
