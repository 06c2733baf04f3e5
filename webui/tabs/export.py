"""Export tab: queue an export of a finished run in the chosen formats; download the files and model card.

The export itself is ``studio.export.export_run`` in a worker (a job of kind "export"); this tab
lists what appears in RUN/exports/.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from studio.errors import StudioError
from studio.export.format_notes import format_choice
from studio.jobs import job_progress, jobs_of_run, submit_export
from studio.jobs.catalog import export_formats
from studio.jobs.reports import exported_files, model_card
from studio.validation.history import BEST
from webui import checkpoint_picker
from webui.context import Context
from webui.messages import for_browser
from webui.tabs.jobs import progress_html


@dataclass
class ExportTab:
    run: gr.Dropdown
    timer: gr.Timer


def build(ctx: Context) -> ExportTab:
    timer = gr.Timer(1.0)
    seen = gr.State(None)
    formats = export_formats()
    with gr.Row():
        run = gr.Dropdown(ctx.run_choices(), label="Finished training job", elem_id="export-run", scale=3, allow_custom_value=True)
        checkpoint = checkpoint_picker.picker("export-checkpoint")
        start = gr.Button("Export", variant="primary", elem_id="export-start", scale=1)
    chosen = gr.CheckboxGroup(formats, value=formats[:1], label="Formats", elem_id="export-formats",
                              info="Each file is reloaded by the tools named for it before the export is kept.")
    status = gr.Markdown(elem_id="export-status")
    progress = gr.HTML(elem_id="export-progress")
    files = gr.File(label="Exported files", file_count="multiple", interactive=False, elem_id="export-files")
    card = gr.Markdown(elem_id="export-card")

    def on_start(run, chosen, checkpoint=BEST):
        if not run:
            return "Choose a finished training job first."
        try:
            job = submit_export(ctx.ws, int(run), list(chosen or []), checkpoint=checkpoint or BEST)
        except StudioError as error:
            return f"**Error:** {for_browser(error)}"
        return f"Queued {job.label}; the files appear here when it finishes."

    def on_run(run):
        try:
            method = ctx.ws.store.get(int(run)).params.get("config", {}).get("method")
        except (StudioError, ValueError, TypeError):
            return gr.skip()
        choices = export_formats(method)
        return gr.update(choices=[format_choice(method, fmt) for fmt in choices], value=choices[:1])

    def refresh(run, seen):
        if not run:
            choices = ctx.run_choices()
            if choices == seen:
                return (gr.skip(),) * 5 + (seen,)
            return gr.update(choices=choices), gr.skip(), gr.skip(), gr.skip(), gr.skip(), choices
        try:
            train_job = ctx.ws.store.get(int(run))
        except (StudioError, ValueError):
            return gr.skip(), "", gr.skip(), gr.skip(), gr.skip(), seen
        jobs = jobs_of_run(ctx.ws, train_job.id, "export")
        latest = jobs[0] if jobs else None
        done = next((j for j in jobs if j.state == "finished"), None)
        out_dir = Path(done.params["out_dir"]) if done else None
        found = exported_files(out_dir) if out_dir else []
        bar = progress_html(job_progress(latest, ctx.ws.logs_dir, log_lines=0)) if latest and latest.active else ""
        signature = (run, [(j.id, j.state) for j in jobs], [(str(p), p.stat().st_mtime) for p in found], bar)
        if signature == seen:
            return (gr.skip(),) * 5 + (seen,)
        text = "Not exported yet." if latest is None else (
            f"{latest.label} ({', '.join(latest.params.get('formats', []))}): **{latest.state}**"
            + (f": {html.escape(latest.reason)}" if latest.reason else "")
            + (f"\n\nFiles of #{done.id} in `{out_dir}`:" if done else ""))
        card_text = (model_card(out_dir) or "") if out_dir else ""
        return gr.skip(), text, bar, [str(p) for p in found] or None, card_text, signature

    start.click(on_start, [run, chosen, checkpoint], status, api_name="start_export")
    run.input(on_run, run, chosen, api_name=False)
    run.input(lambda run: checkpoint_picker.choices_for(ctx, run), run, checkpoint, api_name=False)
    timer.tick(refresh, [run, seen], [run, status, progress, files, card, seen], show_progress="hidden", api_name=False)
    run.focus(lambda: gr.update(choices=ctx.run_choices()), None, run, api_name=False)
    return ExportTab(run, timer)
