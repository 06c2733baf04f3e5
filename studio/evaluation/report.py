"""The evaluation report: its schema, a checker for it, and a short text summary for the terminal.

One schema serves both kinds of report: ``"run"`` (``studio eval RUN``, written to
``RUN/eval/report.json``) and ``"images"`` (``studio eval --images``). Scores are raw cosines on the
paper's 0-1 scale; a score that could not be computed is ``null`` and ``notes`` says why.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from studio.evaluation.metrics import DIV_METRIC
from studio.evaluation.prompts import CLIP_T_TEXT_RULE
from studio.evaluation.scoring import HIGHER_IS_BETTER, METRICS

SCHEMA_VERSION = 1
PAIRING = "mean over all generated x all reference pairs"
ROLES = ("personalised", "base", "class")
# key -> accepted types; run reports need the extra keys too.
COMMON_KEYS: dict[str, tuple[type, ...]] = {
    "schema_version": (int,),
    "kind": (str,),
    "created": (str,),
    "scores": (dict,),
    "scale": (str,),
    "higher_is_better": (dict,),
    "pairing": (str,),
    "clip_t_text_rule": (str,),
    "div_metric": (str,),
    "backbones": (dict,),
    "references": (list,),
    "images": (list,),
    "per_prompt": (list,),
    "counts": (dict,),
    "timing": (dict,),
    "notes": (list,),
}
RUN_KEYS: dict[str, tuple[type, ...]] = {
    "run": (str,),
    "method": (str,),
    "base": (str,),
    "subject": (dict,),
    "settings": (dict,),
    "seeds": (list,),
    "base_scores": (dict, type(None)),
}


def new_report(kind: str) -> dict[str, Any]:
    """The fixed part of every report: definitions a reader needs to compare numbers."""
    return {
        "schema_version": SCHEMA_VERSION,
        "kind": kind,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "scores": {},
        "scale": "raw cosine similarity, 0-1 (not x100)",
        "higher_is_better": dict(HIGHER_IS_BETTER),
        "pairing": PAIRING,
        "clip_t_text_rule": CLIP_T_TEXT_RULE,
        "div_metric": DIV_METRIC,
    }


def validate_report(report: dict[str, Any]) -> list[str]:
    """Problems with a report's shape (empty when it matches the schema)."""
    problems = []
    expected = dict(COMMON_KEYS) | (RUN_KEYS if report.get("kind") == "run" else {})
    for key, types in expected.items():
        if key not in report:
            problems.append(f"missing key '{key}'")
        elif not isinstance(report[key], types):
            problems.append(f"'{key}' is {type(report[key]).__name__}, expected {'/'.join(t.__name__ for t in types)}")
    for name in ("scores", "base_scores"):
        scores = report.get(name)
        if isinstance(scores, dict):
            for metric in METRICS:
                if not isinstance(scores.get(metric, "missing"), float | type(None)):
                    problems.append(f"'{name}.{metric}' must be a number or null")
    for index, image in enumerate(report.get("images", []) if isinstance(report.get("images"), list) else []):
        if not isinstance(image, dict) or not isinstance(image.get("path"), str):
            problems.append(f"images[{index}] needs a 'path'")
        elif report.get("kind") == "run" and (image.get("role") not in ROLES or not isinstance(image.get("seed"), int)):
            problems.append(f"images[{index}] needs a role ({', '.join(ROLES)}) and an integer seed")
    return problems


def _fmt(value: float | None) -> str:
    return "  -  " if value is None else f"{value:.3f}"


def format_summary(report: dict[str, Any]) -> str:
    """A few lines for the terminal: each metric, with the base model's beside it for a run."""
    base = report.get("base_scores") or {}
    header = f"{'metric':8s} {'score':>7s}" + (f" {'base':>7s}" if base else "") + "  better"
    lines = [header]
    for metric in METRICS:
        row = f"{metric.upper().replace('_', '-'):8s} {_fmt(report['scores'].get(metric)):>7s}"
        if base:
            row += f" {_fmt(base.get(metric)):>7s}"
        lines.append(row + ("  higher" if HIGHER_IS_BETTER[metric] else "  lower"))
    lines.append(f"DIV here is: {report['div_metric']}.")
    lines.extend(f"note: {note}" for note in report.get("notes", []))
    return "\n".join(lines)
