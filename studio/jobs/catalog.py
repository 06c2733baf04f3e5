"""What a front can offer a person to pick: base models, evaluation backbones, export formats.

Everything listed is already on disk (built-ins, the Hugging Face cache): listing never downloads.
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_BASE = "tiny-sd"


def _hub_cache() -> Path:
    try:
        from huggingface_hub.constants import HF_HUB_CACHE

        return Path(HF_HUB_CACHE)
    except ImportError:  # pragma: no cover - a transformers dependency
        return Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "hub"


def cached_hub_models(marker: str = "model_index.json") -> list[str]:
    """Hub ids in the local Hugging Face cache that have ``marker`` (a diffusers pipeline by default)."""
    root = _hub_cache()
    if not root.is_dir():
        return []
    found = []
    for repo in sorted(root.glob("models--*")):
        if any(repo.glob(f"snapshots/*/{marker}")):
            found.append(repo.name[len("models--"):].replace("--", "/"))
    return found


def base_model_choices() -> list[str]:
    """Built-in pipelines first (always available offline), then diffusers models already cached."""
    from studio.models import builtins

    names = [name for name, model in builtins().items() if model.kind == "pipeline"]
    names.sort(key=lambda name: name != DEFAULT_BASE)
    return names + [ref for ref in cached_hub_models() if ref not in names]


def backbone_choices(kind: str) -> tuple[list[str], str]:
    """``(choices, default)`` for an evaluation backbone ("clip" or "dino").

    The paper's backbone is the default when it is in the local cache; otherwise the built-in tiny
    one, so that evaluation works offline (its numbers only show the pipeline works).
    """
    from studio.evaluation.defaults import DEFAULT_CLIP, DEFAULT_DINO

    hub = DEFAULT_CLIP if kind == "clip" else DEFAULT_DINO
    tiny = f"tiny-{kind}"
    cached = hub in cached_hub_models("config.json")
    return [hub, tiny], (hub if cached else tiny)


def export_formats(method: str | None = None) -> list[str]:
    """The formats studio.export writes for runs of ``method`` (all formats when None)."""
    import studio.export as export

    if method:
        try:
            return list(export.formats_for(method))
        except KeyError:
            return []
    return list(export.FORMATS)
