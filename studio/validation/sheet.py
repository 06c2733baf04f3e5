"""The validation contact sheet: one row per validation, its images side by side, best marked."""

from __future__ import annotations

from pathlib import Path

from studio.evaluation.contact_sheet import SheetRow, write_contact_sheet
from studio.validation.history import CONTACT_SHEET_FILE, VALIDATION_DIR

THUMB = 96


def _label(record: dict, best_step: int | None) -> str:
    scores = record.get("scores") or {}
    parts = [f"step {record['step']}" + (" (untrained base)" if record["step"] == 0 else "")]
    if record["step"] == best_step:
        parts[0] += "  BEST"
    if record.get("loss") is not None:
        parts.append(f"loss {record['loss']:.4f}")
    parts += [f"{name} {scores[key]:.3f}" for key, name in (("dino", "DINO"), ("clip_i", "CLIP-I"), ("clip_t", "CLIP-T"),
                                                              ("pres", "PRES")) if scores.get(key) is not None]
    return " · ".join(parts)


def write_validation_sheet(run_dir: Path, records: list[dict], best_step: int | None,
                           references: list[Path] | None = None) -> Path | None:
    """``RUN/validation/contact_sheet.png``: the subject's photos, then one row per validation with
    images (None when none has)."""
    rows = []
    for record in records:
        paths = [Path(run_dir) / p for p in record.get("images") or []]
        paths = [p for p in paths if p.is_file()]
        if paths:
            rows.append(SheetRow(_label(record, best_step), paths, [p.stem for p in paths]))
    if not rows:
        return None
    if references:
        rows.insert(0, SheetRow("your photos (the references)", list(references), [p.stem for p in references]))
    return write_contact_sheet(rows, Path(run_dir) / VALIDATION_DIR / CONTACT_SHEET_FILE, thumb=THUMB)
