"""Automatic captions from a vision-language captioner (BLIP, BLIP-2, GIT... through transformers).

The model loads from a local folder, a hub id (from the local cache when offline; nothing downloads
while ``HF_HUB_OFFLINE`` is set) or a built-in (``tiny-blip``, for tests), all through the same
``from_pretrained`` path. Captions are plain descriptions; :func:`studio.captions.place_identifier`
adds the identifier afterwards, as for captions a person wrote.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image

from studio.errors import ModelLoadError

BATCH = 4


def model_folder(ref: str) -> tuple[str, bool]:
    """(what ``from_pretrained`` gets, local files only?) for a built-in name, a folder or a hub id."""
    from studio.models.builtin import builtin_path, is_builtin
    from studio.models.loader import hub_offline

    if is_builtin(ref):
        return str(builtin_path(ref)), True
    path = Path(ref).expanduser()
    if path.is_dir():
        return str(path), True
    if ref.startswith(("/", ".", "~")):
        raise ModelLoadError(f"The model folder {ref} does not exist; give a folder holding the model, or a hub id.")
    return ref, hub_offline()


def load_processor_and_model(ref: str, processor_class, model_class, what: str):
    """``(processor, model in eval mode)`` of a transformers model ``ref``, or an error naming ``what`` and the fix."""
    source, local = model_folder(ref)
    try:
        processor = processor_class.from_pretrained(source, local_files_only=local)
        model = model_class.from_pretrained(source, local_files_only=local).eval()
    except (OSError, ValueError, KeyError) as error:
        raise ModelLoadError(f"Cannot load the {what} {ref}: {error}. Give a local folder, or a hub id that is cached "
                             "(or reachable online).") from None
    return processor, model


def load_captioner(ref: str, *, max_new_tokens: int = 30) -> Callable[[list[Image.Image]], list[str]]:
    """A function from images to captions, using the image-to-text model ``ref``."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor, model = load_processor_and_model(ref, AutoProcessor, AutoModelForImageTextToText, "captioner")

    @torch.no_grad()
    def caption(images: list[Image.Image]) -> list[str]:
        texts: list[str] = []
        for start in range(0, len(images), BATCH):
            batch = [image.convert("RGB") for image in images[start : start + BATCH]]
            inputs = processor(images=batch, return_tensors="pt")
            ids = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
            texts += [" ".join(t.split()) for t in processor.batch_decode(ids, skip_special_tokens=True)]
        return texts

    return caption
