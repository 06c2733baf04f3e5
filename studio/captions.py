"""Per-image captions: where they come from, where the identifier goes, and caption dropout.

Sources, for photos in one folder (the first that has a caption for a photo wins):

* a sidecar text file with the photo's stem (``dog1.jpg`` -> ``dog1.txt``);
* ``metadata.jsonl`` in the photo's folder, the Hugging Face ``imagefolder`` layout: one JSON object per
  line with ``file_name`` and ``text`` (or ``caption``).

The identifier goes where the caption says ``{identifier}``; otherwise :data:`PLACEMENTS` decide:
``class`` puts it before the first mention of the class noun ("a dog on grass" -> "a sks dog on
grass") and falls back to ``prefix``; ``prefix`` starts the caption with the instance prompt
("a sks dog, on grass"); ``none`` keeps the caption as written. Photos without a caption train on
the instance prompt.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from studio.images import FileMessage

MARKER = "{identifier}"
METADATA_FILE = "metadata.jsonl"
CAPTION_KEYS = ("text", "caption")
PLACEMENTS = ("class", "prefix", "none")
MAX_CAPTION_CHARS = 1000
# Caption dropout: what a dropped caption becomes.
DROPOUT_TARGETS = ("instance_prompt", "empty")


class CaptionError(ValueError):
    """A caption source cannot be read; ``str(error)`` names the file (and row) and the fix."""


def clean_caption(text: str) -> str:
    """One line, single spaces."""
    return " ".join(str(text).split())


def check_caption(text: str, where: str) -> str:
    caption = clean_caption(text)
    if len(caption) > MAX_CAPTION_CHARS:
        raise CaptionError(f"{where}: the caption has {len(caption)} characters; keep it under {MAX_CAPTION_CHARS} "
                           "(text encoders read about 75 tokens).")
    return caption


def read_metadata(path: Path) -> dict[str, str]:
    """``file_name`` -> caption from a ``metadata.jsonl``; a bad row raises :class:`CaptionError` naming it."""
    captions: dict[str, str] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise CaptionError(f"{path} cannot be read ({error}); save it as UTF-8 text.") from error
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path} line {number}"
        try:
            row = json.loads(line)
        except ValueError as error:
            raise CaptionError(f"{where} is not valid JSON ({error}); each line must be one object like "
                               '{"file_name": "dog1.jpg", "text": "a dog on grass"}.') from None
        if not isinstance(row, dict) or not isinstance(row.get("file_name"), str):
            raise CaptionError(f'{where} has no "file_name"; each line must name its photo, e.g. '
                               '{"file_name": "dog1.jpg", "text": "a dog on grass"}.')
        key = next((k for k in CAPTION_KEYS if k in row), None)
        if key is None:
            continue  # a row may carry other columns only
        if not isinstance(row[key], str):
            raise CaptionError(f'{where}: "{key}" must be text, not {type(row[key]).__name__}.')
        name = Path(row["file_name"]).name
        if name in captions:
            raise CaptionError(f"{where} names {name} a second time; keep one row per photo.")
        captions[name] = check_caption(row[key], where)
    return captions


def find_captions(files: Sequence[Path]) -> tuple[dict[Path, str], list[FileMessage]]:
    """Captions for ``files`` from sidecar ``.txt`` files and ``metadata.jsonl``; messages for problems.

    A caption source that cannot be read is an error naming the file (or row); a metadata row naming
    no given photo is a warning.
    """
    captions: dict[Path, str] = {}
    messages: list[FileMessage] = []
    metadata: dict[Path, dict[str, str]] = {}
    for folder in sorted({f.parent for f in files}):
        path = folder / METADATA_FILE
        if path.is_file():
            try:
                metadata[folder] = read_metadata(path)
            except CaptionError as error:
                messages.append(FileMessage("error", str(error).removeprefix(f"{path}").lstrip(": ") or str(error), path))
    for file in files:
        sidecar = file.with_suffix(".txt")
        if sidecar.is_file():
            try:
                captions[file] = check_caption(sidecar.read_text(encoding="utf-8"), str(sidecar))
            except (OSError, UnicodeDecodeError) as error:
                messages.append(FileMessage("error", f"cannot be read ({error}); save it as UTF-8 text", sidecar))
            except CaptionError as error:
                messages.append(FileMessage("error", str(error).split(": ", 1)[-1], sidecar))
            continue
        text = metadata.get(file.parent, {}).get(file.name)
        if text is not None:
            captions[file] = text
    names = {f.name for f in files}
    for folder, rows in metadata.items():
        for name in rows:
            if name not in names:
                messages.append(FileMessage("warning", f"names {name}, which is not among the photos; that row is ignored",
                                            folder / METADATA_FILE))
    return captions, messages


def place_identifier(caption: str, identifier: str, class_noun: str, placement: str = "class") -> str:
    """``caption`` with the identifier where the user says (see the module docstring)."""
    if placement not in PLACEMENTS:
        raise ValueError(f"placement must be one of {', '.join(PLACEMENTS)}, not {placement!r}")
    caption = clean_caption(caption)
    if MARKER in caption:
        return clean_caption(caption.replace(MARKER, identifier))
    if placement == "none" or re.search(rf"(?<!\S){re.escape(identifier)}(?!\S)", caption):
        return caption
    if placement == "class":
        match = re.search(rf"\b{re.escape(class_noun)}\b", caption, flags=re.IGNORECASE)
        if match:
            return caption[: match.start()] + f"{identifier} " + caption[match.start():]
    return f"a {identifier} {class_noun}, {caption}" if caption else f"a {identifier} {class_noun}"


def dropped(seed: int, position: int, rank: int, rows: int, rate: float) -> list[bool]:
    """Which of ``rows`` instance examples of micro-step ``position`` lose their caption.

    A function of the step alone (like the data order), so a resumed run drops the same captions.
    """
    if rate <= 0:
        return [False] * rows
    draws = np.random.default_rng([seed, position, rank, 0xCA]).random(rows)
    return [bool(d < rate) for d in draws]
