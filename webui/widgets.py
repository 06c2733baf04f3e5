"""Training-setting widgets generated from the declarations in :mod:`studio.settings`.

Nothing here lists a setting by name: each declaration's type, choices, range, help and group
(basic/advanced) decide its widget, label and place. A new setting in studio/settings.py appears
in the UI without touching this file. ``dynamic_choices`` lets the caller offer choices that are
only known at run time (e.g. the base models on disk) while still accepting free text.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

import gradio as gr

from studio.config import value_type
from studio.settings import BASIC, declarations, default_value

PER_ROW = 3


@dataclasses.dataclass
class SettingWidgets:
    """The widgets of every setting, in declaration order, with their declarations."""

    fields: list[dataclasses.Field]
    widgets: list[gr.components.Component]

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.fields]

    def widget(self, name: str) -> gr.components.Component:
        return self.widgets[self.names.index(name)]


ACRONYMS = {"lora": "LoRA", "lr": "LR", "snr": "SNR", "ema": "EMA"}


def label_for(item: dataclasses.Field) -> str:
    return label_for_name(item.name)


def label_for_name(name: str) -> str:
    """A setting's widget label: ``lr_warmup_steps`` -> ``LR warmup steps``."""
    words = name.split("_")
    words = [ACRONYMS.get(w, w) for w in words]
    first = words[0] if words[0] in ACRONYMS.values() else words[0].capitalize()
    return " ".join([first, *words[1:]])


def to_widget_value(item: dataclasses.Field, value: Any) -> Any:
    """A config value as its widget shows it (lists one item per line, empty for None)."""
    kind, _ = value_type(item)
    if kind == "list":
        return "\n".join(value or [])
    if value is None:
        return ""
    if item.metadata.get("nullable") and kind in ("int", "float"):
        return str(value)  # shown in a textbox, where empty means "automatic"
    return value


def from_widget_value(item: dataclasses.Field, value: Any) -> Any:
    """A widget's value as the config takes it; studio.config validates it afterwards."""
    kind, nullable = value_type(item)
    if kind == "list":
        return [line.strip() for line in str(value or "").splitlines() if line.strip()]
    if kind == "int" and isinstance(value, float) and value.is_integer():
        return int(value)
    if nullable and (value is None or str(value).strip() == ""):
        return None
    return value


def make_widget(item: dataclasses.Field, value: Any, choices: list[str] | None = None) -> gr.components.Component:
    kind, _ = value_type(item)
    meta = item.metadata
    common = dict(label=label_for(item), info=meta.get("help"), elem_id=f"setting-{item.name}",
                  value=to_widget_value(item, value))
    if meta.get("choices"):
        return gr.Dropdown(choices=list(meta["choices"]), **common)
    if choices is not None:
        return gr.Dropdown(choices=choices, allow_custom_value=True, **common)
    if kind == "bool":
        return gr.Checkbox(**common)
    if kind in ("int", "float") and not meta.get("nullable"):
        return gr.Number(minimum=meta.get("minimum"), maximum=meta.get("maximum"),
                         precision=0 if kind == "int" else None, **common)
    if kind == "list":
        return gr.Textbox(lines=2, placeholder="one per line", **common)
    return gr.Textbox(placeholder="empty: automatic" if meta.get("nullable") or not value else None, **common)


def setting_widgets(values: dict[str, Any] | None = None, *, dynamic_choices: dict[str, list[str]] | None = None,
                    method: str | None = None) -> SettingWidgets:
    """Render every setting: basic ones here, the rest inside an "Advanced" accordion.

    Call inside a Blocks context. Settings that do not apply to ``method`` start hidden; use
    :func:`visibility_updates` when the method changes.
    """
    values = values or {}
    dynamic_choices = dynamic_choices or {}
    items = declarations()
    basic = [f for f in items if f.metadata.get("group") == BASIC]
    advanced = [f for f in items if f.metadata.get("group") != BASIC]
    made: dict[str, gr.components.Component] = {}

    def render(group: list[dataclasses.Field]) -> None:
        for start in range(0, len(group), PER_ROW):
            with gr.Row(equal_height=False):
                for item in group[start:start + PER_ROW]:
                    value = values.get(item.name, default_value(item))
                    widget = make_widget(item, value, dynamic_choices.get(item.name))
                    widget.visible = method is None or method in item.metadata.get("methods", ())
                    made[item.name] = widget

    with gr.Group():
        render(basic)
    with gr.Accordion("Advanced", open=False, elem_id="train-advanced"):
        render(advanced)
    return SettingWidgets(items, [made[f.name] for f in items])


def visibility_updates(settings: SettingWidgets, method: str) -> list[dict]:
    """Show the settings that apply to ``method``, hide the others."""
    return [gr.update(visible=method in f.metadata.get("methods", ())) for f in settings.fields]


def value_updates(settings: SettingWidgets, values: dict[str, Any]) -> list[Any]:
    """Set every widget to ``values`` (a resolved config as a dict), shown if it applies to its method."""
    method = values.get("method")
    return [
        gr.update(value=to_widget_value(f, values.get(f.name, default_value(f))),
                  visible=method is None or method in f.metadata.get("methods", ()))
        for f in settings.fields
    ]


def collect(settings: SettingWidgets, widget_values: Iterable[Any]) -> dict[str, Any]:
    """Widget values, in widget order, as a mapping of setting name to config value."""
    return {f.name: from_widget_value(f, v) for f, v in zip(settings.fields, widget_values, strict=True)}
