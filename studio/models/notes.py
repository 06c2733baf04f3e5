"""What a person should expect of a base model's images, and the size it was made for: asked of the
model loader's registry, so nothing outside ``studio.models`` knows which models are tiny."""

from __future__ import annotations

from studio.models.builtin import builtins


def base_model_note(ref: str) -> str:
    """A plain sentence to show beside images of ``ref`` ("" for real models)."""
    model = builtins().get(str(ref or "").strip())
    return model.expectations if model is not None else ""


def native_resolution(ref: str) -> int | None:
    """The image size a built-in pipeline was made for (None: unknown without loading the model)."""
    model = builtins().get(str(ref or "").strip())
    return model.resolution if model is not None else None
