"""What a person painted in Gradio's image editor, as a mask: shared by the Generate tab (inpainting) and
the Subject tab (the subject's loss mask)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from studio.errors import StudioError


def path_of(item: Any) -> str:
    """A file path from a Gradio file value (a path, or a dict with ``path``)."""
    if isinstance(item, dict):
        item = item.get("path")
    if not item:
        raise StudioError("An uploaded image arrived without a file; upload it again.")
    return str(item)


def painted_area(layers: list[Path]) -> np.ndarray | None:
    """Where any layer has paint (non-transparent pixels), or None when nothing was painted."""
    marked = None
    for layer in layers:
        with Image.open(layer) as image:
            alpha = np.asarray(image.convert("RGBA").getchannel("A")) > 0
        marked = alpha if marked is None or marked.shape != alpha.shape else (marked | alpha)
    return marked if marked is not None and marked.any() else None


def editor_parts(value: Any) -> tuple[str | None, list[str]]:
    """``(background path, layer paths)`` of an image editor value (a plain path has no layers)."""
    if not value:
        return None, []
    if isinstance(value, (str, Path)):
        return str(value), []
    if isinstance(value, dict):
        background = value.get("background") or value.get("composite")
        layers = [path_of(layer) for layer in value.get("layers") or [] if layer]
        return (path_of(background) if background else None), layers
    raise StudioError("The image arrived in a form this tab does not read; upload it again.")
