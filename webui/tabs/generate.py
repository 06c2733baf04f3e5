"""Generate tab: a prompt playground with trained runs, base and personalised side by side."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from studio import limits
from studio.confine import confine
from studio.errors import StudioError
from studio.models.notes import base_model_note
from studio.playground import Request
from studio.sampling import GUIDANCE, IMG2IMG_STRENGTH, PLAYGROUND_STEPS
from studio.threads import cpu_share
from webui.context import Context
from webui.messages import browser_text


@dataclass
class GenerateTab:
    runs: gr.Dropdown


def parse_weights(text: str, count: int) -> list[float]:
    """"1, 0.5" -> [1.0, 0.5], padded with 1.0 to ``count`` runs."""
    try:
        weights = [float(part) for part in str(text or "").replace(";", ",").split(",") if part.strip()]
    except ValueError as error:
        raise StudioError(f"Adapter weights must be numbers separated by commas, e.g. 1.0, 0.6 ({error}).") from error
    return (weights + [1.0] * count)[:count]


DEFAULT_SIDE = 512  # until a run is chosen; then the run's training resolution


def _number(value, control: str) -> float:
    """A finite number from a control (an HTTP API caller can send anything)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise StudioError(f"{control} must be a number, not {str(value)[:40]!r}.") from None
    if not math.isfinite(number):
        raise StudioError(f"{control} must be a finite number, not {number}.")
    return number


def build(ctx: Context) -> GenerateTab:
    with gr.Row():
        runs = gr.Dropdown(ctx.run_choices(), multiselect=True, label="Trained runs", elem_id="gen-runs", scale=3, allow_custom_value=True,
                           info="Several LoRA / textual-inversion runs of one base can be combined.")
        weights = gr.Textbox("1.0", label="Adapter weights", elem_id="gen-weights", scale=1,
                             info="One per chosen run, in order (LoRA strength).")
    prompt = gr.Textbox("", label="Prompt", elem_id="gen-prompt", info="Use the run's identifier, e.g. 'a sks dog on a beach'.")
    negative = gr.Textbox("", label="Negative prompt", elem_id="gen-negative")
    with gr.Row():
        guidance = gr.Slider(0, 20, value=GUIDANCE, step=0.5, label="Guidance", elem_id="gen-guidance")
        steps = gr.Slider(1, 100, value=PLAYGROUND_STEPS, step=1, label=limits.GENERATION_STEPS.control, elem_id="gen-steps")
        seed = gr.Number(0, precision=0, minimum=0, label="Seed", elem_id="gen-seed")
        compare = gr.Checkbox(True, label="Also the base model", elem_id="gen-compare")
    with gr.Accordion("Image to image", open=False):
        with gr.Row():
            init = gr.Image(label="Start from this image", type="filepath", sources=["upload"], elem_id="gen-init")
            strength = gr.Slider(0.05, 1.0, value=IMG2IMG_STRENGTH, step=0.05, label="Strength", elem_id="gen-strength",
                                 info="How far from the start image to go (1: ignore it).")
    with gr.Row():
        width = gr.Number(DEFAULT_SIDE, precision=0, minimum=limits.IMAGE_SIDE.minimum, maximum=limits.IMAGE_SIDE.maximum,
                          step=limits.IMAGE_SIDE.multiple_of, label="Width", elem_id="gen-width",
                          info="Pixels; set to the run's training size when you choose a run.")
        height = gr.Number(DEFAULT_SIDE, precision=0, minimum=limits.IMAGE_SIDE.minimum, maximum=limits.IMAGE_SIDE.maximum,
                           step=limits.IMAGE_SIDE.multiple_of, label="Height", elem_id="gen-height",
                           info="Image to image resizes the start image to this size.")
    note = gr.Markdown(elem_id="gen-note", visible=False)
    start = gr.Button("Generate", variant="primary", elem_id="gen-start")
    with gr.Row():
        base_image = gr.Image(label="Base model (prompt without the identifier)", elem_id="gen-base", interactive=False)
        tuned_image = gr.Image(label="Personalised", elem_id="gen-personalised", interactive=False)

    def on_runs(chosen, current):
        """The first chosen run's prompt (if none typed yet), its training size, and what to expect of it."""
        if not chosen:
            return gr.skip(), gr.skip(), gr.skip(), gr.update(visible=False)
        job = ctx.ws.store.get(int(chosen[0]))
        try:
            result = json.loads((Path(job.run_dir) / "result.json").read_text())
        except (OSError, ValueError):
            return gr.skip(), gr.skip(), gr.skip(), gr.update(visible=False)
        side = int(job.params.get("config", {}).get("resolution") or DEFAULT_SIDE)
        prompt = gr.skip() if (current or "").strip() else gr.update(value=result.get("instance_prompt") or "")
        expectation = base_model_note(str(result.get("base") or job.params.get("config", {}).get("base") or ""))
        return prompt, side, side, gr.update(value=expectation, visible=bool(expectation))

    def on_generate(chosen, weights, prompt, negative, guidance, steps, seed, compare, init, strength, width, height,
                    progress=gr.Progress()):
        """Each image appears as soon as it is made: the personalised one first, then the base model's."""
        try:
            limits.ADAPTERS.check(len(chosen or []), limits.UI)
            run_dirs = [ctx.ws.store.get(int(value)).run_dir for value in (chosen or [])]
            if init:  # an upload lives in the data dir; an API caller cannot point at other files
                init = str(confine(init, [ctx.ws.root], what="start image", fix="Upload the image instead."))
            request = Request(prompt or "", negative or "", _number(guidance, "Guidance"), int(_number(steps, "Steps")),
                              int(_number(seed or 0, "Seed")), init, _number(strength, "Strength"), bool(compare),
                              int(_number(width or DEFAULT_SIDE, "Width")), int(_number(height or DEFAULT_SIDE, "Height")))
            made = ctx.playground.generate_each(
                run_dirs, request, parse_weights(weights, len(run_dirs)), front=limits.UI,
                progress=lambda role, step, total: progress((step, total), desc=f"{role} image", unit="steps"),
            )
            with cpu_share():  # a running job keeps its share of the cores while the page generates
                for role, image in made:
                    yield (image, gr.skip()) if role == "base" else (gr.skip(), image)
        except (StudioError, ValueError) as error:
            raise gr.Error(browser_text(error)) from error

    runs.focus(lambda: gr.update(choices=ctx.run_choices()), None, runs, api_name=False)
    runs.input(on_runs, [runs, prompt], [prompt, width, height, note], api_name=False)
    start.click(on_generate, [runs, weights, prompt, negative, guidance, steps, seed, compare, init, strength, width, height],
                [base_image, tuned_image], api_name="generate", concurrency_limit=1)
    return GenerateTab(runs)
