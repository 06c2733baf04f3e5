"""The page's place in its URL: ``?tab=jobs&job=7``. A reload, a bookmark or a restarted server opens the
same tab and job instead of the Subject tab and the newest job."""

from __future__ import annotations

from collections.abc import Callable

import gradio as gr

TAB, JOB = "tab", "job"


def _set_param_js(name: str, value: str | None = None) -> str:
    """JavaScript for an event: write ``name`` (a fixed value, or the event's input) into the URL."""
    written = f"'{value}'" if value is not None else "v"
    return (f"(v) => {{ const u = new URL(window.location.href); const x = {written}; "
            f"if (x === null || x === undefined || x === '') u.searchParams.delete('{name}'); "
            f"else u.searchParams.set('{name}', x); window.history.replaceState(null, '', u); return v; }}")


def remember(tabs: gr.Tabs, pages: dict[str, gr.Tab], job: gr.Dropdown) -> None:
    """Write the chosen tab and job into the URL as they change (in the browser; no server round trip)."""
    for name, page in pages.items():
        page.select(None, None, None, js=_set_param_js(TAB, name), api_name=False, queue=False)
    job.change(None, job, None, js=_set_param_js(JOB), api_name=False, queue=False)


def restore(ctx, tab_names: set[str]) -> Callable[[gr.Request], tuple]:
    """The page-load handler: open the tab and select the job the URL names (if they exist)."""

    def on_load(request: gr.Request):
        params = dict(request.query_params) if request is not None else {}
        tab = params.get(TAB)
        job = params.get(JOB)
        known_job = job is not None and job.isdigit() and any(str(j.id) == job for j in ctx.ws.store.list())
        return (gr.Tabs(selected=tab) if tab in tab_names else gr.skip(),
                gr.update(value=job) if known_job else gr.skip())

    return on_load
