"""Painting a photo's mask on the Subject tab: choose a photo, paint over the subject, keep the mask.

The kept mask is written as ``NAME.mask.png`` (white: the subject) beside the uploads and added to the
photo list, where it counts exactly like an uploaded mask file (see ``studio.masks``).
"""

from __future__ import annotations

from pathlib import Path

import gradio as gr
import numpy as np
from PIL import Image

from studio.confine import confine
from studio.errors import StudioError
from studio.masks import MASK_SUFFIX, is_mask_file
from webui.context import Context
from webui.messages import browser_text
from webui.painting import editor_parts, painted_area

PAINTED_DIR = "painted-masks"


def _file_paths(files) -> list[str]:
    return [f if isinstance(f, str) else getattr(f, "name", str(f)) for f in (files or [])]


def photo_paths(files) -> list[str]:
    return [p for p in _file_paths(files) if not is_mask_file(Path(p)) and Path(p).suffix.lower() not in (".txt", ".jsonl")]


def save_painted_mask(ctx: Context, photo: str, value) -> Path:
    """The painted area of ``value`` as ``uploads/painted-masks/NAME.mask.png`` at the photo's size."""
    photo_path = Path(confine(photo, [ctx.ws.root], what="photo", fix="Upload the photo instead."))
    _, layers = editor_parts(value)
    marked = painted_area([Path(confine(layer, [ctx.ws.root], what="mask")) for layer in layers])
    if marked is None:
        raise StudioError("Nothing is painted yet: paint over the subject in the editor, then keep the mask.")
    with Image.open(photo_path) as image:
        size = image.size
    mask = Image.fromarray((marked * 255).astype(np.uint8), mode="L")
    if mask.size != size:
        mask = mask.resize(size, Image.Resampling.NEAREST)
    folder = ctx.ws.uploads_dir / PAINTED_DIR
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{photo_path.stem}{MASK_SUFFIX}.png"
    mask.save(target)
    return target


def build(ctx: Context, files: gr.File) -> None:
    with gr.Accordion("Paint a mask", open=False, elem_id="subject-mask-painter"):
        gr.Markdown("Choose a photo and paint over the subject: the painted part trains at full weight, the rest "
                    "at the Mask background weight setting (with Masked loss on).")
        with gr.Row():
            photo = gr.Dropdown([], label="Photo to mask", elem_id="subject-mask-photo", scale=3)
            keep = gr.Button("Keep this mask", elem_id="subject-mask-keep", scale=1)
        editor = gr.ImageEditor(label="Paint over the subject", type="filepath", sources=(), format="png", layers=False,
                                transforms=(), brush=gr.Brush(colors=["#ffffff"], color_mode="fixed"),
                                elem_id="subject-mask-editor")
        note = gr.Markdown(elem_id="subject-mask-note")

    def on_files(files):
        choices = [(Path(p).name, p) for p in photo_paths(files)]
        return gr.update(choices=choices, value=None)

    def on_photo(chosen):
        if not chosen:
            return gr.update(value=None)
        return gr.update(value={"background": chosen, "layers": [], "composite": None})

    def on_keep(files, chosen, value):
        if not chosen:
            return gr.skip(), "Choose a photo first."
        try:
            mask = save_painted_mask(ctx, chosen, value)
        except StudioError as error:
            return gr.skip(), browser_text(error)
        stem = Path(chosen).stem
        kept = [p for p in _file_paths(files) if not (is_mask_file(Path(p)) and Path(p).stem.removesuffix(MASK_SUFFIX) == stem)]
        return kept + [str(mask)], f"Mask kept for {Path(chosen).name}: the preview marks it as masked."

    files.change(on_files, files, photo, api_name=False)
    photo.change(on_photo, photo, editor, api_name=False)
    keep.click(on_keep, [files, photo, editor], [files, note], api_name=False)
