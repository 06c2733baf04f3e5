"""One confinement rule for every path that comes from outside Studio's own code.

A path named by a user, a recipe, a subject file or the web API is resolved (``~`` expanded, made
absolute, every symlink followed) and must then lie inside one of the allowed roots, or it is
refused with a message naming the path. Which roots apply depends on who asked:

* the CLI and the Python API: anywhere (a person names their own files), except that entries of a
  ``subject.json`` must stay inside their subject folder;
* the web UI and its HTTP API: only inside the studio data directory.

See docs/reliability.md ("Confinement").
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from studio.errors import ConfinementError


def resolved(path: str | os.PathLike) -> Path:
    """``path`` with ``~`` expanded, made absolute and every symlink followed."""
    return Path(path).expanduser().resolve()


def is_within(path: str | os.PathLike, root: str | os.PathLike) -> bool:
    """Whether ``path`` resolves to ``root`` or something inside it."""
    return resolved(path).is_relative_to(resolved(root))


def confine(path: str | os.PathLike, roots: Sequence[str | os.PathLike] | None, *, what: str = "path",
            fix: str = "") -> Path:
    """``path`` resolved; refused unless inside one of ``roots`` (``None``: no restriction)."""
    target = resolved(path)
    if roots is None:
        return target
    allowed = [resolved(root) for root in roots]
    if any(target.is_relative_to(root) for root in allowed):
        return target
    shown = str(path)
    real = f" (it resolves to {target})" if str(target) != shown else ""
    where = " or ".join(str(root) for root in allowed) or "nowhere"
    raise ConfinementError(
        f"Refused {what} {shown}{real}: it is outside {where}, the only place Studio reads from here. "
        + (fix or "Put the file inside that folder and use that path.")
    )


def confine_entry(root: str | os.PathLike, entry: str, *, what: str) -> Path:
    """A relative ``entry`` of a record in folder ``root`` (e.g. a subject.json image): inside ``root`` or refused."""
    if Path(entry).is_absolute():
        raise ConfinementError(f"Refused {what} {entry!r}: it is an absolute path; entries must be relative to {root}.")
    return confine(Path(root) / entry, [root], what=what, fix=f"Entries must name files inside {root}.")


def looks_like_path(ref: str) -> bool:
    """Whether a model reference names a local path (rather than a built-in name or a hub id)."""
    text = str(ref)
    return text.startswith(("/", "~", ".")) or os.sep in text and Path(text).expanduser().exists()


def confine_refs(refs: Iterable[tuple[str, str | None]], roots: Sequence[str | os.PathLike] | None) -> None:
    """Check model references (``(setting name, value)``) that name local paths against ``roots``."""
    if roots is None:
        return
    for name, value in refs:
        if value and looks_like_path(value):
            confine(value, roots, what=f"{name}", fix=f"Give a built-in name or hub id for {name}, or a folder inside the data directory.")
