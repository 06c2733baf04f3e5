"""Reading a run's ``events.jsonl`` (the trainer writes it: ``trainers.events``): torch-free, so the web
UI, the job queue and the benchmarks can follow a run without importing the trainers."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from studio.run_layout import EVENTS_FILE


def read_events(run_dir: str | Path) -> list[dict]:
    """All complete events of a run (a line being written is skipped)."""
    path = Path(run_dir) / EVENTS_FILE
    if not path.is_file():
        return []
    events = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return events


def steady_speed(run_dir: str | Path) -> float | None:
    """The run's median steps per second past its warm-up (the first quarter of its step events)."""
    speeds = [float(e["it_s"]) for e in read_events(run_dir) if e.get("type") == "step" and e.get("it_s")]
    return statistics.median(speeds[len(speeds) // 4:]) if speeds else None
