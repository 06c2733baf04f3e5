"""Evaluate tab: queue an evaluation of a finished run; scores against the base and other runs, contact sheet.

The evaluation itself is ``studio.evaluation.evaluate_run`` in a worker (a job of kind "eval");
this tab only reads RUN/eval/report.json and RUN/eval/contact_sheet.png when they appear.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import pandas as pd

from studio import limits
from studio.errors import StudioError
from studio.evaluation.defaults import IMAGES_PER_PROMPT
from studio.evaluation.readings import SCALE, backbone_badge, reading_lines
from studio.jobs import job_progress, jobs_of_run, submit_eval
from studio.jobs.catalog import backbone_choices
from studio.jobs.reports import (
    LOWER_IS_BETTER,
    METRIC_LABELS,
    METRICS,
    comparison,
    contact_sheet,
    read_report,
)
from studio.models.notes import base_model_note
from studio.run_layout import EVAL_DIR, eval_report_path
from studio.sampling import STEPS
from studio.validation.history import BEST
from webui import checkpoint_picker
from webui.context import Context
from webui.messages import for_browser
from webui.tabs.jobs import job_images, progress_html

SCORE_COLUMNS = ["model", "role", *[METRIC_LABELS[m] for m in METRICS]]


@dataclass
class EvaluateTab:
    run: gr.Dropdown
    timer: gr.Timer


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def _metric_plot(rows, metric: str) -> gr.BarPlot:
    """One metric's bars, on an axis from 0 (or below, for a negative cosine) so bar lengths compare."""
    data = pd.DataFrame([{"model": r.label, "score": r.scores[metric]} for r in rows if r.scores.get(metric) is not None],
                        columns=["model", "score"])
    low = min([0.0, *data["score"].tolist()])
    high = max([1.0, *data["score"].tolist()])
    return gr.BarPlot(value=data, y_lim=[low, high])


def finished_images(run_dir: str | Path, limit: int = 24) -> list[tuple[str, str]]:
    """The images of the run's last evaluation (personalised first), as the gallery shows them."""
    report = read_report(run_dir) or {}
    folder = Path(run_dir) / EVAL_DIR
    found = [(str(folder / item["path"]), f"{item.get('role', '')} s{item.get('seed', '')}")
             for item in report.get("images", []) if isinstance(item, dict) and (folder / str(item.get("path"))).is_file()]
    return found[:limit]


def build(ctx: Context) -> EvaluateTab:
    timer = gr.Timer(1.0)
    seen = gr.State(None)
    clip_choices, clip_default = backbone_choices("clip")
    dino_choices, dino_default = backbone_choices("dino")
    with gr.Row():
        run = gr.Dropdown(ctx.run_choices(), label="Finished training job", elem_id="eval-run", scale=3, allow_custom_value=True)
        checkpoint = checkpoint_picker.picker("eval-checkpoint")
        start = gr.Button("Evaluate", variant="primary", elem_id="eval-start", scale=1)
    with gr.Accordion("Evaluation settings", open=False):
        with gr.Row():
            clip = gr.Dropdown(clip_choices, value=clip_default, allow_custom_value=True, label="CLIP backbone",
                               elem_id="eval-clip", info="tiny-clip works offline: its scores compare runs here, not with the paper.")
            dino = gr.Dropdown(dino_choices, value=dino_default, allow_custom_value=True, label="DINO backbone",
                               elem_id="eval-dino")
            images_per_prompt = gr.Number(IMAGES_PER_PROMPT, precision=0, minimum=1, maximum=int(limits.EVAL_IMAGES_PER_PROMPT.maximum),
                                          label=limits.EVAL_IMAGES_PER_PROMPT.control,
                                          elem_id="eval-images-per-prompt")
            max_prompts = gr.Number(0, precision=0, minimum=0, label="Prompts (0: all)", elem_id="eval-max-prompts")
            steps = gr.Number(STEPS, precision=0, minimum=1, maximum=int(limits.EVAL_STEPS.maximum), label=limits.EVAL_STEPS.control,
                              elem_id="eval-steps")
    status = gr.Markdown(elem_id="eval-status")
    progress = gr.HTML(elem_id="eval-progress")
    made = gr.Gallery(label="Images of the evaluation (newest first while it runs)", columns=6, height=200, elem_id="eval-images",
                      interactive=False, visible=False)
    badge = gr.Markdown(elem_id="eval-badge", visible=False, elem_classes=["score-badge"])
    scores = gr.Dataframe(headers=SCORE_COLUMNS, interactive=False, elem_id="eval-scores", label=f"Scores ({SCALE})")
    # One small chart per metric: Gradio's bar plot stacks bars of one x value, and stacked
    # similarity scores would read as sums.
    with gr.Row(elem_id="eval-chart"):
        charts = [
            gr.BarPlot(None, x="model", y="score", color="model", title=METRIC_LABELS[m], height=260, min_width=150,
                       x_title=" ", x_label_angle=-30, show_label=False, colors_in_legend=[], elem_id=f"eval-chart-{m}",
                       caption="lower is better" if m in LOWER_IS_BETTER else "higher is better")
            for m in METRICS
        ]
    sheet = gr.Image(label="Contact sheet", elem_id="eval-sheet", interactive=False, type="filepath")
    expectation = gr.Markdown(elem_id="eval-note", visible=False, elem_classes=["model-note"])
    gr.Markdown("\n".join(f"- {line}" for line in reading_lines(METRICS))
                + "\n\nThe base model is the untrained one, prompted without the identifier.", elem_id="eval-readings")

    outputs = [run, status, progress, made, badge, scores, *charts, sheet, expectation, seen]
    unchanged = (gr.skip(),) * (len(outputs) - 1)

    def on_start(run, clip, dino, images_per_prompt, max_prompts, steps, checkpoint=BEST):
        if not run:
            return "Choose a finished training job first."
        try:
            options = {"clip": clip, "dino": dino, "images_per_prompt": int(images_per_prompt or 4),
                       "max_prompts": int(max_prompts or 0) or None, "steps": int(steps or 30),
                       "checkpoint": checkpoint or BEST}
        except (TypeError, ValueError, OverflowError):
            return "**Error:** Images per prompt, Prompts and Sampling steps must be whole numbers."
        try:
            job = submit_eval(ctx.ws, int(run), options, front="ui", confined=True)
        except StudioError as error:
            return for_browser(error)
        return f"Queued {job.label}; its progress and images appear below, the scores when it finishes."

    def refresh(run, seen):
        if not run:
            choices = ctx.run_choices()
            if choices == seen:
                return unchanged + (seen,)
            return gr.update(choices=choices), *unchanged[1:], choices
        try:
            train_job = ctx.ws.store.get(int(run))
        except (StudioError, ValueError):
            return gr.skip(), "", *unchanged[2:], seen
        evals = jobs_of_run(ctx.ws, train_job.id, "eval")
        report_path = eval_report_path(train_job.run_dir)
        stamp = report_path.stat().st_mtime if report_path.is_file() else None
        rows = comparison(ctx.ws, train_job) if stamp else []
        latest = evals[0] if evals else None
        snap = job_progress(latest, ctx.ws.logs_dir, log_lines=0) if latest is not None else None
        bar = progress_html(snap) if snap is not None and latest.state != "finished" else ""
        pictures = job_images(snap) if snap is not None and latest.active else finished_images(train_job.run_dir)
        signature = (run, [(j.id, j.state) for j in evals], stamp, [(r.label, r.scores) for r in rows], bar, pictures)
        if signature == seen:
            return unchanged + (seen,)
        if latest is None:
            text = "Not evaluated yet." if not stamp else "Evaluated outside this queue (report found)."
        else:
            text = f"{latest.label}: **{latest.state}**" + (f": {html.escape(latest.reason)}" if latest.reason else "")
        live = (bar, gr.update(value=pictures, visible=bool(pictures)))
        report = read_report(train_job.run_dir) if stamp else None
        if report is not None:
            note = backbone_badge(report)
            table = pd.DataFrame([[r.label, r.role, *[_fmt(r.scores.get(m)) for m in METRICS]] for r in rows],
                                 columns=SCORE_COLUMNS)
            plots = [_metric_plot(rows, m) for m in METRICS]
            image = contact_sheet(train_job.run_dir)
            expect = base_model_note(str(report.get("base") or ""))
            return (gr.skip(), text, *live, gr.update(value=note, visible=bool(note)), table, *plots,
                    str(image) if image else None, gr.update(value=expect, visible=bool(expect)), signature)
        empty = pd.DataFrame(columns=SCORE_COLUMNS)
        return (gr.skip(), text, *live, gr.update(visible=False), empty, *([None] * len(METRICS)), None,
                gr.update(visible=False), signature)

    start.click(on_start, [run, clip, dino, images_per_prompt, max_prompts, steps, checkpoint], status, api_name="start_eval")
    run.input(lambda run: checkpoint_picker.choices_for(ctx, run), run, checkpoint, api_name=False)
    timer.tick(refresh, [run, seen], outputs, show_progress="hidden", api_name=False)
    run.focus(lambda: gr.update(choices=ctx.run_choices()), None, run, api_name=False)
    return EvaluateTab(run, timer)
