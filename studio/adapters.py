"""Applying trained results to pipelines through diffusers' own loaders."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def apply_run_result(run_dir: Path, result: dict[str, Any], base_ref: str):
    """Load the base and apply a run's adapter, or load a DreamBooth model folder."""
    from studio.models import load_base

    artifact = Path(run_dir) / result["artifact"]
    if result["method"] == "dreambooth":
        return load_base(str(artifact)).pipeline
    pipeline = load_base(base_ref).pipeline
    if result["method"] == "lora":
        pipeline.load_lora_weights(str(artifact), weight_name="pytorch_lora_weights.safetensors")
    elif result["method"] == "textual_inversion":
        pipeline.load_textual_inversion(str(artifact / "learned_embeds.safetensors"), token=result["token"])
    return pipeline
