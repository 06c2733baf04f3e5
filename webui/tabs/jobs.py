"""Jobs tab: the queue, and for the selected job live progress, loss curve, samples and log.

A 1-second gr.Timer polls the queue and the run directory (studio.jobs.job_progress); a component
is re-sent only when what it shows has changed, so an idle page costs almost nothing.
"""

from __future__ import annotations

import datetime as dt
import html
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import pandas as pd

from studio.errors import StudioError
from studio.jobs import RESUMABLE_STATES, cancel, job_progress, resume
from studio.jobs.progress import JobProgress, progress_dict
from studio.models.notes import base_model_note
from webui import validation_panel
from webui.context import Context
from webui.messages import browser_text

POLL_S = 1.0
LOG_LINES = 14
TABLE_HEADERS = ["id", "kind", "name", "state", "created", "of job"]


@dataclass
class JobsTab:
    select: gr.Dropdown
    timer: gr.Timer


def progress_html(progress: JobProgress | None) -> str:
    """A progress bar with step and ETA; data-* attributes let tests read the numbers."""
    if progress is None:
        return "<div class='job-progress' data-state='none'>No job selected.</div>"
    percent = round(100 * progress.fraction, 1)
    done, total = (progress.step, progress.total) if progress.in_steps or progress.work is None else (
        progress.work.done, progress.work.total)
    stalled = " data-stalled='1'" if progress.stalled() else ""
    return (
        f"<div class='job-progress' data-state='{progress.job.state}' data-kind='{progress.job.kind}' "
        f"data-done='{done}' data-total='{total}' data-step='{progress.step}'{stalled}>"
        f"<div class='job-bar'><div class='job-fill state-{progress.job.state}' style='width:{percent}%'></div></div>"
        f"<div class='job-text'>{html.escape(progress.job.label)} · {html.escape(progress.summary())}</div></div>"
    )


def job_images(progress: JobProgress | None) -> list[tuple[str, str]]:
    """What the job has made so far, newest first: validation samples, or images of other work."""
    if progress is None:
        return []
    if progress.work is not None and not progress.in_steps:
        found = [path for path in progress.work.images if Path(path).is_file()]
        return [(path, Path(path).name) for path in reversed(found)]
    return [(str(s.path), f"step {s.step}: {s.prompt}") for s in reversed(progress.samples)]


def default_job(jobs) -> str | None:
    """The job to show when none is chosen: the running one, else the newest."""
    running = next((j for j in jobs if j.state == "running"), None)
    chosen = running or (jobs[0] if jobs else None)
    return str(chosen.id) if chosen else None


def job_choices(jobs) -> list[tuple[str, str]]:
    return [(f"{j.label} ({j.state})", str(j.id)) for j in jobs]


def _row(job) -> list:
    created = dt.datetime.fromtimestamp(job.created).strftime("%m-%d %H:%M:%S")
    return [job.id, job.kind, job.name, job.state, created, f"#{job.parent_id}" if job.parent_id else ""]


def build(ctx: Context) -> JobsTab:
    timer = gr.Timer(POLL_S)
    seen = gr.State({})
    table = gr.Dataframe(headers=TABLE_HEADERS, interactive=False, elem_id="jobs-table", label="Queue", max_height=240)
    with gr.Row():
        select = gr.Dropdown([], label="Job", elem_id="job-select", scale=3, allow_custom_value=True)
        cancel_button = gr.Button("Cancel", elem_id="job-cancel", variant="stop", scale=1, interactive=False)
        resume_button = gr.Button("Resume", elem_id="job-resume", scale=1, interactive=False)
    progress = gr.HTML(progress_html(None), elem_id="job-progress")
    reason = gr.Markdown(elem_id="job-reason")
    expectation = gr.Markdown(elem_id="job-note", visible=False, elem_classes=["model-note"])
    with gr.Row():
        loss = gr.LinePlot(pd.DataFrame({"step": [], "loss": []}), x="step", y="loss", title="Training loss",
                           x_title="step", y_title="loss", elem_id="loss-plot", label="Loss")
        samples = gr.Gallery(label="Images made so far (newest first)", columns=4, height=300, elem_id="job-samples",
                             interactive=False)
    validation = validation_panel.build()  # scores beside the loss (issue 18)
    log = gr.Textbox(label="Log (last lines)", lines=LOG_LINES, max_lines=LOG_LINES, interactive=False, autoscroll=True,
                     elem_id="job-log")

    outputs = [table, select, progress, reason, loss, samples, log, cancel_button, resume_button, expectation, seen]

    def refresh(selected, seen):
        seen = dict(seen or {})
        jobs = ctx.ws.store.list()
        updates: dict = {}
        listing = [(j.id, j.state) for j in jobs]
        if seen.get("listing") != listing:
            seen["listing"] = listing
            updates["table"] = pd.DataFrame([_row(j) for j in jobs], columns=TABLE_HEADERS)
            choices = job_choices(jobs)
            if not selected:
                selected = default_job(jobs)
            updates["select"] = gr.update(choices=choices, value=selected)
        job = next((j for j in jobs if str(j.id) == str(selected)), None)
        snap = job_progress(job, ctx.ws.logs_dir, log_lines=LOG_LINES) if job else None
        key = job.id if job else None
        html_text = progress_html(snap)
        if seen.get("progress") != html_text:
            seen["progress"] = html_text
            updates["progress"] = html_text
            updates["reason"] = f"**Reason:** {job.reason}" if job and job.reason else ""
            updates["cancel"] = gr.update(interactive=bool(job and job.active))
            updates["resume"] = gr.update(interactive=bool(job and job.state in RESUMABLE_STATES))
        losses = snap.losses if snap else []
        if seen.get("loss") != (key, len(losses)):
            seen["loss"] = (key, len(losses))
            updates["loss"] = pd.DataFrame(losses or [], columns=["step", "loss"])
        pictures = job_images(snap)
        if seen.get("samples") != (key, pictures):
            seen["samples"] = (key, pictures)
            updates["samples"] = pictures
        log_text = snap.log_tail if snap else ""
        if seen.get("log") != (key, log_text):
            seen["log"] = (key, log_text)
            updates["log"] = log_text
        note = base_model_note(str(job.params.get("config", {}).get("base", ""))) if job else ""
        if seen.get("note") != (key, note):
            seen["note"] = (key, note)
            updates["note"] = gr.update(value=note, visible=bool(note))
        names = ["table", "select", "progress", "reason", "loss", "samples", "log", "cancel", "resume", "note"]
        return [updates.get(name, gr.skip()) for name in names] + [seen]

    def on_select(selected, seen):
        return refresh(selected, {"listing": (seen or {}).get("listing")})

    def act(action, selected):
        if not selected:
            gr.Warning("Select a job first.")
            return
        try:
            job = action(ctx.ws, int(selected))
        except StudioError as error:
            gr.Warning(browser_text(error))
            return
        gr.Info(f"{job.label}: {'cancel requested' if job.state == 'running' else job.state}.")

    def job_info(job_id: int) -> dict:
        """Progress of one job as JSON: state, step/total, loss curve, sample paths, reason."""
        job = ctx.ws.store.get(int(job_id))
        return progress_dict(job_progress(job, ctx.ws.logs_dir))

    timer.tick(refresh, [select, seen], outputs, show_progress="hidden", api_name=False)
    select.input(on_select, [select, seen], outputs, show_progress="hidden", api_name=False)
    def cancel_job(job_id):
        act(cancel, job_id)

    def resume_job(job_id):
        act(resume, job_id)

    cancel_button.click(cancel_job, select, None, api_name="cancel_job")
    resume_button.click(resume_job, select, None, api_name="resume_job")
    gr.api(job_info, api_name="job_info")
    validation.attach(ctx, timer, select)
    return JobsTab(select, timer)
