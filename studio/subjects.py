"""Subject intake: turn a handful of photos into a subject directory a trainer can use.

A subject directory holds ``images/00.png ...`` (square, RGB, at the training resolution) and
``subject.json`` (identifier, class noun, prompts, where each image came from, warnings).
:func:`validate_images` checks photos without writing anything, for the web UI's per-file
messages; :func:`prepare_subject` runs the same checks and then writes the directory atomically.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from studio.atomic import atomic_dir, write_json
from studio.confine import confine_entry
from studio.errors import ConfinementError, SubjectError
from studio.images import (
    CROP_MODES,
    DEFAULT_MAX_PIXELS,
    FileMessage,
    ImageRejected,
    decode_image,
    dhash,
    expand_inputs,
    fit_square,
    hamming,
    scaled_side,
)

SCHEMA_VERSION = 1
SUBJECT_FILE = "subject.json"
IMAGES_DIR = "images"
MIN_IMAGES, MAX_IMAGES = 1, 20
RECOMMENDED_IMAGES = (3, 5)
# Two photos whose 64-bit dHashes differ in at most this many bits are treated as the same shot.
NEAR_DUPLICATE_DISTANCE = 6


@dataclass
class AcceptedImage:
    """A photo that passed every check, with its processed training image."""

    path: Path
    sha256: str
    format: str
    size: tuple[int, int]
    image: Image.Image = field(repr=False)


@dataclass
class Validation:
    """The result of :func:`validate_images`. Unpacks as ``accepted, messages``."""

    accepted: list[AcceptedImage]
    messages: list[FileMessage]
    resolution: int
    crop: str

    @property
    def errors(self) -> list[FileMessage]:
        return [m for m in self.messages if m.level == "error"]

    @property
    def warnings(self) -> list[FileMessage]:
        return [m for m in self.messages if m.level == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def __iter__(self):
        yield self.accepted
        yield self.messages


@dataclass
class Subject:
    """A prepared subject, as written to and read back from its directory."""

    identifier: str
    class_noun: str
    instance_prompt: str
    class_prompt: str
    resolution: int
    crop: str
    image_paths: list[Path]
    sources: list[dict[str, Any]]
    directory: Path
    warnings: list[str] = field(default_factory=list)


def _check_settings(resolution: int, crop: str) -> None:
    if crop not in CROP_MODES:
        raise SubjectError(f"crop must be one of {', '.join(CROP_MODES)}, not {crop!r}.")
    if not isinstance(resolution, int) or resolution < 32 or resolution > 4096 or resolution % 8:
        raise SubjectError(f"resolution must be a multiple of 8 between 32 and 4096, not {resolution!r}.")


def validate_images(
    paths: Iterable[str | os.PathLike],
    resolution: int = 512,
    crop: str = "center",
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Validation:
    """Check photos for use as a subject and process the good ones in memory; write nothing.

    Every problem becomes a :class:`FileMessage` naming the file: unreadable, corrupt or
    truncated files, non-images, unsupported formats, decompression bombs, photos too small
    for ``resolution``, exact duplicates (sha256) and near duplicates (dHash). Too few or too
    many photos is an error; outside the recommended 3-5 a warning.
    """
    _check_settings(resolution, crop)
    files, messages = expand_inputs(paths)
    accepted: list[AcceptedImage] = []
    if len(files) > MAX_IMAGES:
        messages.append(
            FileMessage("error", f"{len(files)} images given; use at most {MAX_IMAGES} (3-5 is the sweet spot).")
        )
        return Validation(accepted, messages, resolution, crop)
    hashes: list[tuple[int, AcceptedImage]] = []
    for path in files:
        try:
            decoded = decode_image(path, min_side=resolution, max_pixels=max_pixels)
        except ImageRejected as reason:
            messages.append(FileMessage("error", str(reason), path))
            continue
        messages.extend(FileMessage("warning", note, path) for note in decoded.notes)
        side = scaled_side(decoded.size, crop)
        size_text = f"{decoded.size[0]}x{decoded.size[1]}"
        which = "shorter" if crop == "center" else "longer"
        if side < resolution / 2:
            messages.append(
                FileMessage(
                    "error",
                    f"is {size_text}, too small: its {which} side should be at least {resolution // 2} px "
                    f"(ideally {resolution}) for {resolution} px training; use a larger original",
                    path,
                )
            )
            continue
        twin = next((a for a in accepted if a.sha256 == decoded.sha256), None)
        if twin is not None:
            messages.append(FileMessage("error", f"is an exact copy of {twin.path}; remove one of them", path))
            continue
        fingerprint = dhash(decoded.image)
        distances = [(hamming(h, fingerprint), a) for h, a in hashes]
        near = min(distances, key=lambda pair: pair[0], default=None)
        if near is not None and near[0] <= NEAR_DUPLICATE_DISTANCE:
            messages.append(
                FileMessage(
                    "error",
                    f"is nearly identical to {near[1].path} (perceptual-hash distance {near[0]} <= "
                    f"{NEAR_DUPLICATE_DISTANCE}); keep one of them and add a photo with a different pose or setting",
                    path,
                )
            )
            continue
        if side < resolution:
            messages.append(
                FileMessage("warning", f"is {size_text}, smaller than {resolution} px; it will be upscaled and look soft", path)
            )
        item = AcceptedImage(path, decoded.sha256, decoded.format, decoded.size, fit_square(decoded.image, resolution, crop))
        accepted.append(item)
        hashes.append((fingerprint, item))
    if len(files) < MIN_IMAGES:
        messages.append(FileMessage("error", f"No images given; add {RECOMMENDED_IMAGES[0]}-{RECOMMENDED_IMAGES[1]} JPEG, PNG or WebP photos."))
    elif accepted and not RECOMMENDED_IMAGES[0] <= len(accepted) <= RECOMMENDED_IMAGES[1]:
        messages.append(
            FileMessage(
                "warning",
                f"{len(accepted)} images; {RECOMMENDED_IMAGES[0]}-{RECOMMENDED_IMAGES[1]} varied photos usually work best.",
            )
        )
    return Validation(accepted, messages, resolution, crop)


def _check_text(name: str, value: str, *, one_word: bool) -> str:
    if not isinstance(value, str) or not value.strip():
        raise SubjectError(f"The {name} is empty; give one, e.g. --identifier sks --class-noun dog.",
                           browser=f"The {name} is empty; fill in the {name.capitalize()} field (e.g. sks for the "
                                   "identifier, dog for the class noun).")
    value = value.strip()
    if "\n" in value or "\r" in value:
        raise SubjectError(f"The {name} {value!r} spans several lines; it must be a single line.")
    if one_word and len(value.split()) > 1:
        raise SubjectError(f"The identifier {value!r} contains spaces; use one rare word such as 'sks'.")
    return " ".join(value.split())


def _check_out_dir(out: Path, force: bool) -> bool:
    """Return whether an existing ``out`` must be replaced; refuse anything risky."""
    if out.is_file():
        raise SubjectError(f"{out} is a file; choose a folder path for the subject (--out).",
                           browser=f"The name {out.name} is taken by a file; type another Subject name.")
    if not out.exists() or not any(out.iterdir()):
        return out.exists()
    if not force:
        raise SubjectError(f"{out} already exists and is not empty; pass --force to replace it, or choose another --out.",
                           browser=f"A subject named {out.name} already exists; type another Subject name.")
    if not (out / SUBJECT_FILE).is_file():
        raise SubjectError(f"Refusing to replace {out}: it is not a subject folder (no {SUBJECT_FILE}). Choose another --out.",
                           browser=f"The name {out.name} is taken by a folder that is not a subject; type another Subject name.")
    return True


def _identifier_messages(tokenizer: Any, identifier: str) -> list[FileMessage]:
    from studio.identifiers import check_identifier

    tokenizers = tokenizer if isinstance(tokenizer, (list, tuple)) else [tokenizer]
    texts: list[str] = []
    for tok in tokenizers:
        result = check_identifier(tok, identifier)
        if not (result.is_single_token and result.is_rare) and result.message not in texts:
            texts.append(result.message)
    return [FileMessage("warning", text) for text in texts]


def prepare_subject(
    images: Sequence[str | os.PathLike],
    identifier: str,
    class_noun: str,
    out_dir: str | os.PathLike,
    resolution: int = 512,
    crop: str = "center",
    tokenizer: Any = None,
    *,
    force: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    on_validated: Callable[[Validation], None] | None = None,
) -> Subject:
    """Validate ``images`` and write the subject directory ``out_dir``; raise SubjectError on any problem.

    With a ``tokenizer`` (or a list of them) the identifier is checked and a warning with
    rare single-token suggestions is added when it is not one rare token. ``on_validated``
    sees the full per-file report before anything is written or raised (the CLI prints it).
    ``out_dir`` appears only once complete; an existing subject is replaced only with ``force``.
    """
    identifier = _check_text("identifier", identifier, one_word=True)
    class_noun = _check_text("class noun", class_noun, one_word=False)
    _check_settings(resolution, crop)
    out = Path(out_dir).expanduser()
    replace = _check_out_dir(out, force)
    identifier_warnings = _identifier_messages(tokenizer, identifier) if tokenizer is not None else []
    validation = validate_images(images, resolution, crop, max_pixels=max_pixels)
    validation.messages.extend(identifier_warnings)
    if on_validated is not None:
        on_validated(validation)
    if not validation.ok:
        lines = "\n".join(f"  {m}" for m in validation.errors)
        raise SubjectError(f"Cannot prepare the subject; fix these and try again:\n{lines}")

    record: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "identifier": identifier,
        "class_noun": class_noun,
        "instance_prompt": f"a {identifier} {class_noun}",
        "class_prompt": f"a {class_noun}",
        "resolution": resolution,
        "crop": crop,
        "images": [],
        "sources": [],
        "warnings": [str(m) for m in validation.warnings],
    }
    try:
        with atomic_dir(out, replace=replace) as tmp:
            (tmp / IMAGES_DIR).mkdir()
            for index, item in enumerate(validation.accepted):
                relative = f"{IMAGES_DIR}/{index:02d}.png"
                item.image.save(tmp / relative, format="PNG")
                record["images"].append(relative)
                record["sources"].append(
                    {"name": item.path.name, "sha256": item.sha256, "size": list(item.size), "format": item.format, "image": relative}
                )
            write_json(tmp / SUBJECT_FILE, record)
    except OSError as error:
        raise SubjectError(f"Could not write the subject to {out}: {error}. Check the folder is writable.") from error
    return load_subject(out)


def _image_paths(root: Path, entries: Any) -> list[Path]:
    """The images a subject.json lists, each confined to the subject folder (symlinks followed)."""
    if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
        raise TypeError("'images' must be a list of file names")
    if len(entries) > MAX_IMAGES:
        raise SubjectError(f"{root / SUBJECT_FILE} lists {len(entries)} images; a subject has at most {MAX_IMAGES}. "
                           "Run `studio prepare` again.")
    try:
        return [confine_entry(root, entry, what=f"image entry in {root / SUBJECT_FILE}") for entry in entries]
    except ConfinementError as error:
        raise SubjectError(f"{error} Run `studio prepare` to make a subject from photos kept elsewhere.") from None


def load_subject(directory: str | os.PathLike) -> Subject:
    """Read a subject directory written by :func:`prepare_subject`, checking its images exist.

    Every image entry must resolve (symlinks followed) inside the subject folder.
    """
    root = Path(directory).expanduser().resolve()
    record_path = root / SUBJECT_FILE
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise SubjectError(f"{root} is not a subject folder (no {SUBJECT_FILE}); create one with `studio prepare`.") from error
    except (OSError, ValueError) as error:
        raise SubjectError(f"{record_path} cannot be read ({error}); run `studio prepare` again.") from error
    version = record.get("schema_version") if isinstance(record, dict) else None
    if version != SCHEMA_VERSION:
        raise SubjectError(
            f"{record_path} has schema version {version!r}; this Studio reads version {SCHEMA_VERSION}. "
            "Run `studio prepare` again to recreate it."
        )
    try:
        image_paths = _image_paths(root, record["images"])
        subject = Subject(
            identifier=record["identifier"],
            class_noun=record["class_noun"],
            instance_prompt=record["instance_prompt"],
            class_prompt=record["class_prompt"],
            resolution=int(record["resolution"]),
            crop=record["crop"],
            image_paths=image_paths,
            sources=list(record["sources"]),
            directory=root,
            warnings=list(record.get("warnings", [])),
        )
    except (KeyError, TypeError, ValueError) as error:
        raise SubjectError(f"{record_path} is missing or has a bad field ({error}); run `studio prepare` again.") from error
    missing = [p for p in image_paths if not p.is_file()]
    if missing:
        raise SubjectError(f"{root} is incomplete: {missing[0]} is missing. Run `studio prepare` again.")
    if not image_paths:
        raise SubjectError(f"{record_path} lists no images; run `studio prepare` again.")
    return subject
