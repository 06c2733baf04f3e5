"""Generate tab: a prompt playground with trained runs, base and personalised side by side: txt2img, image to
image, inpainting (paint over the start image), ControlNet and instruction edits. Every image is saved as a PNG
with its recipe under DATA/generated/ (see webui/generate_inputs.py)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from studio import limits
from studio.control import ControlSpec, control_image
from studio.errors import StudioError
from studio.generation_images import save_image
from studio.models import builtins
from studio.models.notes import base_model_note
from studio.playground import Request
from studio.run_layout import result_path
from studio.sampling import (
    CANNY_HIGH,
    CANNY_LOW,
    CONTROL_STRENGTH,
    GUIDANCE,
    IMAGE_GUIDANCE,
    IMG2IMG_STRENGTH,
    PLAYGROUND_STEPS,
)
from studio.threads import cpu_share
from webui.context import Context
from webui.generate_inputs import control_input, discard_unused, editor_inputs, model_ref, request_folder
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


def _builtin_choices(kind: str) -> list[str]:
    """Built-in models of ``kind`` (offline ones to try); any hub id or folder can be typed instead."""
    return [name for name, model in builtins().items() if model.kind == kind]


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
    with gr.Accordion("Start image: image to image, inpainting, instruction edits", open=False, elem_id="gen-image-panel"):
        with gr.Row():
            init = gr.ImageEditor(label="Start image (paint over the part to repaint)", type="filepath",
                                  sources=["upload"], format="png", layers=False, transforms=(), elem_id="gen-init",
                                  brush=gr.Brush(colors=["#ff00ff"], color_mode="fixed"))
            with gr.Column():
                strength = gr.Slider(0.05, 1.0, value=IMG2IMG_STRENGTH, step=0.05, label="Strength", elem_id="gen-strength",
                                     info="How far from the start image to go (1: ignore it; with a mask, 1 repaints "
                                     "the painted part from scratch).")
                inpaint_base = gr.Dropdown(_builtin_choices("inpaint"), value=None, allow_custom_value=True,
                                           label="Inpainting base", elem_id="gen-inpaint-base",
                                           info="Optional: an inpainting model (hub id or folder) to carry the runs; "
                                           "empty: the painted part is blended on the runs' own base.")
        with gr.Row():
            instruction = gr.Textbox("", label="Instruction", elem_id="gen-instruction", scale=2,
                                     info="Edit the start image as told (InstructPix2Pix), e.g. 'put the sks toy on a "
                                     "beach'. Needs an instruction-tuned base; used instead of the prompt.")
            instruct_base = gr.Dropdown(_builtin_choices("instruct"), value=None, allow_custom_value=True,
                                        label="Instruction-tuned base", elem_id="gen-instruct-base", scale=1,
                                        info="e.g. timbrooks/instruct-pix2pix (SD1.x); the runs' LoRAs go onto it.")
            image_guidance = gr.Slider(0, limits.IMAGE_GUIDANCE.maximum, value=IMAGE_GUIDANCE, step=0.1,
                                       label=limits.IMAGE_GUIDANCE.control, elem_id="gen-image-guidance", scale=1,
                                       info="How closely the edit keeps to the start image.")
    with gr.Accordion("ControlNet", open=False, elem_id="gen-control-panel"):
        with gr.Row():
            control = gr.Image(label="Control image", type="filepath", sources=["upload"], elem_id="gen-control")
            control_seen = gr.Image(label="What the ControlNet sees", elem_id="gen-control-seen", interactive=False)
        with gr.Row():
            controlnet = gr.Dropdown(_builtin_choices("controlnet"), value=None, allow_custom_value=True,
                                     label="ControlNet", elem_id="gen-controlnet",
                                     info="Any ControlNet for the base's family: a hub id (e.g. "
                                     "lllyasviel/sd-controlnet-canny) or a folder in the data directory.")
            control_type = gr.Radio([("Canny edges of the image", "canny"), ("The image as given (depth, pose, edges)", "none")],
                                    value="canny", label="Control type", elem_id="gen-control-type")
            control_strength = gr.Slider(0, limits.CONTROL_STRENGTH.maximum, value=CONTROL_STRENGTH, step=0.05,
                                         label=limits.CONTROL_STRENGTH.control, elem_id="gen-control-strength",
                                         info="0: the control image has no effect.")
            canny_low = gr.Number(CANNY_LOW, label="Canny low threshold", elem_id="gen-canny-low",
                                  minimum=0, maximum=limits.CANNY_THRESHOLD.maximum)
            canny_high = gr.Number(CANNY_HIGH, label="Canny high threshold", elem_id="gen-canny-high",
                                   minimum=0, maximum=limits.CANNY_THRESHOLD.maximum)
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
        base_image = gr.Image(label="Base model (prompt without the identifier)", elem_id="gen-base", interactive=False,
                              type="filepath", format="png")
        tuned_image = gr.Image(label="Personalised", elem_id="gen-personalised", interactive=False, type="filepath",
                               format="png")

    def on_runs(chosen, current):
        """The first chosen run's prompt (if none typed yet), its training size, and what to expect of it."""
        if not chosen:
            return gr.skip(), gr.skip(), gr.skip(), gr.update(visible=False)
        job = ctx.ws.store.get(int(chosen[0]))
        try:
            result = json.loads(result_path(job.run_dir).read_text())
        except (OSError, ValueError):
            return gr.skip(), gr.skip(), gr.skip(), gr.update(visible=False)
        side = int(job.params.get("config", {}).get("resolution") or DEFAULT_SIDE)
        prompt = gr.skip() if (current or "").strip() else gr.update(value=result.get("instance_prompt") or "")
        expectation = base_model_note(str(result.get("base") or job.params.get("config", {}).get("base") or ""))
        return prompt, side, side, gr.update(value=expectation, visible=bool(expectation))

    def on_generate(chosen, weights, prompt, negative, guidance, steps, seed, compare, init, strength, width, height,
                    inpaint_base, instruction, instruct_base, image_guidance, control, controlnet, control_type,
                    control_strength, canny_low, canny_high, progress=gr.Progress()):
        """Each image appears as soon as it is made: the personalised one first, then the base model's; each is
        saved with its recipe, beside copies of the images it was made from."""
        folder = None
        try:
            limits.ADAPTERS.check(len(chosen or []), limits.UI)
            run_dirs = [ctx.ws.store.get(int(value)).run_dir for value in (chosen or [])]
            root = Path(ctx.ws.root)
            folder = request_folder(root)
            start, mask = editor_inputs(init, root, folder)  # uploads live in the data dir; API callers stay there
            spec = None
            control_path = control_input(control, root, folder)
            controlnet_ref = model_ref(controlnet, root, "ControlNet")
            if control_path or controlnet_ref:
                spec = ControlSpec(controlnet_ref or "", control_path, str(control_type or "canny"),
                                   _number(control_strength, limits.CONTROL_STRENGTH.control),
                                   _number(canny_low, "Canny low threshold"), _number(canny_high, "Canny high threshold"))
            side_w, side_h = int(_number(width or DEFAULT_SIDE, "Width")), int(_number(height or DEFAULT_SIDE, "Height"))
            request = Request(prompt or "", negative or "", _number(guidance, "Guidance"), int(_number(steps, "Steps")),
                              int(_number(seed or 0, "Seed")), start, _number(strength, "Strength"), bool(compare),
                              side_w, side_h, mask=mask, inpaint_base=model_ref(inpaint_base, root, "Inpainting base"),
                              control=spec, instruction=(instruction or "").strip() or None,
                              instruct_base=model_ref(instruct_base, root, "Instruction-tuned base"),
                              image_guidance=_number(image_guidance, limits.IMAGE_GUIDANCE.control))
            made = ctx.playground.generate_each(
                run_dirs, request, parse_weights(weights, len(run_dirs)), front=limits.UI,
                progress=lambda role, step, total: progress((step, total), desc=f"{role} image", unit="steps"),
            )
            with cpu_share():  # a running job keeps its share of the cores while the page generates
                seen = gr.skip()
                if spec is not None and spec.model and spec.image:
                    seen = control_image(spec, side_w, side_h)
                for role, image, recipe in made:
                    path = save_image(image, folder / f"{role}-{recipe['seed']}.png", recipe)
                    yield (str(path), gr.skip(), seen) if role == "base" else (gr.skip(), str(path), seen)
                    seen = gr.skip()
        except (StudioError, ValueError) as error:
            discard_unused(folder)  # a refused request leaves no copies behind
            raise gr.Error(browser_text(error)) from error

    runs.focus(lambda: gr.update(choices=ctx.run_choices()), None, runs, api_name=False)
    runs.input(on_runs, [runs, prompt], [prompt, width, height, note], api_name=False)
    start.click(on_generate, [runs, weights, prompt, negative, guidance, steps, seed, compare, init, strength, width, height,
                              inpaint_base, instruction, instruct_base, image_guidance, control, controlnet, control_type,
                              control_strength, canny_low, canny_high],
                [base_image, tuned_image, control_seen], api_name="generate", concurrency_limit=1)
    return GenerateTab(runs)
