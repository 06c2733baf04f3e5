"""Where jobs keep their files inside the studio data directory.

```
DATA_DIR/jobs.sqlite        the queue (studio.jobs.db)
DATA_DIR/subjects/NAME/     subjects created from the web UI
DATA_DIR/runs/0007-NAME/    one run directory per training job
DATA_DIR/logs/job-000007.log  each worker's stdout and stderr
DATA_DIR/uploads/           files a browser uploaded (Gradio's upload and cache folder)
```
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from studio.jobs.db import JobStore
from studio.names import child_path, safe_name
from studio.paths import data_dir

DB_FILE = "jobs.sqlite"


@dataclass
class Workspace:
    """The data directory seen by the job queue; every front (CLI, web UI, worker) opens the same one."""

    root: Path
    store: JobStore

    @classmethod
    def open(cls, root: str | Path | None = None) -> Workspace:
        directory = Path(root).expanduser().resolve() if root else data_dir().resolve()
        directory.mkdir(parents=True, exist_ok=True)
        return cls(directory, JobStore(directory / DB_FILE))

    @property
    def runs_dir(self) -> Path:
        return self._dir("runs")

    @property
    def subjects_dir(self) -> Path:
        return self._dir("subjects")

    @property
    def logs_dir(self) -> Path:
        return self._dir("logs")

    @property
    def uploads_dir(self) -> Path:
        return self._dir("uploads")

    def _dir(self, name: str) -> Path:
        path = self.root / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def run_dir_for(self, job_id: int, name: str) -> Path:
        return self.runs_dir / f"{job_id:04d}-{safe_name(name, 'run')}"

    def subject_dir(self, name: str) -> Path:
        """The folder of the subject called ``name`` (sanitised; always inside subjects/)."""
        return child_path(self.subjects_dir, name, "subject")

    def subjects(self) -> list[Path]:
        """Subject folders in this workspace, newest first."""
        found = [p for p in self.subjects_dir.iterdir() if (p / "subject.json").is_file()]
        return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)
