"""State shared by one export: the run, the folder being written, the studio's reference image."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from studio.export.verify import VERIFY_MAX_RESOLUTION, RenderSpec, render
from studio.runs import Run
from studio.work_progress import Tracker

VERIFY_PROMPT = "a photo of {0} {1}"


@dataclass
class ExportContext:
    run: Run
    out: Path  # the temporary folder that becomes --out when everything verified
    spec: RenderSpec
    log: Callable[[str], None] = print
    files: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    usage: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    progress: Tracker | None = None  # counts formats done (studio.work_progress), for the web UI's bar
    _reference_pipe: Any = None
    _layout: Any = None
    _reference_image: np.ndarray | None = None

    @property
    def result(self) -> dict[str, Any]:
        return self.run.require_finished()

    @property
    def family(self):
        from studio.families import family_for

        return family_for(self.reference_pipeline())

    @property
    def unet_config(self):
        """The run's denoiser config (SDXL's kohya and single-file names follow its UNet's block layout)."""
        return getattr(self.reference_pipeline(), self.family.denoiser_name).config

    @property
    def base(self) -> str:
        return str(self.result.get("base") or self.run.config.base)

    @property
    def stem(self) -> str:
        """A file-name stem for webui files, e.g. ``sks-toy-lora``."""
        raw = f"{self.run.subject.identifier}-{self.run.subject.class_noun}-{self.run.method.replace('_', '-')}"
        return re.sub(r"[^\w.-]+", "_", raw).strip("._") or "studio-export"

    def reference_pipeline(self):
        """The studio's own pipeline for the run (``studio.runs.personalised_pipeline``), loaded once."""
        if self._reference_pipe is None:
            from studio.runs import personalised_pipeline

            self._reference_pipe = personalised_pipeline(self.run)
        return self._reference_pipe

    def reference_image(self) -> np.ndarray:
        if self._reference_image is None:
            self._reference_image = render(self.reference_pipeline(), self.spec)
        return self._reference_image

    def fresh_base(self):
        """A newly loaded, untouched base pipeline (what a consumer starts from)."""
        from studio.models import load_configured_base

        return load_configured_base(self.run.config).pipeline

    def layout(self):
        """The base model's LoRA-adaptable layers, which other tools' key rules are checked against."""
        if self._layout is None:
            from studio.export.consumers import layout_of

            self._layout = layout_of(self.fresh_base().components, self.family)
        return self._layout

    def record(self, path: Path, fmt: str, consumer: str, check: str, **details: Any) -> None:
        relative = path.relative_to(self.out).as_posix()
        first_of_format = all(item["format"] != fmt for item in self.files)
        self.files.append({"path": relative, "format": fmt, "consumer": consumer, "check": check, **details})
        self.log(f"  {relative}: {check}")
        if self.progress is not None:
            self.progress.update.phase = f"verified {relative}"
            self.progress.advance(1 if first_of_format else 0)


def render_spec(run: Run) -> RenderSpec:
    """Few steps at the run's resolution (capped: verification must stay cheap for real models on CPU)."""
    side = min(int(run.config.resolution), VERIFY_MAX_RESOLUTION)
    side -= side % 8
    return RenderSpec(prompt=run.prompt(VERIFY_PROMPT), height=side, width=side)



def replace_word(text: str, old: str, new: str) -> str:
    """``old`` as a whole whitespace-separated word replaced by ``new`` (e.g. a token in a prompt)."""
    return re.sub(rf"(?<!\S){re.escape(old)}(?!\S)", new, text)
