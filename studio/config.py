"""Build and validate a :class:`TrainConfig` from recipes and overrides.

Validation reads the declarations in :mod:`studio.settings`; nothing here re-lists settings.
"""

from __future__ import annotations

import dataclasses
import math
import reprlib
from pathlib import Path
from typing import Any

import yaml

from studio.errors import ConfigError
from studio.limits import RECIPE_BYTES, SETTING_LIST_ITEMS, SETTING_TEXT_CHARS
from studio.methods import method_spec
from studio.paths import recipes_dir
from studio.settings import TrainConfig, declarations, default_value

_SCALARS = {"int": int, "float": float, "bool": bool, "str": str}


def value_type(item: dataclasses.Field) -> tuple[str, bool]:
    """("int" | "float" | "bool" | "str" | "list", nullable) from a field's annotation string."""
    annotation = str(item.type).replace(" ", "")
    nullable = "|None" in annotation
    base = annotation.replace("|None", "")
    return ("list" if base.startswith("list[") else base), nullable


def describe_allowed(item: dataclasses.Field) -> str:
    meta = item.metadata
    kind, nullable = value_type(item)
    if meta.get("choices"):
        return "one of " + ", ".join(str(c) for c in meta["choices"])
    parts = {"list": "a list of strings", "bool": "true or false", "str": "a string", "int": "an integer", "float": "a number"}[kind]
    if meta.get("minimum") is not None or meta.get("maximum") is not None:
        parts += f" in [{meta.get('minimum')}, {meta.get('maximum')}]"
    return parts + (" (or empty)" if nullable else "")


_SHORT = reprlib.Repr()
_SHORT.maxstring, _SHORT.maxother, _SHORT.maxlist, _SHORT.maxdict, _SHORT.maxlevel = 60, 60, 4, 4, 2
SHORT_REPR_CHARS = 160


def short_repr(value: Any) -> str:
    """A bounded repr for messages: a huge or deeply nested value never floods (or stalls) an error."""
    text = _SHORT.repr(value)
    return text if len(text) <= SHORT_REPR_CHARS else text[: SHORT_REPR_CHARS - 3] + "..."


def coerce(item: dataclasses.Field, value: Any, *, source: str = "") -> Any:
    """Check and convert one value for setting ``item``; raise ConfigError naming the key."""
    kind, nullable = value_type(item)
    where = f" (in {source})" if source else ""

    def fail(why: str = "") -> ConfigError:
        return ConfigError(f"Invalid value {short_repr(value)} for '{item.name}'{where}: expected {describe_allowed(item)}{why}.")

    if value is None or (nullable and value == ""):
        if nullable:
            return None
        raise fail()
    if kind == "list":
        if isinstance(value, str):
            if len(value) > SETTING_LIST_ITEMS * SETTING_TEXT_CHARS:
                raise fail(f" (at most {SETTING_LIST_ITEMS} items of {SETTING_TEXT_CHARS} characters)")
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            raise fail()
        if len(value) > SETTING_LIST_ITEMS:
            raise fail(f"; {len(value)} items given, at most {SETTING_LIST_ITEMS} are accepted")
        if not all(isinstance(v, str) and len(v) <= SETTING_TEXT_CHARS for v in value):
            raise fail(f" (each item a string of at most {SETTING_TEXT_CHARS} characters)")
        return list(value)
    if kind == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in {"true", "false", "yes", "no", "on", "off", "1", "0"}:
            return value.lower() in {"true", "yes", "on", "1"}
        raise fail()
    if kind == "int":
        if isinstance(value, bool):
            raise fail()
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, str):
            try:
                value = int(value)
            except ValueError:
                raise fail() from None
        if not isinstance(value, int):
            raise fail()
    elif kind == "float":
        if isinstance(value, bool):
            raise fail()
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise fail() from None
        if not math.isfinite(value):
            raise fail("; NaN and infinity are not accepted")
    elif kind == "str":
        if not isinstance(value, str):
            value = str(value) if isinstance(value, int | float) else None
            if value is None:
                raise fail()
        if len(value) > SETTING_TEXT_CHARS:
            raise fail(f"; {len(value)} characters given, at most {SETTING_TEXT_CHARS} are accepted")
    meta = item.metadata
    if meta.get("choices") and value not in meta["choices"]:
        raise fail()
    if meta.get("minimum") is not None and value < meta["minimum"]:
        raise fail()
    if meta.get("maximum") is not None and value > meta["maximum"]:
        raise fail()
    return value


def _fields_by_name() -> dict[str, dataclasses.Field]:
    return {item.name: item for item in declarations()}


def build_config(values: dict[str, Any], *, source: str = "") -> TrainConfig:
    """A validated TrainConfig from a mapping; unknown keys are errors naming the allowed keys."""
    fields = _fields_by_name()
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(
            f"Unknown setting{'s' if len(unknown) > 1 else ''} {', '.join(repr(u) for u in unknown)}"
            f"{f' in {source}' if source else ''}. Known settings: {', '.join(fields)}."
        )
    resolved = {name: coerce(fields[name], value, source=source) for name, value in values.items()}
    config = TrainConfig(**{name: default_value(item) for name, item in fields.items()} | resolved)
    check_consistency(config)
    return config


def check_consistency(config: TrainConfig) -> None:
    """Rules that involve more than one setting."""
    if config.resolution % 8:
        raise ConfigError(
            f"resolution={config.resolution} is not divisible by 8 (the VAE works on 8x8 pixel blocks); "
            f"use {config.resolution // 8 * 8 or 8} or {(config.resolution // 8 + 1) * 8}."
        )
    if config.lr_warmup_steps > config.steps and config.lr_scheduler != "constant":
        raise ConfigError(f"lr_warmup_steps={config.lr_warmup_steps} exceeds steps={config.steps}.")
    if config.prior_preservation and config.class_prompt is not None and not config.class_prompt.strip():
        raise ConfigError("prior_preservation is on but class_prompt is empty; give a class prompt such as 'a dog' or leave it unset to use the subject's.")
    if config.prior_preservation and not method_spec(config.method).prior_preservation:
        raise ConfigError(f"prior_preservation is for lora and dreambooth; {method_spec(config.method).label.lower()} does not use it. Set it to false.")


def recipe_names() -> list[str]:
    return sorted(p.stem for p in recipes_dir().glob("*.yaml"))


def resolve_recipe_path(recipe: str) -> Path:
    path = Path(recipe).expanduser()
    if path.suffix in {".yaml", ".yml"} or path.exists():
        if not path.is_file():
            raise ConfigError(f"Recipe file {path} does not exist.")
        return path
    named = recipes_dir() / f"{recipe}.yaml"
    if not named.is_file():
        raise ConfigError(f"Unknown recipe '{recipe}'. Built-in recipes: {', '.join(recipe_names())}; or give a path to a .yaml file.")
    return named


class _NoAliasLoader(yaml.SafeLoader):
    """safe_load without anchors/aliases: a 1 KB alias bomb cannot expand into gigabytes."""

    def compose_node(self, parent, index):  # type: ignore[override]
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise ConfigError(
                f"YAML aliases (*{event.anchor}) are not accepted in Studio settings (line {event.start_mark.line + 1}); "
                "write the value out in full."
            )
        return super().compose_node(parent, index)


def load_yaml(text: str, *, source: str) -> Any:
    """Parse settings YAML safely: no Python objects, no aliases, bounded size."""
    if len(text) > RECIPE_BYTES:
        raise ConfigError(f"{source} is {len(text)} bytes; settings files are at most {RECIPE_BYTES} bytes.")
    try:
        return yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506 - a SafeLoader subclass
    except ConfigError as error:
        raise ConfigError(f"{source}: {error}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{source} is not valid YAML: {error}") from error


def _read_text(path: Path) -> str:
    size = path.stat().st_size
    if size > RECIPE_BYTES:
        raise ConfigError(f"{path} is {size} bytes; settings files are at most {RECIPE_BYTES} bytes.")
    return path.read_text()


def read_recipe(recipe: str) -> dict[str, Any]:
    path = resolve_recipe_path(recipe)
    data = load_yaml(_read_text(path), source=f"Recipe {path}") or {}
    if not isinstance(data, dict):
        raise ConfigError(f"Recipe {path} must be a mapping of setting: value.")
    data.pop("description", None)
    return data


def recipe_description(recipe: str) -> str:
    path = resolve_recipe_path(recipe)
    data = load_yaml(_read_text(path), source=f"Recipe {path}") or {}
    return str(data.get("description", ""))


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``["steps=100", "lora_rank=8"]`` -> mapping; values are parsed as YAML scalars or lists."""
    values: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"Override '{pair}' must look like key=value (for example --set steps=200).")
        try:
            values[key.strip()] = load_yaml(raw, source=f"--set {key.strip()}") if raw.strip() else ""
        except ConfigError:  # not YAML (or an alias): the text itself, bounded by the setting's own limits
            values[key.strip()] = raw
    return values


def load_config(recipe: str | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Recipe (a name in recipes/ or a path) with overrides applied on top, validated."""
    values: dict[str, Any] = {}
    source = "defaults"
    if recipe:
        values.update(read_recipe(recipe))
        source = str(resolve_recipe_path(recipe))
    if overrides:
        values.update(overrides)
        source += " + overrides"
    return build_config(values, source=source)


def config_to_dict(config: TrainConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)


def save_config(config: TrainConfig, path: Path) -> None:
    from studio.atomic import write_text

    write_text(path, yaml.safe_dump(config_to_dict(config), sort_keys=False))


def read_config(path: Path) -> TrainConfig:
    data = load_yaml(_read_text(Path(path)), source=str(path)) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must be a mapping of setting: value.")
    return build_config(data, source=str(path))
