"""``export_run``: write a finished run in the formats other tools load, verify each, add a model card.

The whole export is built in a temporary sibling of ``out_dir`` and renamed into place only after
every file passed verification, so ``out_dir`` either holds a complete, verified export or nothing.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from studio.atomic import atomic_dir, remove_stale_temporaries, write_json, write_text
from studio.errors import StudioError, disk_full_error, is_disk_full
from studio.export.context import ExportContext, render_spec, replace_word
from studio.export.full_model import export_dreambooth_run
from studio.export.lora_export import export_lora_run
from studio.export.lycoris_export import export_lycoris_run
from studio.export.model_card import read_eval_scores, render_card
from studio.export.pivotal_export import export_pivotal_run
from studio.export.ti_export import export_ti_run
from studio.export.verify import IMAGE_TOLERANCE
from studio.methods import (
    EMBEDDING,
    LORA,
    METHOD_SPECS,
    MODEL,
    adapter_type_spec,
    export_formats_for,
    method_spec,
)
from studio.quiet import quiet_loaders
from studio.run_layout import EXPORTS_DIR
from studio.runlock import run_lock
from studio.runs import load_run
from studio.work_progress import track

FORMATS_BY_METHOD: dict[str, tuple[str, ...]] = {name: spec.export_formats for name, spec in METHOD_SPECS.items()}

# Every format name any run can export (each run accepts those of its method: formats_for()).
FORMATS: tuple[str, ...] = tuple(dict.fromkeys(f for names in FORMATS_BY_METHOD.values() for f in names))
ALIASES = {name: spec.export_aliases for name, spec in METHOD_SPECS.items()}
DEFAULT_RANK = 16
REPORT_FILE = "export.json"
CARD_FILE = "README.md"
EXAMPLE_IMAGE = "images/example.png"


@dataclass
class ExportResult:
    out_dir: Path
    formats: list[str]
    files: list[dict[str, Any]]
    report: dict[str, Any]
    url: str | None = None


def formats_for(method: str) -> tuple[str, ...]:
    """The formats a run of ``method`` exports as."""
    return FORMATS_BY_METHOD[method]


def parse_formats(method: str, formats: str | Iterable[str], adapter_type: str | None = None) -> list[str]:
    """Normalise ``"kohya,diffusers"`` / a list / ``"all"`` to this method's canonical format names
    (a LoRA run's adapter type may narrow them: LoKr and LoHa have no diffusers file)."""
    items = formats.split(",") if isinstance(formats, str) else list(formats)
    allowed = export_formats_for(method, adapter_type)
    chosen: list[str] = []
    for raw in items:
        name = raw.strip().lower()
        if not name:
            continue
        if name == "all":
            chosen += [f for f in allowed if f not in chosen]
            continue
        name = ALIASES[method].get(name, name)
        if name not in allowed:
            raise StudioError(
                f"'{raw.strip()}' is not an export format for a {method} run; choose from {', '.join(allowed)} "
                "(or 'all')."
            )
        if name not in chosen:
            chosen.append(name)
    if not chosen:
        raise StudioError(f"No export format given; a {method} run exports as {', '.join(allowed)}.")
    return chosen


def _check_out_dir(out_dir: Path, force: bool, run_dir: Path) -> None:
    """Refuse an ``out_dir`` that is or holds a run, and replace (with ``force``) only a Studio export."""
    from studio.rundir import find_run

    if out_dir.exists() and not out_dir.is_dir():
        raise StudioError(f"--out {out_dir} is a file; give a folder path.")
    resolved = out_dir.resolve()
    if run_dir.resolve().is_relative_to(resolved):
        raise StudioError(f"--out {out_dir} is the run {run_dir} or a folder that holds it; an export never replaces a "
                          "run. Choose another --out (the default is RUN/exports/<formats>).")
    if not out_dir.is_dir() or not any(out_dir.iterdir()):
        return
    if not force:
        raise StudioError(f"{out_dir} already exists and is not empty; choose another --out or pass --force to replace it.")
    held = find_run(out_dir)
    if held is not None:
        raise StudioError(f"Refusing --force: {out_dir} holds the run {held}; an export never replaces a run. Choose another --out.")
    if not (out_dir / REPORT_FILE).is_file():
        raise StudioError(f"Refusing --force: {out_dir} is not a Studio export (no {REPORT_FILE}); --force only replaces "
                          "an earlier export. Choose another --out, or empty that folder yourself.")


def export_run(
    run_dir: str | Path,
    formats: str | Iterable[str],
    out_dir: str | Path | None = None,
    force: bool = False,
    *,
    rank: int = DEFAULT_RANK,
    push_to_hub: str | None = None,
    license: str = "creativeml-openrail-m",
    log: Callable[[str], None] | None = None,
) -> ExportResult:
    """Export the finished run at ``run_dir`` as ``formats`` into ``out_dir`` (default ``RUN/exports/<formats>``).

    Raises :class:`StudioError` before any work for a bad format, an existing ``out_dir`` without
    ``force``, or ``push_to_hub`` without network/token; and after the work if any file fails its
    reload check (then nothing is left at ``out_dir``).
    """
    log = log or (lambda message: None)
    run = load_run(run_dir)
    result = run.require_finished()
    method = result["method"]
    chosen = parse_formats(method, formats, result.get("adapter_type"))
    if rank < 1:
        raise StudioError(f"--rank must be at least 1 (got {rank}).")
    family = str(result.get("family", "sd1"))
    if isinstance(formats, str) and formats.strip().lower() == "all":  # every format this family's writers have
        chosen = [f for f in chosen if f not in _unsupported(family, result.get("adapter_type"))]
    _check_supported(family, chosen, result.get("adapter_type"))
    out = Path(out_dir).expanduser() if out_dir else run.directory / EXPORTS_DIR / "-".join(chosen)
    _check_out_dir(out, force, run.directory)
    token = None
    if push_to_hub:
        from studio.export.hub import check_hub_ready

        token = check_hub_ready(push_to_hub)
    with run_lock(run.directory, "export"):
        remove_stale_temporaries(out.parent, out.name)  # what a killed export of this folder left
        if out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        try:
            ctx, report = _write_export(run, out, chosen, force, rank, license, log)
        except Exception as error:  # safetensors and PIL report a full disk in their own exception types
            if is_disk_full(error):
                raise disk_full_error(error, "the export", out) from None
            raise
    url = None
    if push_to_hub and token:
        from studio.export.hub import push_folder

        log(f"Uploading {out} to the Hub repository {push_to_hub}")
        url = push_folder(out, push_to_hub, token)
    return ExportResult(out, chosen, ctx.files, report, url)


def _write_export(run, out: Path, chosen: list[str], force: bool, rank: int, license: str, log) -> tuple[ExportContext, dict]:
    method = run.method
    with atomic_dir(out, replace=force) as tmp, quiet_loaders():
        ctx = ExportContext(run=run, out=tmp, spec=render_spec(run), log=log,
                            progress=track("writing and verifying", len(chosen), "format"))
        log(f"Exporting {run.directory.name} ({method}) as {', '.join(chosen)}; verifying each file by reloading it")
        produces = method_spec(method).produces
        if produces == LORA and method_spec(method).with_embedding:  # pivotal tuning: the LoRA and its token
            export_pivotal_run(ctx, chosen)
        elif produces == LORA and adapter_type_spec(run.require_finished().get("adapter_type")).name != "lora":
            export_lycoris_run(ctx, chosen)  # DoRA, LoKr, LoHa
        elif produces == LORA:
            export_lora_run(ctx, chosen)
        elif produces == EMBEDDING:
            export_ti_run(ctx, chosen)
        elif produces == MODEL:
            export_dreambooth_run(ctx, chosen, rank)
        else:
            raise StudioError(f"No exporter writes a {method} run's result ({produces}).")
        report = _write_card_and_report(ctx, chosen, license)
        ctx.progress.update.phase = "done"
        ctx.progress.advance(len(chosen))
    return ctx, report


def _typed_instance_prompt(run) -> str:
    """The instance prompt as a user types it into a pipeline (TI: the placeholder, not its expansion)."""
    return replace_word(run.subject.instance_prompt, run.subject.identifier, run.token)


def _unsupported(family: str, adapter_type: str | None = None) -> set[str]:
    from studio.families import family_named

    model = family_named(family)
    return {name for name, written in (("kohya", _kohya_written(model, adapter_type)), ("single-file", _single_file(model)))
            if not written}


def _kohya_written(model, adapter_type: str | None) -> bool:
    """A kohya file for this family and adapter type: LoKr does not stack into Flux's/SD3's fused qkv."""
    return model.supports_kohya_lora and (adapter_type_spec(adapter_type).stacks or not model.fused_kohya_layout)


def _single_file(model) -> bool:
    return model.supports_single_file or model.single_file_writer is not None  # Flux: BFL's transformer file


def _check_supported(family: str, formats: list[str], adapter_type: str | None = None) -> None:
    """Refuse, before any work, combinations no writer supports yet."""
    from studio.families import family_named

    if "kohya" in formats and not family_named(family).supports_kohya_lora:
        raise StudioError(f"The kohya/webui LoRA layout is not written for {family} models yet; export --format "
                          "diffusers (ComfyUI and diffusers load it) or peft.")
    if "kohya" in formats and not _kohya_written(family_named(family), adapter_type):
        label = adapter_type_spec(adapter_type).label
        raise StudioError(f"A {label} has no kohya/LyCORIS file for {family} models: their original layout fuses query, "
                          f"key and value into one weight, and the {label}s of the three are not one {label} there. "
                          "Export --format peft (peft loads it), or train adapter_type dora or loha for that layout.")
    if "single-file" in formats and not _single_file(family_named(family)):
        raise StudioError(f"Single-file export supports SD1.x, SDXL, SD3 and Flux models (this run is {family}); "
                          "use --format diffusers.")


def _write_card_and_report(ctx: ExportContext, formats: list[str], license: str) -> dict[str, Any]:
    image = Image.fromarray((ctx.reference_image() * 255).round().clip(0, 255).astype("uint8"))
    (ctx.out / EXAMPLE_IMAGE).parent.mkdir(parents=True, exist_ok=True)
    image.save(ctx.out / EXAMPLE_IMAGE)
    run = ctx.run
    settings = {key: getattr(run.config, key, None) for key in vars(run.config)}
    scores = read_eval_scores(run.directory)
    info = {
        "method": run.method, "base": ctx.base, "family": ctx.family.name, "title": ctx.stem,
        "token": run.token, "instance_prompt": _typed_instance_prompt(run),
        "prompt": ctx.spec.prompt, "settings": settings, "files": ctx.files, "usage": ctx.usage,
        "scores": scores, "notes": ctx.notes, "example_image": EXAMPLE_IMAGE, "license": license,
    }
    write_text(ctx.out / CARD_FILE, render_card(info))
    report = {
        "run": str(run.directory),
        "method": run.method,
        "base": ctx.base,
        "family": ctx.family.name,
        "formats": formats,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "verification": {"prompt": ctx.spec.prompt, "seed": ctx.spec.seed, "steps": ctx.spec.steps,
                         "guidance": ctx.spec.guidance, "height": ctx.spec.height, "width": ctx.spec.width,
                         "device": "cpu", "dtype": "float32", "image_tolerance": IMAGE_TOLERANCE},
        "files": ctx.files,
        "eval_scores": scores,
        **ctx.extra,
    }
    write_json(ctx.out / REPORT_FILE, report)
    return report
