"""Subject tab: upload 3-5 photos, see them exactly as they will be trained, name the subject."""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
from PIL import Image

from studio.captions import PLACEMENTS
from studio.confine import confine
from studio.errors import StudioError
from studio.identifiers import check_identifier, suggest_identifiers
from studio.images import CROP_MODES
from studio.jobs.catalog import DEFAULT_BASE, base_model_choices
from studio.masks import MASK_SUFFIX, is_mask_file
from studio.models.notes import native_resolution
from studio.settings import declaration, default_value
from studio.subjects import prepare_subject, validate_images
from webui import mask_painter
from webui.context import Context
from webui.messages import browser_text, counted, for_browser


@dataclass
class SubjectTab:
    files: gr.File
    name: gr.Textbox
    created: object  # the "Create subject" event; chain with .then()
    status: gr.Markdown


def _paths(files, ctx: Context) -> list[str]:
    """Uploaded photos' paths, each confined to the data directory (an HTTP API caller cannot name /etc/...).

    Uploaded masks (``NAME.mask.png``) and captions (``NAME.txt``) belong to their photos: see :func:`_extras`."""
    paths = [f if isinstance(f, str) else getattr(f, "name", str(f)) for f in (files or [])]
    confined = [str(confine(path, [ctx.ws.root], what="photo", fix="Upload the photo instead.")) for path in paths]
    return [p for p in confined if not is_mask_file(Path(p)) and Path(p).suffix.lower() not in (".txt", ".jsonl")]


def _extras(files, ctx: Context, table) -> tuple[dict[str, str], dict[str, Image.Image]]:
    """Captions (uploaded ``NAME.txt`` files, then the caption table's edits) and masks (uploaded
    ``NAME.mask.png``) by photo file name."""
    captions: dict[str, str] = {}
    masks: dict[str, Image.Image] = {}
    for raw in files or []:
        path = Path(confine(raw if isinstance(raw, str) else getattr(raw, "name", str(raw)), [ctx.ws.root], what="file"))
        if path.suffix.lower() == ".txt":
            captions[path.stem] = path.read_text(encoding="utf-8", errors="replace")
        elif is_mask_file(path):
            with Image.open(path) as mask:
                mask.load()
                masks[path.stem.removesuffix(MASK_SUFFIX)] = mask.copy()
    rows = table.values.tolist() if hasattr(table, "values") else (table or [])
    for row in rows:
        if len(row) >= 2 and row[0] and isinstance(row[1], str):
            captions[Path(str(row[0])).stem] = row[1]
    return captions, masks


def _by_name(mapping: dict, paths: list[str]) -> dict:
    """``mapping`` keyed by photo stem, re-keyed by each photo's file name."""
    return {Path(p).name: mapping[Path(p).stem] for p in paths if Path(p).stem in mapping}


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
    gr.Markdown("Upload 3-5 varied photos of one subject. They are shown below cropped exactly as they will be trained. "
                "Add a caption file (NAME.txt) or a mask (NAME.mask.png: white is the subject) with a photo's name, "
                "or type the captions in the table.")
    with gr.Row():
        with gr.Column(scale=1):
            files = gr.File(label="Photos", file_count="multiple", file_types=["image", ".txt"], elem_id="subject-files")
            with gr.Row():
                resolution = gr.Number(value=resolution_default, precision=0, minimum=32, maximum=4096,
                                       label="Resolution (px)", info="Train at this size; follows the base model when it is a built-in one.",
                                       elem_id="subject-resolution")
                crop = gr.Radio(list(CROP_MODES), value="center", label="Crop", elem_id="subject-crop",
                                info="center: crop to fill; pad: fit and pad; bucket: keep each photo's shape")
        with gr.Column(scale=1):
            preview = gr.Gallery(label="As trained", columns=5, height=220, elem_id="subject-preview",
                                 object_fit="contain", interactive=False)
            report = gr.HTML(elem_id="subject-messages")
            captions = gr.Dataframe(headers=["photo", "caption"], datatype=["str", "str"], col_count=(2, "fixed"),
                                    label="Captions (empty: the instance prompt; {identifier} marks where the identifier goes)",
                                    interactive=True, elem_id="subject-captions")
    with gr.Row():
        placement = gr.Radio(list(PLACEMENTS), value="class", label="Identifier in captions", elem_id="subject-placement",
                             info="class: before the class noun; prefix: the instance prompt first; none: as written")
        dataset = gr.Textbox("", label="Or a Hugging Face dataset", placeholder="owner/name, or a folder in the data directory",
                             elem_id="subject-dataset", info="Used instead of the photos: its images, captions and masks.")
        auto_caption = gr.Textbox("", label="Automatic captions", placeholder="e.g. Salesforce/blip-image-captioning-base",
                                  elem_id="subject-auto-caption", info="A captioning model (folder or cached hub id) for photos without one.")
        auto_mask = gr.Textbox("", label="Automatic masks", placeholder="e.g. CIDAS/clipseg-rd64-refined",
                               elem_id="subject-auto-mask", info="A CLIPSeg model (folder or cached hub id) for photos without a mask.")
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

    def on_images(files, resolution, crop, table):
        try:
            paths = _paths(files, ctx)
            if not paths:
                return [], "", gr.update(value=[])
            typed, masks = _extras(files, ctx, table)
            validation = validate_images(paths, int(resolution or resolution_default), crop, captions=_by_name(typed, paths),
                                         masks=_by_name(masks, paths))
        except StudioError as error:
            return [], f"<p class='msg-error'>{for_browser(error)}</p>", gr.skip()
        gallery = [(item.image, _upload_name(item.path) + (" (masked)" if item.mask is not None else ""))
                   for item in validation.accepted]
        rows = [[_upload_name(item.path), item.caption or ""] for item in validation.accepted]
        return gallery, messages_html(validation.messages, lambda text: short_upload_paths(text, ctx)), gr.update(value=rows)

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

    def on_create(files, name, identifier, class_noun, base, resolution, crop, table=None, placement="class", dataset="",
                  auto_caption="", auto_mask=""):
        try:
            paths = _paths(files, ctx)
            typed, masks = _extras(files, ctx, table)
            if not (name or "").strip():
                raise StudioError("Give the subject a name (it becomes the folder subjects/<name>).")
            tokenizers = None
            try:
                tokenizers = ctx.tokenizers(base or DEFAULT_BASE)
            except StudioError as error:
                gr.Warning(f"The identifier was not checked: {browser_text(error)}")
            subject = _create(ctx, paths, identifier, class_noun, name, int(resolution or resolution_default), crop, tokenizers,
                              _by_name(typed, paths), _by_name(masks, paths), placement or "class", (dataset or "").strip(),
                              (auto_caption or "").strip(), (auto_mask or "").strip())
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
        """New photos replace the photos of the previous upload (Gradio would add them to the list); captions
        and masks uploaded on their own join the photos already there."""
        paths = [f if isinstance(f, str) else getattr(f, "name", str(f)) for f in (current or [])]
        fresh = [p for p in paths if p not in (earlier or [])]
        kept = fresh if mask_painter.photo_paths(fresh) else paths
        return kept, kept

    mask_painter.build(ctx, files)
    earlier = gr.State([])
    files.upload(on_upload, [files, earlier], [files, earlier], api_name=False)
    for trigger in (files.change, resolution.change, crop.change):
        trigger(on_images, [files, resolution, crop, captions], [preview, report, captions], api_name=False)
    check.click(on_check, [identifier, base], [id_message, suggestions], api_name="check_identifier")
    identifier.submit(on_check, [identifier, base], [id_message, suggestions], api_name=False)
    suggestions.select(lambda choice: choice, suggestions, identifier, api_name=False)
    created = create.click(on_create, [files, name, identifier, class_noun, base, resolution, crop, captions, placement, dataset,
                                       auto_caption, auto_mask], status, api_name="create_subject")
    return SubjectTab(files, name, created, status)


def _create(ctx: Context, paths, identifier, class_noun, name, resolution, crop, tokenizers, captions, masks, placement,
            dataset, auto_caption, auto_mask):
    """prepare_subject with the tab's options: a dataset instead of the photos, automatic captions and masks."""
    from studio.confine import looks_like_path

    options = {"resolution": resolution, "crop": crop, "tokenizer": tokenizers, "identifier_placement": placement}
    for ref in (auto_caption, auto_mask, dataset):
        if ref and looks_like_path(ref):
            confine(ref, [ctx.ws.root], what="model or dataset folder", fix="Give a hub id, or a folder inside the data directory.")
    if auto_caption:
        from studio.captioner import load_captioner

        options["auto_caption"] = load_captioner(auto_caption)
    if auto_mask:
        from studio.automask import load_masker

        options["auto_mask"] = load_masker(auto_mask)
    out = ctx.ws.subject_dir(name)
    if dataset:
        from studio.hf_datasets import staged_dataset

        with staged_dataset(dataset) as staged:
            return prepare_subject([str(f) for f in staged.files], identifier, class_noun, out, captions=staged.captions,
                                   masks=staged.masks, **options)
    return prepare_subject(paths, identifier, class_noun, out, captions=captions, masks=masks, **options)
