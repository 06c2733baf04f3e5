"""Hugging Face datasets in and out of subjects, through the ``datasets`` library.

In: a hub id (read from the local cache offline, or downloaded when online), a local ``imagefolder``
(photos plus ``metadata.jsonl``) or a folder written by ``Dataset.save_to_disk``. Each row's image
becomes a photo, its ``text``/``caption`` column its caption, and an optional ``mask`` image column its
mask; then the photos go through the same checks as any others (:func:`studio.subjects.prepare_subject`).

Out: a prepared subject as an ``imagefolder`` (``images`` + ``metadata.jsonl`` with ``file_name``,
``text``, ``identifier``, ``class_noun``, ``mask_file_name``) that ``datasets.load_dataset("imagefolder",
data_dir=...)`` reads, and, only when asked, pushed to the Hub (checked before any work: offline or
without a token is a clear error).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from studio.atomic import atomic_dir
from studio.errors import SubjectError
from studio.subjects import MAX_IMAGES, load_subject

CAPTION_COLUMNS = ("text", "caption", "prompt")
IMAGE_COLUMNS = ("image", "img", "photo")
MASK_COLUMN = "mask"
DATASET_FILES = ("state.json", "dataset_info.json")  # markers of a save_to_disk folder


@dataclass
class StagedDataset:
    """A dataset's rows written out as photo files, with their captions and masks by file name."""

    files: list[Path]
    captions: dict[str, str] = field(default_factory=dict)
    masks: dict[str, Image.Image] = field(default_factory=dict)
    source: str = ""


def _load(ref: str, split: str) -> Any:
    import datasets

    path = Path(ref).expanduser()
    try:
        if path.is_dir():
            if any((path / name).is_file() for name in DATASET_FILES):
                loaded = datasets.load_from_disk(str(path))
                return loaded[split] if isinstance(loaded, datasets.DatasetDict) else loaded
            return datasets.load_dataset("imagefolder", data_dir=str(path), split=split)
        if path.exists() or ref.startswith(("/", ".", "~")):
            raise SubjectError(f"The dataset {ref} is not a folder; give a hub id (owner/name) or a folder holding "
                               "photos and metadata.jsonl.")
        return datasets.load_dataset(ref, split=split)
    except SubjectError:
        raise
    except (FileNotFoundError, ConnectionError, OSError, ValueError, KeyError) as error:
        offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
        hint = (" Studio is offline (HF_HUB_OFFLINE): download the dataset once online, or give a local folder."
                if offline and not path.exists() else "")
        raise SubjectError(f"Cannot load the dataset {ref} (split {split}): {error}.{hint}",
                           browser=f"Cannot load the dataset {ref}: {error}.{hint.replace(' (HF_HUB_OFFLINE)', '')}") from None


def _column(names: list[str], wanted: str | None, choices: tuple[str, ...], what: str, ref: str) -> str | None:
    if wanted:
        if wanted not in names:
            raise SubjectError(f"The dataset {ref} has no {what} column '{wanted}'; its columns are {', '.join(names)}.")
        return wanted
    return next((c for c in choices if c in names), None)


@contextmanager
def staged_dataset(ref: str, *, split: str = "train", image_column: str | None = None,
                   caption_column: str | None = None) -> Iterator[StagedDataset]:
    """The rows of dataset ``ref`` as photo files in a temporary folder (removed afterwards).

    A row whose image is missing or unreadable is an error naming the row; more than a subject's
    maximum of photos is an error before anything is written.
    """
    dataset = _load(ref, split)
    names = list(dataset.column_names)
    image_col = _column(names, image_column, IMAGE_COLUMNS, "image", ref)
    if image_col is None:
        raise SubjectError(f"The dataset {ref} has no image column (looked for {', '.join(IMAGE_COLUMNS)}; its columns are "
                           f"{', '.join(names)}). Name it with --image-column.")
    caption_col = _column(names, caption_column, CAPTION_COLUMNS, "caption", ref)
    if len(dataset) > MAX_IMAGES:
        raise SubjectError(f"The dataset {ref} has {len(dataset)} rows; a subject has at most {MAX_IMAGES} photos. "
                           "Pick the best ones into a smaller dataset (3-5 varied photos work best).")
    with tempfile.TemporaryDirectory(prefix="studio-dataset-") as folder:
        staged = StagedDataset([], source=ref)
        for number in range(len(dataset)):
            row = dataset[number]
            image = row[image_col]
            if not isinstance(image, Image.Image):
                raise SubjectError(f"Row {number} of the dataset {ref} has no image in column '{image_col}' "
                                   f"({type(image).__name__}); fix or drop that row.")
            name = Path(str(row.get("file_name") or getattr(image, "filename", "") or f"row-{number:05d}")).stem + ".png"
            if any(f.name == name for f in staged.files):
                name = f"row-{number:05d}.png"
            target = Path(folder) / name
            image.save(target, format="PNG")  # lossless: the subject checks see the row's own pixels
            staged.files.append(target)
            if caption_col and isinstance(row.get(caption_col), str) and row[caption_col].strip():
                staged.captions[name] = row[caption_col]
            if isinstance(row.get(MASK_COLUMN), Image.Image):
                staged.masks[name] = row[MASK_COLUMN]
        yield staged


def export_subject_dataset(subject_dir: str | os.PathLike, out_dir: str | os.PathLike, *, force: bool = False,
                           push_to_hub: str | None = None, private: bool = False) -> dict[str, Any]:
    """Write a prepared subject as an ``imagefolder`` dataset at ``out_dir``; with ``push_to_hub`` (a repo id)
    upload it too. The Hub is checked (online, a token) before anything is written."""
    token = None
    if push_to_hub:
        from studio.export.hub import HubError, check_hub_ready

        try:
            token = check_hub_ready(push_to_hub)
        except HubError as error:
            raise SubjectError(str(error).replace("export again", "save the dataset again"),
                               browser=str(error).replace("--push-to-hub", "Pushing to the Hub")) from None
    subject = load_subject(subject_dir)
    out = Path(out_dir).expanduser()
    if out.exists() and any(out.iterdir()):
        if not force:
            raise SubjectError(f"{out} already exists and is not empty; pass --force to replace it, or choose another folder.")
        if not (out / "metadata.jsonl").is_file():
            raise SubjectError(f"Refusing to replace {out}: it is not a dataset Studio wrote (no metadata.jsonl).")
    rows = []
    with atomic_dir(out, replace=out.exists()) as tmp:
        (tmp / "images").mkdir()
        for index, path in enumerate(subject.image_paths):
            concept = subject.concept_of(index)
            name = f"images/{index:03d}.png"
            shutil.copyfile(path, tmp / name)
            row = {"file_name": name, "text": subject.caption(index), "identifier": concept.identifier,
                   "class_noun": concept.class_noun, "mask_file_name": None}
            mask = subject.mask_paths[index]
            if mask is not None:
                (tmp / "masks").mkdir(exist_ok=True)
                row["mask_file_name"] = f"masks/{index:03d}.png"
                shutil.copyfile(mask, tmp / row["mask_file_name"])
            rows.append(row)
        (tmp / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    result: dict[str, Any] = {"folder": str(out), "rows": len(rows)}
    if push_to_hub:
        import datasets

        dataset = datasets.load_dataset("imagefolder", data_dir=str(out), split="train")
        try:
            dataset.push_to_hub(push_to_hub, token=token, private=private)
        except Exception as error:  # the network, permissions, a name taken
            raise SubjectError(f"Uploading the dataset to the Hub repository '{push_to_hub}' failed: {error}") from error
        result["hub"] = f"https://huggingface.co/datasets/{push_to_hub}"
    return result
