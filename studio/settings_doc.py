"""Render the settings declarations as a markdown table (docs/settings.md is generated from it)."""

from __future__ import annotations

from studio.config import describe_allowed
from studio.methods import METHOD_NAMES
from studio.settings import declarations, default_value


def settings_markdown() -> str:
    lines = [
        "# Training settings",
        "",
        "Generated from `studio/settings.py` by `studio settings --markdown`; do not edit by hand.",
        "Use them as keys in a recipe YAML, as `--set key=value`, or in the web UI's Train tab.",
        "",
        "| setting | group | default | allowed | methods | what it does |",
        "|---|---|---|---|---|---|",
    ]
    for item in declarations():
        meta = item.metadata
        methods = "all" if set(meta["methods"]) == set(METHOD_NAMES) else ", ".join(meta["methods"])
        default = default_value(item)
        lines.append(
            f"| `{item.name}` | {meta['group']} | `{default!r}` | {describe_allowed(item)} | {methods} | {meta['help']} |"
        )
    from studio.limits import limits_markdown

    return "\n".join(lines) + "\n\n" + limits_markdown()
