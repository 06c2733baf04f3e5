"""Subject intake: turn a handful of photos into a subject directory a trainer can use.

A subject directory holds ``images/00.png ...`` (RGB, square at the training resolution or, with
``crop="bucket"``, in their aspect-ratio bucket), ``masks/00.png ...`` for photos with a mask, and
``subject.json`` (identifier, class noun, prompts, per-image captions and masks, where each image
came from, warnings, and the subjects it holds: one, or several combined by
:mod:`studio.subject_sets`). :func:`validate_images` checks photos without writing anything, for the
web UI's per-file messages; :func:`prepare_subject` runs the same checks and then writes the
directory atomically.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from studio.atomic import atomic_dir, write_json
from studio.buckets import assign_bucket
from studio.captions import PLACEMENTS, check_caption, find_captions, place_identifier
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
    fit_photo,
    hamming,
    scaled_side,
)
from studio.masks import alpha_mask, check_coverage, find_mask_file, fit_mask, match_size, read_mask, to_mask

SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)  # version 1: one subject, square images, no captions or masks
SUBJECT_FILE = "subject.json"
IMAGES_DIR = "images"
MASKS_DIR = "masks"
MIN_IMAGES, MAX_IMAGES = 1, 20
MAX_SUBJECTS = 8  # subjects combined into one (studio.subject_sets)
MAX_REPEATS = 100
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
    caption: str | None = None  # as found (sidecar, metadata.jsonl, typed); the identifier is placed later
    caption_source: str | None = None
    mask: Image.Image | None = field(default=None, repr=False)  # same size as ``image``
    mask_source: str | None = None


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
class Concept:
    """One subject inside a subject folder: its words, how often an epoch shows it, and its images."""

    identifier: str
    class_noun: str
    instance_prompt: str
    class_prompt: str
    repeats: int
    images: list[int]  # indices into Subject.image_paths


@dataclass
class Subject:
    """A prepared subject, as written to and read back from its directory.

    ``identifier``, ``class_noun`` and the prompts are the first subject's; a folder made by
    :func:`studio.subject_sets.combine_subjects` holds several, listed in ``concepts``.
    """

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
    captions: list[str | None] = field(default_factory=list)  # per image, identifier placed; None: instance prompt
    mask_paths: list[Path | None] = field(default_factory=list)  # per image
    concepts: list[Concept] = field(default_factory=list)

    @property
    def files(self) -> list[Path]:
        """Every file the subject.json lists: images, then masks."""
        return [*self.image_paths, *(p for p in self.mask_paths if p is not None)]

    def concept_of(self, index: int) -> Concept:
        """The subject image ``index`` belongs to."""
        return next(c for c in self.concepts if index in c.images)

    def caption(self, index: int) -> str:
        """What image ``index`` trains on: its caption, or its subject's instance prompt."""
        return self.captions[index] or self.concept_of(index).instance_prompt


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
    read_captions: bool = True,
    captions: Mapping[str, str] | None = None,
    masks_dir: str | os.PathLike | None = None,
    masks: Mapping[str, Image.Image] | None = None,
) -> Validation:
    """Check photos for use as a subject and process the good ones in memory; write nothing.

    Every problem becomes a :class:`FileMessage` naming the file: unreadable, corrupt or
    truncated files, non-images, unsupported formats, decompression bombs, photos too small
    for ``resolution``, exact duplicates (sha256) and near duplicates (dHash), unreadable
    caption files or ``metadata.jsonl`` rows, masks of the wrong shape. Too few or too many
    photos is an error; outside the recommended 3-5 a warning.

    Captions come from ``captions`` (by file name: typed on the Subject tab), else sidecar ``.txt``
    files and ``metadata.jsonl`` (``read_captions``; :mod:`studio.captions`). Masks come from ``masks``
    (by file name: painted), else a mask file (``NAME.mask.png``, or in ``masks_dir``), else the
    photo's alpha channel (:mod:`studio.masks`).
    """
    _check_settings(resolution, crop)
    files, messages = expand_inputs(paths)
    found: dict[Path, str] = {}
    if read_captions:
        found, caption_messages = find_captions(files)
        messages.extend(caption_messages)
    typed: dict[str, str] = {}
    for name, text in (captions or {}).items():
        try:
            typed[Path(name).name] = check_caption(text, f"the caption of {Path(name).name}")
        except ValueError as error:
            messages.append(FileMessage("error", str(error)))
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
        item = AcceptedImage(path, decoded.sha256, decoded.format, decoded.size, fit_photo(decoded.image, resolution, crop))
        if path.name in typed:
            item.caption, item.caption_source = typed[path.name] or None, "typed"
        elif path in found:
            item.caption, item.caption_source = found[path] or None, "file"
        try:
            note = _attach_mask(item, decoded.image.size, resolution, crop, masks_dir, (masks or {}).get(path.name))
        except ImageRejected as reason:
            named = item.mask_source not in (None, "painted", "alpha")
            messages.append(FileMessage("error", str(reason), Path(item.mask_source) if named else path))  # type: ignore[arg-type]
            continue
        if note:
            messages.append(FileMessage("warning", note, path))
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


def _attach_mask(item: AcceptedImage, decoded_size: tuple[int, int], resolution: int, crop: str,
                 masks_dir: str | os.PathLike | None, painted: Image.Image | None) -> str | None:
    """Give ``item`` its mask (painted, a mask file, or the photo's alpha), in the training image's geometry;
    return a warning about it, if any."""
    mask, source = None, None
    if painted is not None:
        mask, source = match_size(to_mask(painted), item.size), "painted"
    else:
        mask_file = find_mask_file(item.path, Path(masks_dir) if masks_dir else None)
        if mask_file is not None:
            item.mask_source = str(mask_file)
            mask, source = read_mask(mask_file, item.size), str(mask_file)
        else:
            mask = alpha_mask(item.path.read_bytes())
            source = "alpha" if mask is not None else None
    if mask is None:
        return None
    mask = mask.resize(decoded_size, Image.Resampling.BILINEAR) if mask.size != decoded_size else mask
    bucket = assign_bucket(decoded_size, resolution) if crop == "bucket" else None
    item.mask, item.mask_source = fit_mask(mask, resolution, crop, bucket), source
    if item.mask.size != item.image.size:  # the same geometry must give the same size
        raise ImageRejected(f"mask came out {item.mask.size}, its image {item.image.size}")
    return check_coverage(item.mask)


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
    read_captions: bool = True,
    captions: Mapping[str, str] | None = None,
    identifier_placement: str = "class",
    masks_dir: str | os.PathLike | None = None,
    masks: Mapping[str, Image.Image] | None = None,
    auto_caption: Callable[[list[Image.Image]], list[str]] | None = None,
    auto_mask: Callable[[list[Image.Image], str], list[Image.Image]] | None = None,
    repeats: int = 1,
) -> Subject:
    """Validate ``images`` and write the subject directory ``out_dir``; raise SubjectError on any problem.

    With a ``tokenizer`` (or a list of them) the identifier is checked and a warning with
    rare single-token suggestions is added when it is not one rare token. ``on_validated``
    sees the full per-file report before anything is written or raised (the CLI prints it).
    ``out_dir`` appears only once complete; an existing subject is replaced only with ``force``.

    Captions and masks: see :func:`validate_images`; each caption gets the identifier by
    ``identifier_placement`` (:func:`studio.captions.place_identifier`). ``auto_caption`` captions the
    training images that have none (:mod:`studio.captioner`); ``auto_mask`` masks those that have none,
    prompted with the class noun (:mod:`studio.automask`). ``repeats``: how many times an epoch shows
    each image (it matters when subjects are combined).
    """
    identifier = _check_text("identifier", identifier, one_word=True)
    class_noun = _check_text("class noun", class_noun, one_word=False)
    _check_settings(resolution, crop)
    if identifier_placement not in PLACEMENTS:
        raise SubjectError(f"The identifier placement must be one of {', '.join(PLACEMENTS)}, not {identifier_placement!r}.")
    check_repeats(repeats)
    out = Path(out_dir).expanduser()
    replace = _check_out_dir(out, force)
    identifier_warnings = _identifier_messages(tokenizer, identifier) if tokenizer is not None else []
    validation = validate_images(images, resolution, crop, max_pixels=max_pixels, read_captions=read_captions,
                                 captions=captions, masks_dir=masks_dir, masks=masks)
    validation.messages.extend(identifier_warnings)
    if validation.ok and auto_caption is not None:
        todo = [item for item in validation.accepted if not item.caption]
        for item, text in zip(todo, auto_caption([item.image for item in todo]) if todo else [], strict=True):
            item.caption, item.caption_source = check_caption(text, f"the automatic caption of {item.path}") or None, "automatic"
    if validation.ok and auto_mask is not None:
        todo = [item for item in validation.accepted if item.mask is None]
        for item, mask in zip(todo, auto_mask([item.image for item in todo], class_noun) if todo else [], strict=True):
            item.mask, item.mask_source = mask.convert("L").resize(item.image.size, Image.Resampling.BILINEAR), "automatic"
            note = check_coverage(item.mask)
            if note:
                validation.messages.append(FileMessage("warning", note, item.path))
    if on_validated is not None:
        on_validated(validation)
    if not validation.ok:
        lines = "\n".join(f"  {m}" for m in validation.errors)
        raise SubjectError(f"Cannot prepare the subject; fix these and try again:\n{lines}")

    concept = {"identifier": identifier, "class_noun": class_noun, "instance_prompt": f"a {identifier} {class_noun}",
               "class_prompt": f"a {class_noun}", "repeats": repeats, "images": list(range(len(validation.accepted)))}
    record: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        **{k: concept[k] for k in ("identifier", "class_noun", "instance_prompt", "class_prompt")},
        "resolution": resolution,
        "crop": crop,
        "images": [],
        "captions": [],
        "masks": [],
        "sources": [],
        "concepts": [concept],
        "warnings": [str(m) for m in validation.warnings],
    }
    pictures: list[tuple[str, Image.Image]] = []
    for index, item in enumerate(validation.accepted):
        relative = f"{IMAGES_DIR}/{index:02d}.png"
        mask_relative = f"{MASKS_DIR}/{index:02d}.png" if item.mask is not None else None
        pictures.append((relative, item.image))
        if item.mask is not None:
            pictures.append((mask_relative, item.mask))  # type: ignore[arg-type]
        caption = place_identifier(item.caption, identifier, class_noun, identifier_placement) if item.caption else None
        record["images"].append(relative)
        record["captions"].append(caption)
        record["masks"].append(mask_relative)
        record["sources"].append(
            {"name": item.path.name, "sha256": item.sha256, "size": list(item.size), "format": item.format, "image": relative,
             "trained_size": list(item.image.size), "caption_source": item.caption_source, "mask_source": item.mask_source}
        )
    write_subject_dir(out, record, pictures, replace=replace)
    return load_subject(out)


def check_repeats(repeats: Any) -> int:
    if isinstance(repeats, bool) or not isinstance(repeats, int) or not 1 <= repeats <= MAX_REPEATS:
        raise SubjectError(f"repeats must be a whole number from 1 to {MAX_REPEATS}, not {repeats!r}.")
    return repeats


def write_subject_dir(out: Path, record: dict[str, Any], pictures: Sequence[tuple[str, Image.Image]], *, replace: bool) -> None:
    """Write ``record`` as subject.json and each (relative path, image) as a PNG, all at once (atomically)."""
    try:
        with atomic_dir(out, replace=replace) as tmp:
            for relative, image in pictures:
                (tmp / relative).parent.mkdir(parents=True, exist_ok=True)
                image.save(tmp / relative, format="PNG")
            write_json(tmp / SUBJECT_FILE, record)
    except OSError as error:
        raise SubjectError(f"Could not write the subject to {out}: {error}. Check the folder is writable.") from error


def _entries(root: Path, entries: Any, what: str, *, optional: bool = False) -> list[Path | None]:
    """Files a subject.json lists, each confined to the subject folder (symlinks followed); None kept if optional."""
    if not isinstance(entries, list) or not all(isinstance(e, str) or (optional and e is None) for e in entries):
        raise TypeError(f"'{what}s' must be a list of file names")
    if len(entries) > MAX_IMAGES * MAX_SUBJECTS:
        raise SubjectError(f"{root / SUBJECT_FILE} lists {len(entries)} {what}s; a subject has at most {MAX_IMAGES} "
                           f"(and {MAX_SUBJECTS} subjects combined). Run `studio prepare` again.")
    try:
        return [None if entry is None else confine_entry(root, entry, what=f"{what} entry in {root / SUBJECT_FILE}")
                for entry in entries]
    except ConfinementError as error:
        raise SubjectError(f"{error} Run `studio prepare` to make a subject from photos kept elsewhere.") from None


def _image_paths(root: Path, entries: Any) -> list[Path]:
    return [p for p in _entries(root, entries, "image") if p is not None]


def _concepts(record: dict[str, Any], count: int) -> list[Concept]:
    raw = record.get("concepts")
    if raw is None:  # version 1: one subject
        raw = [{k: record[k] for k in ("identifier", "class_noun", "instance_prompt", "class_prompt")}
               | {"repeats": 1, "images": list(range(count))}]
    if not isinstance(raw, list) or not 1 <= len(raw) <= MAX_SUBJECTS:
        raise ValueError(f"'concepts' must list 1 to {MAX_SUBJECTS} subjects")
    concepts = [Concept(str(c["identifier"]), str(c["class_noun"]), str(c["instance_prompt"]), str(c["class_prompt"]),
                        check_repeats(c.get("repeats", 1)), [int(i) for i in c["images"]]) for c in raw]
    claimed = sorted(i for c in concepts for i in c.images)
    if claimed != list(range(count)) or any(len(c.images) > MAX_IMAGES or not c.images for c in concepts):
        raise ValueError(f"'concepts' must share out the {count} images, each subject 1 to {MAX_IMAGES} of them")
    if len({c.identifier for c in concepts}) != len(concepts):
        raise ValueError("two subjects share one identifier")
    return concepts


def load_subject(directory: str | os.PathLike) -> Subject:
    """Read a subject directory written by :func:`prepare_subject`, checking its images exist.

    Every image and mask entry must resolve (symlinks followed) inside the subject folder.
    Version 1 folders (square images, one subject, no captions or masks) read as they are.
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
    if version not in READABLE_VERSIONS:
        raise SubjectError(
            f"{record_path} has schema version {version!r}; this Studio reads version {SCHEMA_VERSION}. "
            "Run `studio prepare` again to recreate it."
        )
    try:
        image_paths = _image_paths(root, record["images"])
        count = len(image_paths)
        captions = record.get("captions") or [None] * count
        mask_paths = _entries(root, record.get("masks") or [None] * count, "mask", optional=True)
        if len(captions) != count or len(mask_paths) != count:
            raise ValueError("'captions' and 'masks' must have one entry per image")
        if not all(c is None or isinstance(c, str) for c in captions):
            raise TypeError("'captions' must hold text or null")
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
            captions=list(captions),
            mask_paths=mask_paths,
            concepts=_concepts(record, count),
        )
    except SubjectError:
        raise
    except (KeyError, TypeError, ValueError) as error:
        raise SubjectError(f"{record_path} is missing or has a bad field ({error}); run `studio prepare` again.") from error
    missing = [p for p in subject.files if not p.is_file()]
    if missing:
        raise SubjectError(f"{root} is incomplete: {missing[0]} is missing. Run `studio prepare` again.")
    if not image_paths:
        raise SubjectError(f"{record_path} lists no images; run `studio prepare` again.")
    return subject
