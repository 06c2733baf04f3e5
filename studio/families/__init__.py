"""Model families: one folder each (a subpackage), found by :mod:`studio.families.discovery` and listed in
:data:`FAMILIES` by their ``detection_order`` (most specific first).

``family_for`` recognises a pipeline (or its components), ``family_for_keys`` a single-file
checkpoint, ``family_named`` the name a run's result records.
"""

from __future__ import annotations

from typing import Any

from studio.errors import StudioError
from studio.families.base import ModelFamily, PromptEmbedding
from studio.families.discovery import discover_families

FAMILIES: tuple[type[ModelFamily], ...] = discover_families(__path__, __name__)


def _lora_components() -> tuple[str, ...]:
    """Every component name a LoRA file of any family may hold (denoisers first), for readers of files."""
    names = [f().denoiser_name for f in FAMILIES] + [n for f in FAMILIES for n in f().lora_text_encoder_names]
    return tuple(dict.fromkeys(sorted(names, key=lambda n: (n.startswith("text_encoder"), n))))


LORA_COMPONENTS = _lora_components()
DENOISER_NAMES = tuple(dict.fromkeys(f.denoiser_name for f in FAMILIES))


def is_denoiser(component: str) -> bool:
    """Whether a component name is a denoiser's (a UNet or a transformer), not a text encoder's."""
    return component in DENOISER_NAMES


def family_for(pipeline_or_components: Any) -> ModelFamily:
    components = getattr(pipeline_or_components, "components", pipeline_or_components)
    for family in FAMILIES:
        if family.detect(components):
            return family()
    kinds = ", ".join(f"{name}: {type(c).__name__}" for name, c in components.items() if c is not None)
    raise StudioError(f"No model family Studio knows has these components ({kinds}); the families are "
                      f"{', '.join(f.name for f in FAMILIES)}.")


def family_for_keys(keys: list[str]) -> ModelFamily | None:
    """The family whose full single-file checkpoint has these tensor names, or None."""
    for family in FAMILIES:
        if family.detect_keys(keys):
            return family()
    return None


def prompt_arguments(pipeline: Any, prompts: list[str]) -> dict[str, list[str]]:
    """The prompt arguments for calling ``pipeline`` on ``prompts`` as typed: each text encoder reads a
    textual-inversion placeholder as :meth:`ModelFamily.prompt_arguments` says (all vectors; T5 once)."""
    return family_for(pipeline).prompt_arguments(pipeline, prompts)


def family_named(name: str) -> ModelFamily:
    for family in FAMILIES:
        if family.name == name:
            return family()
    raise StudioError(f"'{name}' is not a model family Studio knows ({', '.join(f.name for f in FAMILIES)}).")


__all__ = ["DENOISER_NAMES", "FAMILIES", "LORA_COMPONENTS", "is_denoiser", "ModelFamily", "PromptEmbedding", "family_for", "family_for_keys", "family_named",
           "prompt_arguments"]
