"""What the Generate tab receives from the browser, made safe and lasting: the start image and the mask
painted over it (Gradio's image editor), the control image, model references.

Every path must resolve inside the data directory (an HTTP API caller can send any). The inputs of one
request are copied into its own folder ``DATA/generated/<time>/`` next to the images made from them, so
each image's recipe names files that stay where it says.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from studio.confine import confine, confine_refs
from studio.errors import StudioError
from webui.painting import editor_parts, painted_area, path_of

GENERATED = "generated"
IMAGE_PREFIXES = ("personalised-", "base-")  # the images a request made (the rest are copies of its inputs)


def request_folder(root: Path) -> Path:
    """A new folder for one request's inputs and images."""
    base = Path(root) / GENERATED
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for index in range(1000):
        folder = base / (stamp if index == 0 else f"{stamp}-{index}")
        try:
            folder.mkdir(parents=True)
            return folder
        except FileExistsError:
            continue
    raise StudioError(f"Could not make a new folder under {base}.")


def discard_unused(folder: Path | None) -> None:
    """Remove a request's folder when no image was made in it (only copies of its inputs)."""
    if folder is not None and folder.is_dir() and not any(p.name.startswith(IMAGE_PREFIXES) for p in folder.iterdir()):
        shutil.rmtree(folder, ignore_errors=True)


def _inside(path: Any, root: Path, what: str) -> Path:
    return confine(str(path), [root], what=what, fix="Upload the image instead.")


def editor_inputs(value: Any, root: Path, folder: Path) -> tuple[str | None, str | None]:
    """``(start image, mask)`` paths copied into ``folder`` from an image editor value; the mask is None when
    nothing was painted (then the start image is for img2img or an instruction edit)."""
    background, layers = editor_parts(value)
    if not background:
        return None, None
    background = _inside(background, root, "start image")
    start = folder / f"start{background.suffix.lower() or '.png'}"
    shutil.copyfile(background, start)
    marked = painted_area([_inside(layer, root, "mask") for layer in layers])
    if marked is None:
        return str(start), None
    mask = folder / "mask.png"
    Image.fromarray((marked * 255).astype(np.uint8), mode="L").save(mask)
    return str(start), str(mask)


def control_input(value: Any, root: Path, folder: Path) -> str | None:
    """The uploaded control image, copied into ``folder``."""
    if not value:
        return None
    source = _inside(path_of(value), root, "control image")
    target = folder / f"control{source.suffix.lower() or '.png'}"
    shutil.copyfile(source, target)
    return str(target)


def model_ref(value: Any, root: Path, what: str) -> str | None:
    """A model reference typed or chosen in the browser: a path must lie in the data directory."""
    text = str(value or "").strip()
    if not text:
        return None
    confine_refs([(what, text)], [root])
    return text


