"""Jobs tab: validation scores plotted live beside the loss, the run's verdicts in plain words, and
the validation contact sheet (the checkpoints side by side).

Reads only the run directory (studio.validation.history); the Jobs tab builds it under its loss
plot and attaches it to its own timer and job selector, so it refreshes with the rest of the tab.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import pandas as pd

from studio.errors import StudioError
from studio.validation.history import (
    CONTACT_SHEET_FILE,
    VALIDATION_DIR,
    read_best,
    score_series,
    validation_records,
)
from studio.validation.history import flags as run_flags
from webui.context import Context

COLUMNS = ["step", "metric", "value"]


def validation_frame(run_dir: str | Path | None) -> pd.DataFrame:
    """Rows (step, metric, value) of every validation loss and score so far."""
    if not run_dir:
        return pd.DataFrame([], columns=COLUMNS)
    return pd.DataFrame(score_series(validation_records(run_dir)), columns=COLUMNS)


def verdicts_markdown(run_dir: str | Path | None) -> str:
    """The best checkpoint (chosen so far, or the result's) and any overfitting / early-stop flags."""
    if not run_dir:
        return ""
    lines = []
    best = read_best(run_dir)
    records = validation_records(run_dir)
    if best:
        where = "the final result" if best.get("final") else f"checkpoint step {best['step']}"
        lines.append(f"**Best checkpoint:** {where}. {html.escape(best.get('reason', ''), quote=False)} "
                     "Evaluation and export use it unless you pick another.")
    elif records and records[-1].get("best_step"):
        lines.append(f"**Best so far:** step {records[-1]['best_step']}.")
    for flag in run_flags(run_dir):
        lines.append(f"**{'Overfitting' if flag['type'] == 'overfitting' else 'Stopped early'}:** "
                     f"{html.escape(flag.get('message', ''), quote=False)}")
    skipped = [r for r in records if r.get("skipped")]
    if skipped:
        lines.append(f"_{html.escape(skipped[-1]['skipped'], quote=False)}_")
    return "\n\n".join(lines)


def contact_sheet(run_dir: str | Path | None) -> tuple[str | None, float | None]:
    """(path, mtime) of the run's validation contact sheet, or (None, None) before the first one."""
    path = Path(run_dir) / VALIDATION_DIR / CONTACT_SHEET_FILE if run_dir else None
    if path is None or not path.is_file():
        return None, None
    return str(path), path.stat().st_mtime


@dataclass
class ValidationPanel:
    plot: gr.LinePlot
    verdicts: gr.Markdown
    sheet: gr.Image
    seen: gr.State

    def attach(self, ctx: Context, timer: gr.Timer, select: gr.Dropdown) -> None:
        """Refresh on the tab's timer and when another job is selected (only what changed is sent)."""
        def refresh(selected, seen):
            seen = dict(seen or {})
            job = None
            if selected:
                try:
                    job = ctx.ws.store.get(int(selected))
                except (ValueError, StudioError):
                    job = None
            run_dir = job.run_dir if job is not None and job.kind == "train" else None
            frame = validation_frame(run_dir)
            text = verdicts_markdown(run_dir)
            sheet, stamp = contact_sheet(run_dir)
            key = (selected, len(frame), text, stamp)
            if seen.get("key") == key:
                return gr.skip(), gr.skip(), gr.skip(), seen
            seen["key"] = key
            return frame, text, sheet, seen

        outputs = [self.plot, self.verdicts, self.sheet, self.seen]
        timer.tick(refresh, [select, self.seen], outputs, show_progress="hidden", api_name=False)
        select.input(refresh, [select, self.seen], outputs, show_progress="hidden", api_name=False)


def build() -> ValidationPanel:
    """The plot (one line per score and loss, by step) and the verdicts, in a row of their own."""
    with gr.Row():
        plot = gr.LinePlot(pd.DataFrame([], columns=COLUMNS), x="step", y="value", color="metric",
                           title="Validation: losses and scores by step", elem_id="validation-plot", label="Validation")
    verdicts = gr.Markdown(elem_id="validation-verdicts")
    with gr.Accordion("Checkpoints side by side (validation images, best marked)", open=False):
        sheet = gr.Image(label="Validation contact sheet", type="filepath", interactive=False,
                         elem_id="validation-sheet")
    return ValidationPanel(plot, verdicts, sheet, gr.State({}))
