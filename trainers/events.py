"""The run's ``events.jsonl``: one JSON object per line, appended as training goes.

The CLI's progress bar and the web UI read it; nothing else is needed to follow a run.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from studio.run_events import read_events  # noqa: F401 - re-exported for the trainers
from studio.run_layout import EVENTS_FILE  # noqa: F401
from studio.threads import rebalance

TERMINAL_EVENTS = ("finished", "failed", "cancelled")


class EventLog:
    """Appends events to ``RUN/events.jsonl`` (main process only) and tells an optional listener."""

    def __init__(self, run_dir: Path, *, enabled: bool = True, listener: Callable[[dict], None] | None = None):
        self.path = Path(run_dir) / EVENTS_FILE
        self.enabled = enabled
        self.listener = listener

    def emit(self, kind: str, **fields: Any) -> dict:
        event = {"type": kind, "time": round(time.time(), 3), **fields}
        if self.enabled:
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(event, default=str) + "\n")
        if self.listener is not None:
            self.listener(event)
        rebalance()  # other Studio processes may have started or ended: take a fair share of the cores
        return event




def run_state(events: list[dict]) -> str:
    """"finished" | "failed" | "cancelled" | "running" | "new" from a run's events."""
    for event in reversed(events):
        if event["type"] in TERMINAL_EVENTS:
            return event["type"]
        if event["type"] in ("resumed", "started"):
            return "running"
    return "running" if events else "new"
