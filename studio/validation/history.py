"""A run's validation history as the run directory holds it: names, records, the chosen checkpoint.

The trainer appends ``validation`` events to ``events.jsonl`` (with the step's scores, losses, images
and costs), and ``overfitting`` / ``early_stop`` events when a rule fires; ``result.json`` records
the best checkpoint (``best_checkpoint``). Readers (CLI, evaluation, export, web UI) use this module
and never import torch or the trainers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from studio.run_events import read_events
from studio.run_layout import CHECKPOINTS_DIR, EVENTS_FILE, RESULT_FILE  # noqa: F401 - re-exported

VALIDATION_EVENT = "validation"
OVERFITTING_EVENT = "overfitting"
EARLY_STOP_EVENT = "early_stop"
NOTE_EVENT = "validation_note"
VALIDATION_DIR = "validation"  # RUN/validation/step-NNNNNN/PP-sS.png, class-sS.png
CONTACT_SHEET_FILE = "contact_sheet.png"  # RUN/validation/contact_sheet.png: the checkpoints side by side
BEST_KEY = "best_checkpoint"  # in result.json
FINAL = "final"
BEST = "best"


def step_dir_name(step: int) -> str:
    return f"step-{step:06d}"


def _events(run_dir: Path) -> list[dict]:
    return read_events(run_dir)


def records_from_events(events: list[dict]) -> list[dict]:
    """The validation records that still describe the run, in step order.

    A resume restores an earlier checkpoint: records past its step describe weights that no
    longer exist and are dropped; a step validated again keeps its newest record.
    """
    by_step: dict[int, dict] = {}
    for event in events:
        kind = event.get("type")
        if kind == "resumed":
            restored = int(event.get("step") or 0)
            by_step = {s: r for s, r in by_step.items() if s <= restored}
        elif kind == VALIDATION_EVENT:
            by_step[int(event["step"])] = event
    return [by_step[s] for s in sorted(by_step)]


def validation_records(run_dir: str | Path) -> list[dict]:
    return records_from_events(_events(Path(run_dir)))


def flags(run_dir: str | Path) -> list[dict]:
    """Overfitting and early-stop events still valid after resumes (each with a plain ``message``)."""
    events = _events(Path(run_dir))
    kept: list[dict] = []
    for event in events:
        if event.get("type") == "resumed":
            kept = [e for e in kept if int(e.get("step") or 0) <= int(event.get("step") or 0)]
        elif event.get("type") in (OVERFITTING_EVENT, EARLY_STOP_EVENT):
            kept.append(event)
    return kept


def read_best(run_dir: str | Path) -> dict[str, Any] | None:
    """The chosen checkpoint as result.json records it (None for runs without validation)."""
    path = Path(run_dir) / RESULT_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text()).get(BEST_KEY)
    except ValueError:
        return None


def score_series(records: list[dict]) -> list[dict]:
    """Flat rows for plots: ``{"step", "metric", "value"}`` for each loss and score of each record."""
    rows = []
    for record in records:
        values = {"validation loss": record.get("loss"), "class validation loss": record.get("class_loss")}
        labels = {"clip_i": "CLIP-I", "clip_t": "CLIP-T", "dino": "DINO", "pres": "PRES"}
        values |= {label: (record.get("scores") or {}).get(key) for key, label in labels.items()}
        rows += [{"step": record["step"], "metric": name, "value": value} for name, value in values.items()
                 if value is not None]
    return rows


def validation_line(record: dict) -> str:
    """One plain line for a terminal: ``step 200: validation loss 0.2065, DINO 0.294, … (best so far: step 200)``."""
    scores = record.get("scores") or {}
    parts = [f"validation loss {record['loss']:.4f}"] if record.get("loss") is not None else []
    if record.get("class_loss") is not None:
        parts.append(f"class images {record['class_loss']:.4f}")
    labels = {"dino": "DINO", "clip_i": "CLIP-I", "clip_t": "CLIP-T", "pres": "PRES"}
    parts += [f"{label} {scores[key]:.3f}" for key, label in labels.items() if scores.get(key) is not None]
    if record.get("skipped"):
        parts.append("subject score skipped (time budget)")
    tail = f" (best so far: step {record['best_step']})" if record.get("best_step") is not None else ""
    return f"step {record['step']}: " + ", ".join(parts) + tail


def checkpoint_choices(run_dir: str | Path) -> list[tuple[str, str]]:
    """(label, value) pairs for a picker: best (the default), final, then each kept checkpoint's step."""
    run_dir = Path(run_dir)
    best = read_best(run_dir)
    if best:
        where = "the final result" if best.get("final") else f"step {best['step']}"
        choices = [(f"best: {where} ({best.get('metric', '')} {best.get('value') or 0:.3f})", BEST)]
    else:
        choices = [("best: the final result (no validation recorded)", BEST)]
    choices.append(("final result", FINAL))
    root = run_dir / CHECKPOINTS_DIR
    steps = sorted(int(p.name.removeprefix("step-")) for p in root.glob("step-*") if p.name[5:].isdigit()) \
        if root.is_dir() else []
    return choices + [(f"checkpoint step {step}", str(step)) for step in steps]
