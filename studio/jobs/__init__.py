"""The persistent job queue: training, evaluation and export run in worker processes.

The web UI and the CLI (``studio jobs ...``) are two fronts over the same functions:

- :class:`Workspace` opens the data directory (``jobs.sqlite``, ``runs/``, ``subjects/``, ``logs/``);
- :func:`submit_train`, :func:`submit_eval`, :func:`submit_export` queue work;
- :func:`cancel` and :func:`resume` stop and continue it;
- :class:`Dispatcher` starts queued jobs in ``python -m studio.jobs.worker`` processes;
- :func:`job_progress` reads what a job is doing from its run directory.
"""

from studio.jobs.db import ACTIVE_STATES, KINDS, RESUMABLE_STATES, STATES, Job, JobNotFoundError, JobStore
from studio.jobs.dispatcher import Dispatcher, recover
from studio.jobs.progress import JobProgress, job_progress
from studio.jobs.service import (
    cancel,
    default_device,
    finished_training_jobs,
    jobs_of_run,
    resolve_subject,
    resume,
    submit_eval,
    submit_export,
    submit_train,
    training_job,
)
from studio.jobs.workspace import Workspace

__all__ = [
    "ACTIVE_STATES",
    "KINDS",
    "RESUMABLE_STATES",
    "STATES",
    "Dispatcher",
    "Job",
    "JobNotFoundError",
    "JobProgress",
    "JobStore",
    "Workspace",
    "cancel",
    "default_device",
    "finished_training_jobs",
    "job_progress",
    "jobs_of_run",
    "recover",
    "resolve_subject",
    "resume",
    "submit_eval",
    "submit_export",
    "submit_train",
    "training_job",
]
