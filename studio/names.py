"""Turning names typed by users into safe file and folder names.

A subject called ``../../etc`` or ``My Dog (2)`` must not decide where Studio writes: every name
that comes from a person (web UI, ``studio jobs submit --name``) goes through :func:`safe_name`
before it becomes part of a path, and :func:`child_path` refuses anything that would still land
outside its parent folder.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

from studio.errors import StudioError

MAX_NAME_LENGTH = 64
_UNSAFE = re.compile(r"[^a-z0-9._-]+")
# Names Windows refuses whatever the extension; refusing them everywhere keeps data dirs portable.
_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(1, 10)), *(f"lpt{i}" for i in range(1, 10))}


def safe_name(text: str, fallback: str = "untitled") -> str:
    """A lowercase ``[a-z0-9._-]`` name of at most 64 characters derived from ``text``.

    Accents are folded to ASCII, runs of anything else become one ``-``, leading dots and dashes
    are dropped (no hidden files, no ``..``, no option-looking names). An empty result, or a
    reserved device name, becomes ``fallback``.
    """
    folded = unicodedata.normalize("NFKD", str(text or "")).encode("ascii", "ignore").decode("ascii")
    name = _UNSAFE.sub("-", folded.lower()).strip("-._")
    name = re.sub(r"-{2,}", "-", name)[:MAX_NAME_LENGTH].rstrip("-._")
    if not name or name.split(".")[0] in _RESERVED:
        return fallback
    return name


def child_path(parent: str | Path, name: str, fallback: str = "untitled") -> Path:
    """``parent / safe_name(name)``, checked to be directly inside ``parent``."""
    root = Path(parent).expanduser().resolve()
    path = (root / safe_name(name, fallback)).resolve()
    if path.parent != root:
        raise StudioError(f"The name {name!r} does not make a folder inside {root}; choose a plain name such as 'my-dog'.")
    return path
