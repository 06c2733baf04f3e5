"""Atomic, durable writes: a result appears under its final name complete, or not at all.

Every writer here follows the same order: write a hidden temporary sibling (``.NAME.XXXXXXXX.tmp``),
``fsync`` it, rename it onto the final name, then ``fsync`` the parent folder so the rename itself
survives a power loss. A crash (kill -9, power cut) can leave a temporary sibling behind; it never
replaces anything, and :func:`remove_stale_temporaries` deletes it at the next start of the same run
or export (see docs/reliability.md).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# What _temp_sibling and atomic_dir name their temporaries (tempfile's 8 random characters), and the
# ".NAME.old" a replaced folder is parked under for a moment.
TEMPORARY_NAME = re.compile(r"^\.(?P<name>.+)\.(?:[a-z0-9_]{8}\.tmp(?:\..*)?|old)$")


def _temp_sibling(final: Path, suffix: str = "") -> Path:
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=f".tmp{suffix}", dir=final.parent)
    os.close(fd)
    return Path(name)


def fsync_path(path: str | os.PathLike) -> None:
    """Flush a file's (or a folder's entries') data to the disk."""
    flags = os.O_RDONLY | (os.O_DIRECTORY if Path(path).is_dir() else 0)
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync every file and folder under ``root`` (a folder about to be renamed into place)."""
    for folder, _, files in os.walk(root):
        for name in files:
            path = Path(folder) / name
            if not path.is_symlink():
                fsync_path(path)
        fsync_path(folder)


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    final = Path(path)
    tmp = _temp_sibling(final)
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, final)
        fsync_path(final.parent)
    finally:
        tmp.unlink(missing_ok=True)
    return final


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; fsync it and rename it into place only if the block succeeds.

    ``suffix`` keeps a meaningful extension on the temporary name (e.g. ``.png`` for PIL).
    """
    final = Path(path)
    tmp = _temp_sibling(final, suffix)
    try:
        yield tmp
        fsync_path(tmp)
        os.replace(tmp, final)
        fsync_path(final.parent)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, *, replace: bool = False) -> Iterator[Path]:
    """Yield an empty temporary directory; it becomes ``path`` only if the block succeeds.

    With ``replace=True`` an existing ``path`` is swapped out after the new one is complete.
    Everything in the new folder is fsynced before the rename. On failure nothing is left behind.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        yield tmp
        fsync_tree(tmp)
        if final.exists():
            if not replace:
                raise FileExistsError(f"{final} already exists")
            old = final.with_name(f".{final.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            fsync_path(final.parent)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
            fsync_path(final.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def stale_temporaries(directory: str | os.PathLike, name: str | None = None, *, recursive: bool = False) -> list[Path]:
    """Temporaries these writers left in ``directory`` (only those of final name ``name`` if given)."""
    root = Path(directory)
    if not root.is_dir():
        return []
    found: list[Path] = []
    for folder, dirs, files in os.walk(root):
        for entry in [*dirs, *files]:
            match = TEMPORARY_NAME.match(entry)
            if match and (name is None or match.group("name") == name):
                found.append(Path(folder) / entry)
        dirs[:] = [d for d in dirs if not TEMPORARY_NAME.match(d)] if recursive else []
    return sorted(found)


def remove_stale_temporaries(directory: str | os.PathLike, name: str | None = None, *, recursive: bool = False) -> list[Path]:
    """Delete what :func:`stale_temporaries` finds; the caller must hold whatever lock keeps writers out."""
    removed = stale_temporaries(directory, name, recursive=recursive)
    for path in removed:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return removed


def save_safetensors(tensors: dict, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> Path:
    """Save a state dict as safetensors atomically (tensors made contiguous first)."""
    from safetensors.torch import save_file

    with atomic_file(path, ".safetensors") as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    return Path(path)
