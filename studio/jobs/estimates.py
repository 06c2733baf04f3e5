"""How long a training job will take on this machine, from the speed earlier runs measured here.

A recipe cannot know the machine; the steps already taken can. The estimate uses the median speed of
the last finished training jobs with the same base, method, resolution and batch size. Without one,
it says so: the running job's own ETA (from its first steps) is the first measurement.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from studio.jobs.db import FINISHED
from studio.jobs.progress import format_duration
from studio.jobs.workspace import Workspace
from studio.run_events import steady_speed

SAME_SHAPE = ("base", "method", "resolution", "batch_size", "prior_preservation", "gradient_checkpointing")
RECENT_JOBS = 5


@dataclass(frozen=True)
class Estimate:
    seconds: float
    it_s: float
    from_jobs: list[int]

    def text(self, steps: int) -> str:
        jobs = ", ".join(f"#{j}" for j in self.from_jobs)
        return (f"About {format_duration(self.seconds)} for {steps} steps at {self.it_s:.2f} steps/s, the speed "
                f"measured on this machine by job {jobs} (same base, method, size and batch), plus model loading. "
                "Other work running at the same time slows it down.")


def estimate(ws: Workspace, config: dict, steps: int) -> Estimate | None:
    """The estimate for a job with ``config`` (a config dict) taking ``steps`` steps, or None if unmeasured."""
    shape = {key: config.get(key) for key in SAME_SHAPE}
    speeds, used = [], []
    for job in ws.store.list(states=(FINISHED,)):
        if job.kind != "train" or not job.run_dir:
            continue
        theirs = job.params.get("config", {})
        if any(theirs.get(key) != value for key, value in shape.items()):
            continue
        speed = steady_speed(job.run_dir)
        if speed:
            speeds.append(speed)
            used.append(job.id)
        if len(speeds) >= RECENT_JOBS:
            break
    if not speeds:
        return None
    it_s = statistics.median(speeds)
    return Estimate(steps / it_s, it_s, used)


def estimate_text(ws: Workspace, config: dict, steps: int) -> str:
    found = estimate(ws, config, steps)
    if found is None:
        return ("No run like this has finished on this machine yet, so there is no time estimate: the job shows "
                "its ETA from the speed of its first steps.")
    return found.text(steps)
