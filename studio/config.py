"""Build and validate a :class:`TrainConfig` from recipes and overrides.

Validation reads the declarations in :mod:`studio.settings`; nothing here re-lists settings.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

from studio.errors import ConfigError
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


def coerce(item: dataclasses.Field, value: Any, *, source: str = "") -> Any:
    """Check and convert one value for setting ``item``; raise ConfigError naming the key."""
    kind, nullable = value_type(item)
    where = f" (in {source})" if source else ""

    def fail() -> ConfigError:
        return ConfigError(f"Invalid value {value!r} for '{item.name}'{where}: expected {describe_allowed(item)}.")

    if value is None or (nullable and value == ""):
        if nullable:
            return None
        raise fail()
    if kind == "list":
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise fail()
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
    elif kind == "str":
        if not isinstance(value, str):
            value = str(value) if isinstance(value, int | float) else None
            if value is None:
                raise fail()
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
    if config.method == "textual_inversion" and config.prior_preservation:
        raise ConfigError("prior_preservation is for lora and dreambooth; textual inversion does not use it. Set it to false.")


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


def read_recipe(recipe: str) -> dict[str, Any]:
    path = resolve_recipe_path(recipe)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"Recipe {path} is not valid YAML: {error}") from error
    if not isinstance(data, dict):
        raise ConfigError(f"Recipe {path} must be a mapping of setting: value.")
    data.pop("description", None)
    return data


def recipe_description(recipe: str) -> str:
    data = yaml.safe_load(resolve_recipe_path(recipe).read_text()) or {}
    return str(data.get("description", ""))


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``["steps=100", "lora_rank=8"]`` -> mapping; values are parsed as YAML scalars or lists."""
    values: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"Override '{pair}' must look like key=value (for example --set steps=200).")
        try:
            values[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
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
    return build_config(yaml.safe_load(Path(path).read_text()) or {}, source=str(path))
