"""Progress of long work outside the training loop (evaluation, export, class images), for every front.

Work reports through a :class:`Tracker` (``track(phase, total, unit)``, then ``advance()``); whoever
runs the work chooses where reports go with ``reporting_to(sink)``. The job worker sends them to a
snapshot file the web UI polls (``studio.jobs.progress``); elsewhere they go nowhere (the CLI shows
tqdm bars). Training steps keep their own channel, the run's events.jsonl.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar
from dataclasses import asdict, dataclass, field

from studio.threads import rebalance

RECENT_IMAGES = 12


@dataclass
class Update:
    """Where one piece of work stands: ``done`` of ``total`` ``unit``s in ``phase``."""

    phase: str
    done: int
    total: int
    unit: str
    started: float
    updated: float
    images: list[str] = field(default_factory=list)  # the newest images made, oldest first

    @property
    def eta_s(self) -> float | None:
        """Remaining time at the rate measured so far in this phase (None before the first unit)."""
        elapsed = self.updated - self.started
        if self.done <= 0 or elapsed <= 0 or self.total <= self.done:
            return 0.0 if self.total and self.done >= self.total else None
        return elapsed / self.done * (self.total - self.done)

    def as_dict(self) -> dict:
        return asdict(self) | {"eta_s": self.eta_s}

    @classmethod
    def from_dict(cls, data: dict) -> Update:
        names = {"phase", "done", "total", "unit", "started", "updated", "images"}
        return cls(**{key: value for key, value in data.items() if key in names})


Sink = Callable[[Update], None]
_sink: ContextVar[Sink | None] = ContextVar("studio_progress_sink", default=None)


@contextlib.contextmanager
def reporting_to(sink: Sink) -> Iterator[None]:
    """Send every tracker's updates inside the block to ``sink``."""
    token = _sink.set(sink)
    try:
        yield
    finally:
        _sink.reset(token)
        flush = getattr(sink, "flush", None)
        if flush is not None:
            flush()  # a throttled sink writes the last state it held back


class Tracker:
    """Counts units of one phase and reports each change to the current sink (if any)."""

    def __init__(self, phase: str, total: int, unit: str):
        now = time.time()
        self.update = Update(phase, 0, int(total), unit, now, now)
        self._report()

    def advance(self, count: int = 1, images: Iterable[str] = ()) -> None:
        self.update.done = min(self.update.total, self.update.done + count) if self.update.total else self.update.done + count
        self.update.updated = time.time()
        self.update.images = (self.update.images + [str(path) for path in images])[-RECENT_IMAGES:]
        self._report()
        rebalance()

    def _report(self) -> None:
        sink = _sink.get()
        if sink is not None:
            sink(self.update)


def track(phase: str, total: int, unit: str = "image") -> Tracker:
    return Tracker(phase, total, unit)
