"""Exports every consumer loads: LoRA (diffusers, kohya/webui, PEFT), embeddings (diffusers, A1111),
full models (diffusers folder, original single file, SVD-extracted LoRA), each verified by reloading."""

from studio.export.exporter import (
    DEFAULT_RANK,
    FORMATS,
    FORMATS_BY_METHOD,
    ExportResult,
    export_run,
    formats_for,
    parse_formats,
)
from studio.export.verify import IMAGE_TOLERANCE, ExportVerificationError

__all__ = [
    "DEFAULT_RANK",
    "FORMATS",
    "FORMATS_BY_METHOD",
    "IMAGE_TOLERANCE",
    "ExportResult",
    "ExportVerificationError",
    "export_run",
    "formats_for",
    "parse_formats",
]
