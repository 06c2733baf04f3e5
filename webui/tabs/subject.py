"""Subject tab: upload 3-5 photos, see them exactly as they will be trained, name the subject."""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from studio.confine import confine
from studio.errors import StudioError
from studio.identifiers import check_identifier, suggest_identifiers
from studio.images import CROP_MODES
from studio.jobs.catalog import DEFAULT_BASE, base_model_choices
from studio.models.notes import native_resolution
from studio.settings import declaration, default_value
from studio.subjects import prepare_subject, validate_images
from webui.context import Context
from webui.messages import browser_text, counted, for_browser


@dataclass
class SubjectTab:
    files: gr.File
    name: gr.Textbox
    created: object  # the "Create subject" event; chain with .then()
    status: gr.Markdown


def _paths(files, ctx: Context) -> list[str]:
    """Uploaded files' paths, each confined to the data directory (an HTTP API caller cannot name /etc/...)."""
    paths = [f if isinstance(f, str) else getattr(f, "name", str(f)) for f in (files or [])]
    return [str(confine(path, [ctx.ws.root], what="photo", fix="Upload the photo instead.")) for path in paths]


def _upload_name(path: Path) -> str:
    return path.name


def short_upload_paths(text: str, ctx: Context) -> str:
    """Messages name uploaded files by their own name, not by Gradio's upload folder path."""
    return re.sub(re.escape(str(ctx.ws.uploads_dir)) + r"/[^/\s]+/", "", text)


def messages_html(messages, shorten=lambda text: text) -> str:
    """Per-file validation messages as a small table (file name, level, message)."""
    if not messages:
        return "<p class='subject-ok'>All photos look fine.</p>"
    rows = "".join(
        f"<tr class='msg-{m.level}'><td>{html.escape(_upload_name(Path(m.path)) if m.path else 'all photos')}</td>"
        f"<td>{html.escape(m.level)}</td><td>{html.escape(shorten(m.text))}</td></tr>"
        for m in messages
    )
    return f"<table class='subject-messages'><tr><th>file</th><th></th><th>message</th></tr>{rows}</table>"


def build(ctx: Context) -> SubjectTab:
    resolution_default = native_resolution(DEFAULT_BASE) or default_value(declaration("resolution"))
    gr.Markdown("Upload 3-5 varied photos of one subject. They are shown below cropped exactly as they will be trained.")
    with gr.Row():
        with gr.Column(scale=1):
            files = gr.File(label="Photos", file_count="multiple", file_types=["image"], elem_id="subject-files")
            with gr.Row():
                resolution = gr.Number(value=resolution_default, precision=0, minimum=32, maximum=4096,
                                       label="Resolution (px)", info="Train at this size; follows the base model when it is a built-in one.",
                                       elem_id="subject-resolution")
                crop = gr.Radio(list(CROP_MODES), value="center", label="Crop", elem_id="subject-crop",
                                info="center: crop to fill; pad: fit and pad")
        with gr.Column(scale=1):
            preview = gr.Gallery(label="As trained", columns=5, height=220, elem_id="subject-preview",
                                 object_fit="contain", interactive=False)
            report = gr.HTML(elem_id="subject-messages")
    with gr.Row():
        name = gr.Textbox("", label="Subject name", placeholder="my-dog", elem_id="subject-name",
                          info="Becomes a folder name (letters, digits, - and _ are kept).")
        identifier = gr.Textbox(label="Identifier", value="sks", elem_id="subject-identifier",
                                info="A rare single token that will stand for your subject.")
        class_noun = gr.Textbox("", label="Class noun", placeholder="dog", elem_id="subject-class",
                                info="What the subject is: dog, backpack, teddy bear...")
        base = gr.Dropdown(base_model_choices(), value=DEFAULT_BASE, allow_custom_value=True,
                           label="Tokenizer of", elem_id="subject-base", info="The base model you will train.")
    with gr.Row():
        check = gr.Button("Check identifier", elem_id="subject-check")
        suggestions = gr.Radio([], label="Rare-token suggestions", elem_id="subject-suggestions", interactive=True)
    id_message = gr.Markdown(elem_id="subject-id-message")
    create = gr.Button("Create subject", variant="primary", elem_id="subject-create")
    status = gr.Markdown(elem_id="subject-status")

    def on_images(files, resolution, crop):
        try:
            paths = _paths(files, ctx)
            if not paths:
                return [], ""
            validation = validate_images(paths, int(resolution or resolution_default), crop)
        except StudioError as error:
            return [], f"<p class='msg-error'>{for_browser(error)}</p>"
        gallery = [(item.image, _upload_name(item.path)) for item in validation.accepted]
        return gallery, messages_html(validation.messages, lambda text: short_upload_paths(text, ctx))

    def on_check(identifier, base):
        try:
            tokenizer = ctx.tokenizers(base or DEFAULT_BASE)[0]
        except (StudioError, IndexError) as error:
            return f"Could not load the tokenizer of {html.escape(str(base))}: {for_browser(error)}", gr.update(choices=[])
        if not (identifier or "").strip():
            choices = suggest_identifiers(tokenizer)
            return "Pick a rare token below.", gr.update(choices=choices, value=None)
        result = check_identifier(tokenizer, identifier.strip())
        return ("**OK:** " if result.ok else "**Note:** ") + html.escape(result.message), gr.update(choices=result.suggestions, value=None)

    def on_create(files, name, identifier, class_noun, base, resolution, crop):
        try:
            paths = _paths(files, ctx)
            if not (name or "").strip():
                raise StudioError("Give the subject a name (it becomes the folder subjects/<name>).")
            tokenizers = None
            try:
                tokenizers = ctx.tokenizers(base or DEFAULT_BASE)
            except StudioError as error:
                gr.Warning(f"The identifier was not checked: {browser_text(error)}")
            subject = prepare_subject(paths, identifier, class_noun, ctx.ws.subject_dir(name),
                                      resolution=int(resolution or resolution_default), crop=crop,
                                      tokenizer=tokenizers)
        except StudioError as error:
            return f"**Error:** {short_upload_paths(for_browser(error), ctx)}"
        warnings = "".join(f"\n- {html.escape(w)}" for w in subject.warnings)
        return (f"**Done:** subject **{subject.directory.name}** created: {counted(len(subject.image_paths), 'image')} at "
                f"{subject.resolution} px, instance prompt “{subject.instance_prompt}”." + warnings)

    def on_base(base):
        """A built-in base was made for one size: train at it (a real base keeps what the person typed)."""
        side = native_resolution(base)
        return side if side else gr.skip()

    base.change(on_base, base, resolution, api_name=False)

    def on_upload(current, earlier):
        """A new upload replaces the photos of the previous one (Gradio would add them to the list)."""
        paths = [f if isinstance(f, str) else getattr(f, "name", str(f)) for f in (current or [])]
        fresh = [p for p in paths if p not in (earlier or [])]
        kept = fresh or paths
        return kept, kept

    earlier = gr.State([])
    files.upload(on_upload, [files, earlier], [files, earlier], api_name=False)
    for trigger in (files.change, resolution.change, crop.change):
        trigger(on_images, [files, resolution, crop], [preview, report], api_name=False)
    check.click(on_check, [identifier, base], [id_message, suggestions], api_name="check_identifier")
    identifier.submit(on_check, [identifier, base], [id_message, suggestions], api_name=False)
    suggestions.select(lambda choice: choice, suggestions, identifier, api_name=False)
    created = create.click(on_create, [files, name, identifier, class_noun, base, resolution, crop], status,
                           api_name="create_subject")
    return SubjectTab(files, name, created, status)
