"""Submitting, cancelling and resuming jobs: the functions the CLI and the web UI both call.

Nothing here trains, evaluates or exports; a worker process does that later
(:mod:`studio.jobs.worker`). These functions only validate a request and record it in the queue,
so a mistake is reported at once, naming the setting or folder, instead of in a worker's log.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from studio.config import config_to_dict
from studio.confine import confine, confine_refs
from studio.errors import StudioError
from studio.jobs.db import CANCELLED, FINISHED, QUEUED, RESUMABLE_STATES, RUNNING, Job
from studio.jobs.workspace import Workspace
from studio.names import safe_name
from studio.run_layout import CANCEL_FILE, EXPORTS_DIR, RESULT_FILE, config_path  # noqa: F401
from studio.settings import TrainConfig

DEVICE_ENV = "STUDIO_DEVICE"


def default_device() -> str:
    """The device new jobs queue for: ``$STUDIO_DEVICE``, else ``cuda:0`` when a GPU is visible, else ``cpu``."""
    configured = os.environ.get(DEVICE_ENV, "").strip()
    if configured:
        return configured
    try:
        import torch

        return "cuda:0" if torch.cuda.is_available() else "cpu"
    except ImportError:  # pragma: no cover - torch is a dependency
        return "cpu"


def resolve_subject(ws: Workspace, ref: str | Path, *, confined: bool = False) -> Path:
    """A subject folder from a path, or from the name of a subject in the workspace.

    ``confined`` (the web UI and its HTTP API): the folder must resolve inside the data directory.
    """
    from studio.subjects import load_subject

    named = ws.subjects_dir / safe_name(str(ref), "subject") if str(ref).strip() else None  # confined below
    path = Path(ref).expanduser()
    if named is not None and (named / "subject.json").is_file() and (confined or not (path / "subject.json").is_file()):
        path = named
    elif not (path / "subject.json").is_file():
        known = ", ".join(p.name for p in ws.subjects()) or "none yet"
        raise StudioError(
            f"Subject {ref!r} not found: neither a subject folder nor a subject in {ws.subjects_dir} "
            f"(known: {known}). Create one with `studio prepare` or the web UI's Subject tab."
        )
    if confined:
        confine(path, [ws.root], what="subject folder", fix="Choose a subject made in the Subject tab (by its name).")
    return load_subject(path).directory


def submit_train(ws: Workspace, config: TrainConfig, subject: str | Path, *, name: str | None = None,
                 device: str | None = None, confined: bool = False) -> Job:
    """Queue a training job; its run directory will be ``runs/NNNN-name``.

    ``confined`` (the web UI and its HTTP API): the subject and every model path in ``config`` must
    resolve inside the data directory (see :mod:`studio.confine`).
    """
    subject_dir = resolve_subject(ws, subject, confined=confined)
    if confined:
        confine_refs([("base", config.base), ("base_config", config.base_config), ("vae", config.vae)], [ws.root])
    label = safe_name(name or subject_dir.name, "run")
    params = {"config": config_to_dict(config), "subject_dir": str(subject_dir)}
    return ws.store.add(
        "train", label, params, device=device or default_device(),
        run_dir=lambda job_id: str(ws.run_dir_for(job_id, label)),
    )


def training_job(ws: Workspace, ref: int | str) -> Job:
    """The training job ``ref`` (a job id), checked to have finished."""
    job = ws.store.get(int(ref))
    if job.kind != "train":
        raise StudioError(f"Job #{job.id} is a {job.kind} job; evaluate or export a training job.")
    if job.state != FINISHED or not (Path(job.run_dir) / RESULT_FILE).is_file():
        raise StudioError(
            f"Job #{job.id} has not finished training (state: {job.state}); resume it with "
            f"`studio jobs resume {job.id}` and try again when it has finished."
        )
    return job


def submit_eval(ws: Workspace, train_job: int | str, options: dict[str, Any] | None = None, *,
                front: str = "api", confined: bool = False) -> Job:
    """Queue an evaluation of a finished training job (writes RUN/eval/); sizes are checked now, against
    :mod:`studio.limits` (``front`` names the controls in the message)."""
    from studio.evaluation.defaults import GENERATION_BATCH_SIZE, IMAGES_PER_PROMPT
    from studio.evaluation.protocol import check_evaluation_limits
    from studio.sampling import GUIDANCE, STEPS

    parent = training_job(ws, train_job)
    given = dict(options or {})
    check_evaluation_limits(
        images_per_prompt=given.get("images_per_prompt", IMAGES_PER_PROMPT), class_images=given.get("class_images"),
        max_prompts=given.get("max_prompts"), steps=given.get("steps", STEPS), guidance=given.get("guidance", GUIDANCE),
        batch_size=given.get("batch_size", GENERATION_BATCH_SIZE), front=front,
    )
    if confined:
        confine_refs([("CLIP backbone", given.get("clip")), ("DINO backbone", given.get("dino"))], [ws.root])
    return ws.store.add("eval", parent.name, {"options": dict(options or {})}, device=parent.device,
                        run_dir=parent.run_dir, parent_id=parent.id)


def submit_export(ws: Workspace, train_job: int | str, formats: list[str], *, force: bool = True,
                  checkpoint: str = "best") -> Job:
    """Queue an export of a finished training job into ``RUN/exports/<formats>/`` (studio.export's default);
    ``checkpoint``: ``best`` (the run's validation rule), ``final`` or a kept step, in ``<formats>-<checkpoint>``."""
    import json

    parent = training_job(ws, train_job)
    if not formats:
        raise StudioError("Choose at least one export format.")
    method = json.loads((Path(parent.run_dir) / RESULT_FILE).read_text())["method"]
    from studio.export import parse_formats

    chosen = parse_formats(method, list(formats))  # a bad format is reported now, not in the worker
    checkpoint = str(checkpoint or "best").strip()
    if checkpoint not in ("best", "final") and not checkpoint.isdigit():
        raise StudioError(f"Checkpoint {checkpoint!r} is not 'best', 'final' or a step number.")
    suffix = "" if checkpoint == "best" else f"-{checkpoint if checkpoint == 'final' else 'step-' + checkpoint}"
    out_dir = Path(parent.run_dir) / EXPORTS_DIR / ("-".join(chosen) + suffix)
    params = {"formats": chosen, "force": force, "out_dir": str(out_dir), "checkpoint": checkpoint}
    return ws.store.add("export", parent.name, params, device=parent.device, run_dir=parent.run_dir, parent_id=parent.id)


def cancel(ws: Workspace, job_id: int) -> Job:
    """Stop a job: a queued one never starts; a running one is asked to checkpoint and stop.

    A running trainer sees ``RUN/cancel.request`` within a step; the dispatcher sends SIGTERM if the
    worker is still there after a grace period (see :func:`studio.jobs.dispatcher.enforce_cancellations`).
    """
    job = ws.store.get(job_id)
    if job.state == QUEUED and ws.store.transition(job.id, (QUEUED,), CANCELLED, ended=time.time(),
                                                   reason="cancelled before it started"):
        return ws.store.get(job.id)
    job = ws.store.get(job_id)
    if job.state != RUNNING:
        raise StudioError(f"Job #{job.id} is {job.state}; only queued or running jobs can be cancelled.")
    if job.kind == "train" and config_path(job.run_dir).is_file():  # else the trainer has not begun
        (Path(job.run_dir) / CANCEL_FILE).touch()
    return ws.store.update(job.id, cancel_requested=job.cancel_requested or time.time())


def resume(ws: Workspace, job_id: int) -> Job:
    """Queue a stopped job again; training continues from its last checkpoint."""
    job = ws.store.get(job_id)
    if job.state not in RESUMABLE_STATES:
        hint = " It has already finished." if job.state == FINISHED else ""
        raise StudioError(
            f"Job #{job.id} is {job.state}; only {', '.join(RESUMABLE_STATES)} jobs can be resumed.{hint}"
        )
    started_before = job.kind == "train" and config_path(job.run_dir).is_file()
    if job.kind == "train" and not started_before and Path(job.run_dir).exists() and any(Path(job.run_dir).iterdir()):
        raise StudioError(f"{job.run_dir} exists but holds no config.yaml, so it cannot be resumed; submit a new job.")
    if job.run_dir:
        (Path(job.run_dir) / CANCEL_FILE).unlink(missing_ok=True)
    moved = ws.store.transition(job.id, RESUMABLE_STATES, QUEUED, resume=int(started_before), reason=None,
                                cancel_requested=None, pid=None, ended=None)
    if not moved:
        raise StudioError(f"Job #{job.id} changed state meanwhile; look again with `studio jobs show {job.id}`.")
    return ws.store.get(job.id)


def jobs_of_run(ws: Workspace, train_job_id: int, kind: str) -> list[Job]:
    """Evaluation or export jobs of a training job, newest first."""
    return ws.store.list(kind=kind, parent_id=train_job_id)


def finished_training_jobs(ws: Workspace) -> list[Job]:
    return [j for j in ws.store.list(kind="train", states=(FINISHED,)) if (Path(j.run_dir) / RESULT_FILE).is_file()]
