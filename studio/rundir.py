"""Creating a run directory, and telling what is one (no torch here: the CLI and the UI use it too).

A new run is created under its run lock (:mod:`studio.runlock`): of two processes that name the same
``--out`` at the same moment exactly one gets it. The subject is copied file by file from what its
``subject.json`` lists (every entry confined to the subject folder and decoded as an image first),
never as a folder tree, so nothing else in the subject folder (a symlink to /etc, say) reaches the run.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from studio.atomic import atomic_dir, write_json
from studio.errors import ConfigError, SubjectError, disk_full_error, is_disk_full
from studio.run_layout import CHECKPOINTS_DIR, CONFIG_FILE, EVENTS_FILE, RESULT_FILE, SUBJECT_DIR  # noqa: F401 - re-exported
from studio.runlock import LOCK_FILE
from studio.settings import TrainConfig
from studio.subjects import IMAGES_DIR, SUBJECT_FILE, load_subject

# Files a brand-new (or never-started) run directory may already hold.
_HOUSEKEEPING = {LOCK_FILE}


def is_run_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a Studio run (its markers: config.yaml and subject/subject.json)."""
    root = Path(path)
    return (root / CONFIG_FILE).is_file() and (root / SUBJECT_DIR / SUBJECT_FILE).is_file()


def find_run(path: str | os.PathLike, *, max_entries: int = 100_000) -> Path | None:
    """A run at or below ``path`` (symlinks not followed), or None; used to refuse destroying one."""
    root = Path(path)
    if is_run_dir(root):
        return root
    seen = 0
    for folder, dirs, _ in os.walk(root):
        for name in dirs:
            seen += 1
            if is_run_dir(Path(folder) / name):
                return Path(folder) / name
        if seen > max_entries:  # too big to search: treat it as precious
            return Path(folder)
    return None


def _never_started(run_dir: Path) -> bool:
    """A run whose start failed or was killed before its first step: nothing in it is worth keeping."""
    if not is_run_dir(run_dir) or (run_dir / RESULT_FILE).exists():
        return False
    checkpoints = run_dir / CHECKPOINTS_DIR
    if checkpoints.is_dir() and any(p.name.startswith("step-") for p in checkpoints.iterdir()):
        return False
    events = run_dir / EVENTS_FILE
    return not events.exists() or '"type": "step"' not in events.read_text(encoding="utf-8", errors="replace")


def claimable(run_dir: Path) -> bool:
    """Whether a new run may be created at ``run_dir`` (missing, empty, or a never-started run)."""
    if not run_dir.exists():
        return True
    if not run_dir.is_dir():
        return False
    contents = [p for p in run_dir.iterdir() if p.name not in _HOUSEKEEPING]
    return not contents or _never_started(run_dir)


def clear_contents(run_dir: Path) -> None:
    """Remove everything in ``run_dir`` except its lock file (the caller holds the lock)."""
    for entry in run_dir.iterdir():
        if entry.name in _HOUSEKEEPING:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def copy_subject(subject_dir: Path, target: Path) -> None:
    """Copy a subject into ``target`` (created atomically): subject.json and exactly the images and masks it lists."""
    from studio.images import ImageRejected, decode_image

    subject = load_subject(subject_dir)  # every listed image confined to the subject folder
    record: dict[str, Any] = json.loads((subject.directory / SUBJECT_FILE).read_text(encoding="utf-8"))
    with atomic_dir(target) as tmp:
        (tmp / IMAGES_DIR).mkdir()
        entries = []
        for path in subject.files:
            try:
                decode_image(path)
            except ImageRejected as reason:
                raise SubjectError(f"Subject image {path} cannot be trained on: {reason}. Run `studio prepare` again.") from None
            relative = path.relative_to(subject.directory).as_posix()
            destination = tmp / relative
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, destination)
            entries.append(relative)
        record["images"] = entries[: len(subject.image_paths)]
        write_json(tmp / SUBJECT_FILE, record)


def prepare_run_dir(config: TrainConfig, subject_dir: str | os.PathLike, run_dir: str | os.PathLike) -> None:
    """Create a new run directory: the resolved config and a checked copy of the subject.

    The caller holds the run's lock. On any failure (disk full included) the directory is left as it
    was found: nothing partial blocks the same ``--out`` afterwards.
    """
    from studio.config import save_config

    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"--out {run_dir} is a file; give a folder path for the run.")
    if not claimable(run_dir):
        raise ConfigError(f"Run directory {run_dir} already exists and is not empty; choose another --out, or --resume it.")
    subject = load_subject(subject_dir)
    if not subject.image_paths:
        raise ConfigError(f"Subject {subject_dir} has no images; run `studio prepare` on 1-20 photos.")
    existed = run_dir.exists()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        clear_contents(run_dir)
        copy_subject(subject.directory, run_dir / SUBJECT_DIR)
        save_config(config, run_dir / CONFIG_FILE)
    except BaseException as error:
        discard_run_dir(run_dir, keep_folder=existed)
        if isinstance(error, OSError | shutil.Error) and is_disk_full(error):
            raise disk_full_error(error, "the new run", run_dir) from None
        if isinstance(error, OSError):
            raise ConfigError(f"Could not create the run directory {run_dir}: {error}. Check the folder is writable.") from None
        raise


def discard_run_dir(run_dir: Path, *, keep_folder: bool) -> None:
    """Undo a run directory this process created (a failed start); keep the folder itself if it pre-existed."""
    if not run_dir.is_dir():
        return
    clear_contents(run_dir)
    (run_dir / LOCK_FILE).unlink(missing_ok=True)
    if not keep_folder:
        try:
            run_dir.rmdir()
        except OSError:
            pass
