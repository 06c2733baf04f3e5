"""The job table: an embedded SQLite database that the web UI, the CLI and the workers share.

SQLite is the only channel between them, so every process sees the same queue and a job outlives
the process that submitted it. Each call opens its own short connection (safe across threads and
processes); state changes that must not race (claiming the next job, recording how a job ended)
are single conditional UPDATEs inside an immediate transaction.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from studio.errors import StudioError

SCHEMA_VERSION = 1
KINDS = ("train", "eval", "export")
QUEUED, RUNNING, FINISHED, FAILED, CANCELLED, INTERRUPTED = (
    "queued", "running", "finished", "failed", "cancelled", "interrupted",
)
STATES = (QUEUED, RUNNING, FINISHED, FAILED, CANCELLED, INTERRUPTED)
ACTIVE_STATES = (QUEUED, RUNNING)
# A job in one of these states can be queued again (training continues from its last checkpoint).
RESUMABLE_STATES = (FAILED, CANCELLED, INTERRUPTED)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    state TEXT NOT NULL,
    run_dir TEXT NOT NULL DEFAULT '',
    params TEXT NOT NULL DEFAULT '{}',
    device TEXT NOT NULL DEFAULT 'cpu',
    parent_id INTEGER,
    resume INTEGER NOT NULL DEFAULT 0,
    pid INTEGER,
    reason TEXT,
    cancel_requested REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    started REAL,
    ended REAL
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state);
"""
_UPDATABLE = {"state", "run_dir", "params", "pid", "reason", "cancel_requested", "resume", "started", "ended", "name"}


class JobNotFoundError(StudioError):
    """No job has the id that was asked for."""


@dataclass
class Job:
    """One row of the job table."""

    id: int
    kind: str
    name: str
    state: str
    run_dir: str
    params: dict[str, Any] = field(default_factory=dict)
    device: str = "cpu"
    parent_id: int | None = None
    resume: bool = False
    pid: int | None = None
    reason: str | None = None
    cancel_requested: float | None = None
    attempts: int = 0
    created: float = 0.0
    started: float | None = None
    ended: float | None = None

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES

    @property
    def label(self) -> str:
        """How the UI and CLI name a job: ``#3 train my-dog``."""
        return f"#{self.id} {self.kind} {self.name}"

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Job:
        values = dict(row)
        values["params"] = json.loads(values.get("params") or "{}")
        values["resume"] = bool(values.get("resume"))
        return cls(**values)


class JobStore:
    """The jobs table in ``path`` (created on first use)."""

    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StudioError(
                    f"{self.path} was written by a newer Studio (schema {version} > {SCHEMA_VERSION}); "
                    "upgrade Studio or use another --data-dir."
                )
            db.executescript(_SCHEMA)
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA synchronous=FULL")  # a committed state change survives a power loss (WAL + fsync)
        try:
            yield db
        finally:
            db.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    # ------------------------------------------------------------------ reading
    def get(self, job_id: int) -> Job:
        with self._connect() as db:
            row = db.execute("SELECT * FROM jobs WHERE id=?", (int(job_id),)).fetchone()
        if row is None:
            raise JobNotFoundError(f"There is no job #{job_id} in {self.path}; `studio jobs list` shows the jobs.")
        return Job.from_row(row)

    def list(self, *, states: tuple[str, ...] | None = None, kind: str | None = None,
             parent_id: int | None = None, newest_first: bool = True) -> list[Job]:
        where, args = [], []
        if states:
            where.append(f"state IN ({','.join('?' * len(states))})")
            args.extend(states)
        if kind:
            where.append("kind=?")
            args.append(kind)
        if parent_id is not None:
            where.append("parent_id=?")
            args.append(parent_id)
        sql = "SELECT * FROM jobs" + (f" WHERE {' AND '.join(where)}" if where else "")
        sql += f" ORDER BY id {'DESC' if newest_first else 'ASC'}"
        with self._connect() as db:
            return [Job.from_row(row) for row in db.execute(sql, args).fetchall()]

    # ------------------------------------------------------------------ writing
    def add(self, kind: str, name: str, params: dict[str, Any], *, device: str = "cpu",
            run_dir: str | Callable[[int], str] = "", parent_id: int | None = None, resume: bool = False) -> Job:
        """Insert a queued job; ``run_dir`` may be a function of the new id (``runs/0007-name``)."""
        if kind not in KINDS:
            raise StudioError(f"Unknown job kind {kind!r}; one of {', '.join(KINDS)}.")
        with self._transaction() as db:
            cursor = db.execute(
                "INSERT INTO jobs (kind, name, state, params, device, parent_id, resume, created) VALUES (?,?,?,?,?,?,?,?)",
                (kind, name, QUEUED, json.dumps(params), device, parent_id, int(resume), time.time()),
            )
            job_id = int(cursor.lastrowid)
            directory = run_dir(job_id) if callable(run_dir) else run_dir
            db.execute("UPDATE jobs SET run_dir=? WHERE id=?", (str(directory), job_id))
        return self.get(job_id)

    def update(self, job_id: int, **values: Any) -> Job:
        unknown = set(values) - _UPDATABLE
        if unknown:
            raise ValueError(f"cannot update {sorted(unknown)}")
        if "params" in values:
            values["params"] = json.dumps(values["params"])
        if values:
            assignments = ", ".join(f"{key}=?" for key in values)
            with self._connect() as db:
                db.execute(f"UPDATE jobs SET {assignments} WHERE id=?", (*values.values(), int(job_id)))
        return self.get(job_id)

    def transition(self, job_id: int, from_states: tuple[str, ...], to_state: str, **values: Any) -> bool:
        """Move a job to ``to_state`` only if it is in one of ``from_states``; True if it moved."""
        values = {"state": to_state, **values}
        if set(values) - _UPDATABLE:
            raise ValueError(f"cannot update {sorted(set(values) - _UPDATABLE)}")
        assignments = ", ".join(f"{key}=?" for key in values)
        marks = ",".join("?" * len(from_states))
        with self._transaction() as db:
            cursor = db.execute(
                f"UPDATE jobs SET {assignments} WHERE id=? AND state IN ({marks})",
                (*values.values(), int(job_id), *from_states),
            )
            return cursor.rowcount == 1

    def claim_next(self, max_per_device: int = 1) -> Job | None:
        """Mark the oldest queued job whose device has a free slot as running, and return it."""
        with self._transaction() as db:
            busy: dict[str, int] = {}
            for row in db.execute("SELECT device, COUNT(*) AS n FROM jobs WHERE state=? GROUP BY device", (RUNNING,)):
                busy[row["device"]] = row["n"]
            for row in db.execute("SELECT id, device FROM jobs WHERE state=? ORDER BY id", (QUEUED,)).fetchall():
                if busy.get(row["device"], 0) < max_per_device:
                    db.execute(
                        "UPDATE jobs SET state=?, started=?, ended=NULL, pid=NULL, reason=NULL, attempts=attempts+1 WHERE id=?",
                        (RUNNING, time.time(), row["id"]),
                    )
                    job_id = row["id"]
                    break
            else:
                return None
        return self.get(job_id)
