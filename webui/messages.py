"""Errors as the browser shows them: the controls' wording (never CLI flags), HTML-safe.

Every tab shows a :class:`~studio.errors.StudioError` through :func:`for_browser`: the raising code's
``browser`` wording where it gave one (``studio.errors.message_for``), setting names turned into the
labels of their widgets, and the text escaped so that ``<name>`` or ``transformers<5.24`` survive
Markdown and HTML.
"""

from __future__ import annotations

import html
import re

from studio.errors import message_for
from studio.settings import declarations

_SETTING_NAMES = sorted((f.name for f in declarations() if "_" in f.name), key=len, reverse=True)
_SETTING = re.compile(r"\b(" + "|".join(map(re.escape, _SETTING_NAMES)) + r")\b") if _SETTING_NAMES else None


def browser_text(error: BaseException) -> str:
    """The plain-text browser form of ``error`` (setting names as their widget labels)."""
    from webui.widgets import label_for_name

    text = message_for(error, "browser")
    if _SETTING is not None:
        text = _SETTING.sub(lambda match: f"'{label_for_name(match.group(1))}'", text)
    return text


def for_browser(error: BaseException) -> str:
    """``browser_text`` escaped for a Markdown/HTML component."""
    return html.escape(browser_text(error), quote=False)


def counted(count: int, noun: str) -> str:
    """``1 image``, ``4 images``."""
    return f"{count} {noun}{'' if count == 1 else 's'}"
