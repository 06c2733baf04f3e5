"""Reading what evaluation and export jobs left in a run directory, for display.

``RUN/eval/report.json`` is read defensively (a missing key or a null score is shown as missing,
never an error): the report can come from an older or newer Studio. Runs are compared with other
runs of the *same subject*, recognised by the sha256 of the subject's photos, not by its name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from studio.jobs.db import FINISHED, Job
from studio.jobs.workspace import Workspace
from studio.run_layout import CONTACT_SHEET_FILE as CONTACT_SHEET  # noqa: F401
from studio.run_layout import EVAL_DIR  # noqa: F401
from studio.run_layout import EVAL_REPORT_FILE as REPORT_FILE  # noqa: F401

METRICS = ("clip_i", "clip_t", "dino", "pres", "div")
METRIC_LABELS = {"clip_i": "CLIP-I", "clip_t": "CLIP-T", "dino": "DINO", "pres": "PRES", "div": "DIV"}
LOWER_IS_BETTER = {"pres"}
MODEL_CARD_NAMES = ("README.md", "model_card.md", "MODEL_CARD.md")


@dataclass
class ScoreRow:
    """One model's scores: this run, the untrained base, or another run of the same subject."""

    label: str
    role: str  # "this run" | "base model" | "other run"
    scores: dict[str, float | None]


def read_report(run_dir: str | Path) -> dict[str, Any] | None:
    path = Path(run_dir) / EVAL_DIR / REPORT_FILE
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return report if isinstance(report, dict) else None


def _scores(value: Any) -> dict[str, float | None]:
    if not isinstance(value, dict):
        return {}
    out: dict[str, float | None] = {}
    for metric in METRICS:
        score = value.get(metric)
        out[metric] = float(score) if isinstance(score, int | float) and not isinstance(score, bool) else None
    return out


def subject_fingerprint(run_dir: str | Path) -> tuple[str, ...]:
    """The sorted sha256s of the run's subject photos (empty if unknown)."""
    try:
        record = json.loads((Path(run_dir) / "subject" / "subject.json").read_text(encoding="utf-8"))
        return tuple(sorted(str(s["sha256"]) for s in record.get("sources", [])))
    except (OSError, ValueError, KeyError, TypeError):
        return ()


def _run_label(job: Job, report: dict[str, Any]) -> str:
    method = report.get("method") or job.params.get("config", {}).get("method", "")
    return f"#{job.id} {method}".strip()


def comparison(ws: Workspace, job: Job) -> list[ScoreRow]:
    """Scores of ``job``'s run, its untrained base, and other evaluated runs of the same subject."""
    report = read_report(job.run_dir)
    if report is None:
        return []
    rows = [ScoreRow(_run_label(job, report), "this run", _scores(report.get("scores")))]
    base = _scores(report.get("base_scores"))
    if any(v is not None for v in base.values()):
        rows.append(ScoreRow(f"base {report.get('base') or ''}".strip(), "base model", base))
    fingerprint = subject_fingerprint(job.run_dir)
    if not fingerprint:
        return rows
    for other in ws.store.list(kind="train", states=(FINISHED,)):
        if other.id == job.id or subject_fingerprint(other.run_dir) != fingerprint:
            continue
        other_report = read_report(other.run_dir)
        if other_report is not None:
            rows.append(ScoreRow(_run_label(other, other_report), "other run", _scores(other_report.get("scores"))))
    return rows


def contact_sheet(run_dir: str | Path) -> Path | None:
    path = Path(run_dir) / EVAL_DIR / CONTACT_SHEET
    return path if path.is_file() else None


def exported_files(out_dir: str | Path) -> list[Path]:
    """Every file an export wrote (sorted; hidden temporaries skipped)."""
    root = Path(out_dir)
    if not root.is_dir():
        return []
    return sorted(p for p in root.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts))


def model_card(out_dir: str | Path) -> str | None:
    """The export's model card as Markdown to display (its YAML front matter, meant for the Hub, removed)."""
    for path in exported_files(out_dir):
        if path.name in MODEL_CARD_NAMES:
            text = path.read_text(encoding="utf-8", errors="replace")
            if text.startswith("---\n") and "\n---\n" in text[4:]:
                text = text[4:].split("\n---\n", 1)[1]
            return text.strip()
    return None
