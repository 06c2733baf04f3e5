"""The Studio web UI: tabs in the order a person works, over the studio API and the job queue.

Run it with ``studio webui``. Call :func:`webui.env.configure` before importing this module (it
imports gradio). The UI process also runs the job dispatcher thread; training, evaluation and
export run in separate worker processes, so the UI survives their crashes and they survive it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import gradio as gr

from studio.jobs import Dispatcher, Workspace
from studio.limits import UPLOAD_MB
from webui import url_state
from webui.context import Context
from webui.tabs import evaluate, export, generate, jobs, subject, train

LOG = logging.getLogger(__name__)
MAX_FILE_SIZE = f"{int(UPLOAD_MB.maximum)}mb"  # declared once in studio.limits
CSS = """
.job-progress { font-size: 0.95rem; }
.job-bar { height: 14px; border-radius: 7px; background: var(--block-border-color); overflow: hidden; margin: 4px 0; }
.job-fill { height: 100%; background: var(--color-accent); transition: width 0.4s; }
.job-fill.state-failed, .job-fill.state-interrupted { background: #d9534f; }
.job-fill.state-cancelled { background: #999; }
.job-fill.state-finished { background: #3c9a5f; }
.subject-messages td, .subject-messages th { padding: 2px 8px; text-align: left; }
.msg-error { color: #c9302c; }
.msg-warning { color: #b8860b; }
/* Readable contrast (WCAG AA, 4.5:1 on white): help text, the selected tab, primary buttons, the footer. */
.info-text, .min_value, .max_value, .label-clear-button { color: #52525b !important; }
button[role=tab].selected { color: #c2410c !important; }
button.primary { background: #c2410c !important; color: #ffffff !important; border-color: #c2410c !important; }
button.primary:hover { background: #9a3412 !important; }
footer, footer button, footer a, footer .divider { color: #52525b !important; }
.model-note, .score-badge { border-left: 4px solid #b45309; padding-left: 8px; }
#environment-problems { border: 2px solid #c9302c; border-radius: 6px; padding: 4px 12px; }
"""


def build_app(ctx: Context) -> gr.Blocks:
    """All tabs, wired together (a new subject appears in Train; a started job opens in Jobs)."""
    with gr.Blocks(title="Studio", analytics_enabled=False) as app:
        gr.Markdown("# Studio\nPersonalise a text-to-image model: subject → train → evaluate → export → generate.")
        environment = gr.Markdown(elem_id="environment-problems", visible=False)
        with gr.Tabs(elem_id="tabs") as tabs:
            with gr.Tab("Subject", id="subject", elem_id="tab-subject") as subject_page:
                subject_tab = subject.build(ctx)
            with gr.Tab("Train", id="train", elem_id="tab-train") as train_page:
                train_tab = train.build(ctx)
            with gr.Tab("Jobs", id="jobs", elem_id="tab-jobs") as jobs_page:
                jobs_tab = jobs.build(ctx)
            with gr.Tab("Evaluate", id="evaluate", elem_id="tab-evaluate") as evaluate_page:
                evaluate_tab = evaluate.build(ctx)
            with gr.Tab("Export", id="export", elem_id="tab-export") as export_page:
                export_tab = export.build(ctx)
            with gr.Tab("Generate", id="generate", elem_id="tab-generate") as generate_page:
                generate.build(ctx)
        pages = {"subject": subject_page, "train": train_page, "jobs": jobs_page, "evaluate": evaluate_page,
                 "export": export_page, "generate": generate_page}
        url_state.remember(tabs, pages, jobs_tab.select)
        poll_only_where_seen(pages, {"jobs": jobs_tab.timer, "evaluate": evaluate_tab.timer, "export": export_tab.timer})

        def after_create(name):
            choices = train.subject_choices(ctx)
            value = name if name in choices else (choices[0] if choices else None)
            return gr.update(choices=choices, value=value)

        def show_job(job_id):
            if job_id is None:
                return gr.skip(), gr.skip()
            listing = jobs.job_choices(ctx.ws.store.list())
            return gr.Tabs(selected="jobs"), gr.update(choices=listing, value=str(int(job_id)))

        def on_page_load():
            """Choices that changed since launch (new subjects, finished runs) for a freshly opened page."""
            runs, subjects = ctx.run_choices(), train.subject_choices(ctx)
            return (gr.update(choices=subjects, value=subjects[0] if subjects else None),
                    gr.update(choices=runs), gr.update(choices=runs))

        subject_tab.created.then(
            lambda name: after_create(_created_name(ctx, name)), subject_tab.name, train_tab.subject, api_name=False,
        )
        train_tab.job_id.change(show_job, train_tab.job_id, [tabs, jobs_tab.select], api_name=False)
        app.load(on_page_load, None, [train_tab.subject, evaluate_tab.run, export_tab.run], api_name=False)
        app.load(_environment_banner, None, environment, api_name=False)
        url_state.restore(app, ctx, tabs, set(pages), jobs_tab.select)
    return app


def poll_only_where_seen(pages: dict[str, gr.Tab], timers: dict[str, gr.Timer]) -> None:
    """Each tab's 1-second poll runs only while that tab is shown: hidden tabs cost the server and the
    browser nothing (a training run on the same machine keeps the cores). Selecting a tab, by a click or
    by the server (a started job opens Jobs, a URL restores its tab), starts its poll, which catches up
    from the run directory at once."""
    names = list(timers)
    for name, page in pages.items():
        page.select(lambda shown=name: tuple(gr.Timer(active=other == shown) for other in names), None,
                    [timers[other] for other in names], api_name=False, show_progress="hidden")


def _environment_banner():
    """The environment check's findings on the first page (the CLI stops with the same lines)."""
    from studio.environment.check import blocking_findings, browser_message

    message = browser_message(blocking_findings())
    return gr.update(value=message, visible=bool(message))


def _created_name(ctx: Context, name: str) -> str:
    try:
        return ctx.ws.subject_dir(name or "").name
    except Exception:  # the Subject tab reports the problem itself
        return ""


def launch(*, host: str = "127.0.0.1", port: int = 7860, auth: tuple[str, str] | None = None,
           data_dir: str | Path | None = None, dispatch: bool = True, block: bool = True) -> tuple[gr.Blocks, Dispatcher | None]:
    """Open the workspace, start the dispatcher and serve the UI (only the data dir is served)."""
    ws = Workspace.open(data_dir)
    dispatcher = Dispatcher(ws).start() if dispatch else None
    ctx = Context(ws)
    app = build_app(ctx)
    app.queue(default_concurrency_limit=4)
    try:
        app.launch(
            server_name=host, server_port=port, auth=auth, share=False, ssr_mode=False, inbrowser=False,
            allowed_paths=[str(ws.runs_dir), str(ws.subjects_dir)],
            blocked_paths=[str(ws.store.path), str(ws.logs_dir)],
            max_file_size=MAX_FILE_SIZE, theme=gr.themes.Default(), css=CSS, footer_links=["api"],
            prevent_thread_lock=not block, head=url_state.HEAD, quiet=False, pwa=False, mcp_server=False,
        )
    finally:
        if block and dispatcher is not None:
            dispatcher.stop()
    return app, dispatcher
