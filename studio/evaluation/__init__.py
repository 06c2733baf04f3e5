"""DreamBooth-style evaluation: CLIP-I, CLIP-T, DINO, PRES and DIV.

:func:`score_images` scores any images against subject photos; :func:`evaluate_run` runs the
whole protocol on a finished training run. See docs/evaluation.md. Names are imported lazily so
that importing this package (e.g. for the CLI's defaults) does not load torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "DEFAULT_CLIP": "defaults",
    "DEFAULT_DINO": "defaults",
    "Backbone": "backbones",
    "load_backbone": "backbones",
    "load_clip": "backbones",
    "load_dino": "backbones",
    "EvaluationError": "errors",
    "score_images": "folders",
    "DIV_METRIC": "metrics",
    "diversity": "metrics",
    "mean_pairwise_cosine": "metrics",
    "paired_cosine": "metrics",
    "CLIP_T_TEXT_RULE": "prompts",
    "build_prompts": "prompts",
    "is_live": "prompts",
    "strip_identifier": "prompts",
    "evaluate_run": "protocol",
    "SCHEMA_VERSION": "report",
    "format_summary": "report",
    "validate_report": "report",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'studio.evaluation' has no attribute {name!r}")
    return getattr(importlib.import_module(f"studio.evaluation.{_EXPORTS[name]}"), name)
