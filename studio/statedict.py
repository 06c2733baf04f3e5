"""Nested state (optimizer, RNG, scheduler) to safetensors + JSON and back, without pickle."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from studio.atomic import save_safetensors, write_text


def flatten(obj: Any) -> tuple[dict[str, torch.Tensor], Any]:
    """Split ``obj`` into a flat tensor dict and a JSON skeleton that references the tensors."""
    tensors: dict[str, torch.Tensor] = {}

    def walk(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            key = f"t{len(tensors)}"
            tensors[key] = value
            return {"__tensor__": key}
        if isinstance(value, dict):
            return {"__dict__": [[walk(k), walk(v)] for k, v in value.items()]}
        if isinstance(value, list | tuple):
            return {"__list__" if isinstance(value, list) else "__tuple__": [walk(v) for v in value]}
        if value is None or isinstance(value, bool | int | float | str):
            return value
        raise TypeError(f"cannot store {type(value).__name__} in a checkpoint")

    return tensors, walk(obj)


def unflatten(tensors: dict[str, torch.Tensor], skeleton: Any) -> Any:
    def walk(value: Any) -> Any:
        if isinstance(value, dict):
            if "__tensor__" in value:
                return tensors[value["__tensor__"]]
            if "__dict__" in value:
                return {walk(k): walk(v) for k, v in value["__dict__"]}
            if "__list__" in value:
                return [walk(v) for v in value["__list__"]]
            if "__tuple__" in value:
                return tuple(walk(v) for v in value["__tuple__"])
        return value

    return walk(skeleton)


def save_state(obj: Any, directory: Path, name: str) -> None:
    """Write ``name.safetensors`` and ``name.json`` describing ``obj``."""
    tensors, skeleton = flatten(obj)
    save_safetensors(tensors, directory / f"{name}.safetensors")
    write_text(directory / f"{name}.json", json.dumps(skeleton))


def load_state(directory: Path, name: str) -> Any:
    from safetensors.torch import load_file

    tensors = load_file(str(directory / f"{name}.safetensors"))
    return unflatten(tensors, json.loads((directory / f"{name}.json").read_text()))
