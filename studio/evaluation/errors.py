"""The evaluation's user-facing error type (a :class:`studio.errors.StudioError`)."""

from __future__ import annotations

from studio.errors import StudioError


class EvaluationError(StudioError):
    """Images, prompts or a run cannot be evaluated; the message names the file or setting and the fix."""
