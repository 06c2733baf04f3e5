"""Studio's web UI: a thin Gradio front over the studio API (the same functions the CLI calls).

Import :mod:`webui.env` and call :func:`webui.env.configure` before anything imports gradio;
``studio webui`` does this, then :func:`webui.app.launch`.
"""
