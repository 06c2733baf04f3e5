"""The checkpoint picker the Evaluate and Export tabs share: the best checkpoint (by the run's declared
rule) unless the person picks the final result or a kept checkpoint."""

from __future__ import annotations

import gradio as gr

from studio.errors import StudioError
from studio.validation.history import BEST, checkpoint_choices
from webui.context import Context


def picker(elem_id: str) -> gr.Dropdown:
    return gr.Dropdown([("best checkpoint", BEST)], value=BEST, label="Checkpoint", elem_id=elem_id,
                       info="The best one by the run's validation rule, unless you pick another.")


def choices_for(ctx: Context, run: str | None) -> dict:
    """The chosen run's checkpoints, best selected."""
    try:
        run_dir = ctx.ws.store.get(int(run)).run_dir
    except (StudioError, ValueError, TypeError):
        return gr.skip()
    return gr.update(choices=checkpoint_choices(run_dir), value=BEST)
