"""Several subjects in one run: prepared subjects combined into one subject folder.

Each keeps its identifier, class noun, prompts, captions, masks and images, and gets its own
``repeats`` (how many times an epoch shows each of its images); training draws class images for each
subject's class prompt, and evaluation scores each subject against its own photos. The first subject
is the folder's "main" one (its words fill the top-level fields older readers use).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from studio.errors import SubjectError
from studio.subjects import (
    IMAGES_DIR,
    MASKS_DIR,
    MAX_SUBJECTS,
    SCHEMA_VERSION,
    SUBJECT_FILE,
    Subject,
    _check_out_dir,
    check_repeats,
    load_subject,
    write_subject_dir,
)


def combine_subjects(
    subject_dirs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    repeats: Sequence[int] | None = None,
    force: bool = False,
) -> Subject:
    """Write ``out_dir`` holding every subject of ``subject_dirs`` (each a prepared subject folder).

    ``repeats``: one per input subject (default: what each subject says). The subjects must share one
    training resolution and have distinct identifiers; nothing is written when they do not.
    """
    if not 2 <= len(subject_dirs) <= MAX_SUBJECTS:
        raise SubjectError(f"Combine 2 to {MAX_SUBJECTS} prepared subjects, not {len(subject_dirs)}.")
    subjects = [load_subject(d) for d in subject_dirs]
    if repeats is not None and len(repeats) != len(subjects):
        raise SubjectError(f"Give one repeats value per subject: {len(subjects)} subjects, {len(repeats)} values.")
    resolutions = {s.resolution for s in subjects}
    if len(resolutions) > 1:
        listed = ", ".join(f"{s.directory.name}: {s.resolution} px" for s in subjects)
        raise SubjectError(f"The subjects were prepared at different resolutions ({listed}); prepare them at one "
                           "resolution and combine again.")
    concepts_in = [(s, c) for s in subjects for c in s.concepts]
    if len(concepts_in) > MAX_SUBJECTS:
        raise SubjectError(f"That makes {len(concepts_in)} subjects; combine at most {MAX_SUBJECTS}.")
    seen: dict[str, Path] = {}
    for subject, concept in concepts_in:
        if concept.identifier in seen:
            raise SubjectError(f"{subject.directory} and {seen[concept.identifier]} both use the identifier "
                               f"'{concept.identifier}'; each subject needs its own. Prepare one again with another identifier.")
        seen[concept.identifier] = subject.directory
    out = Path(out_dir).expanduser()
    replace = _check_out_dir(out, force)

    record: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "resolution": subjects[0].resolution,
                              "crop": "bucket" if any(s.crop == "bucket" for s in subjects) else subjects[0].crop,
                              "images": [], "captions": [], "masks": [], "sources": [], "concepts": [], "warnings": []}
    pictures: list[tuple[str, Image.Image]] = []
    for number, subject in enumerate(subjects):
        for concept in subject.concepts:
            indices = []
            for old in concept.images:
                index = len(record["images"])
                relative = f"{IMAGES_DIR}/{index:03d}.png"
                with Image.open(subject.image_paths[old]) as image:
                    pictures.append((relative, image.convert("RGB")))
                mask_relative = None
                if subject.mask_paths[old] is not None:
                    mask_relative = f"{MASKS_DIR}/{index:03d}.png"
                    with Image.open(subject.mask_paths[old]) as mask:  # type: ignore[arg-type]
                        pictures.append((mask_relative, mask.convert("L")))
                record["images"].append(relative)
                record["captions"].append(subject.captions[old])
                record["masks"].append(mask_relative)
                record["sources"].append(dict(subject.sources[old]) | {"image": relative, "subject": subject.directory.name})
                indices.append(index)
            record["concepts"].append({
                "identifier": concept.identifier, "class_noun": concept.class_noun,
                "instance_prompt": concept.instance_prompt, "class_prompt": concept.class_prompt,
                "repeats": check_repeats(repeats[number]) if repeats is not None else concept.repeats, "images": indices,
            })
        record["warnings"] += [f"{subject.directory.name}: {w}" for w in subject.warnings]
    first = record["concepts"][0]
    record.update({k: first[k] for k in ("identifier", "class_noun", "instance_prompt", "class_prompt")})
    write_subject_dir(out, record, pictures, replace=replace)
    return load_subject(out)


def describe(subject: Subject) -> list[dict[str, Any]]:
    """Each subject of a folder in words (for reports and the web UI)."""
    return [{"identifier": c.identifier, "class_noun": c.class_noun, "instance_prompt": c.instance_prompt,
             "class_prompt": c.class_prompt, "repeats": c.repeats, "images": len(c.images)} for c in subject.concepts]


def read_record(directory: str | os.PathLike) -> dict[str, Any]:
    """A subject folder's subject.json as written (after :func:`load_subject` has checked it)."""
    return json.loads((load_subject(directory).directory / SUBJECT_FILE).read_text(encoding="utf-8"))
