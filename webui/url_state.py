"""The page's place in its URL: ``?tab=jobs&job=7``. A reload, a bookmark or a restarted server opens the
same tab and job instead of the Subject tab and the newest job.

The page's first query string is kept by a script in the page head (:data:`HEAD`) before Gradio mounts
(mounting fires the first tab's select event, which would overwrite it); the load handler restores the
tab and job from it, and only then do tab and job changes write the URL.
"""

from __future__ import annotations

from urllib.parse import parse_qs

import gradio as gr

TAB, JOB = "tab", "job"
HEAD = "<script>window.__studioInitialQuery = window.location.search;</script>"
_READ_INITIAL = "() => window.__studioInitialQuery || ''"
_RESTORED = ("() => { window.__studioRestored = true; "
             "window.history.replaceState(null, '', window.location.pathname + (window.__studioInitialQuery || '')); }")


def _set_param_js(name: str, value: str | None = None) -> str:
    """JavaScript for an event: write ``name`` (a fixed value, or the event's input) into the URL."""
    written = f"'{value}'" if value is not None else "v"
    return (f"(v) => {{ if (!window.__studioRestored) return v; const u = new URL(window.location.href); "
            f"const x = {written}; if (x === null || x === undefined || x === '') u.searchParams.delete('{name}'); "
            f"else u.searchParams.set('{name}', x); window.history.replaceState(null, '', u); return v; }}")


def remember(tabs: gr.Tabs, pages: dict[str, gr.Tab], job: gr.Dropdown) -> None:
    """Write the chosen tab and job into the URL as they change (in the browser; no server round trip)."""
    for name, page in pages.items():
        page.select(None, None, None, js=_set_param_js(TAB, name), api_name=False, queue=False)
    job.change(None, job, None, js=_set_param_js(JOB), api_name=False, queue=False)


def restore(app: gr.Blocks, ctx, tabs: gr.Tabs, tab_names: set[str], job: gr.Dropdown) -> None:
    """On page load, open the tab and select the job the page's first URL names (if they exist)."""
    query = gr.Textbox(visible=False)

    def on_load(text: str):
        params = {key: values[-1] for key, values in parse_qs(str(text or "").lstrip("?")).items()}
        tab, job_id = params.get(TAB), params.get(JOB)
        known_job = bool(job_id) and job_id.isdigit() and any(str(j.id) == job_id for j in ctx.ws.store.list())
        return (gr.Tabs(selected=tab) if tab in tab_names else gr.skip(),
                gr.update(value=job_id) if known_job else gr.skip())

    app.load(on_load, query, [tabs, job], js=_READ_INITIAL, api_name=False).then(
        None, None, None, js=_RESTORED, api_name=False)


