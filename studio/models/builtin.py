"""Built-in offline models: small, deterministic, written out once as ordinary folders.

A built-in is only a *builder* of a standard folder (a diffusers pipeline folder, a transformers
model folder). After materialisation everything loads it through the same ``from_pretrained``
path as real weights; no code outside ``studio.models`` knows a model is tiny.
"""

from __future__ import annotations

import fcntl
import importlib
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from studio.atomic import atomic_dir
from studio.errors import ModelLoadError
from studio.paths import builtin_models_dir


@dataclass(frozen=True)
class BuiltinModel:
    name: str
    kind: str  # "pipeline" (a diffusers folder), "clip" or "dino" (a transformers folder)
    description: str
    version: str  # bump when the builder's output changes; part of the cached folder name
    build: Callable[[Path], None]  # writes a complete folder into an empty directory
    resolution: int | None = None  # a pipeline's native image size (px)
    expectations: str = ""  # what its images look like, for a person seeing them (empty: like real ones)


def random_weights_note(name: str) -> str:
    """The ``expectations`` of a built-in pipeline with random weights (what its images look like)."""
    return (
        f"Built-in {name}: a tiny model made for offline demos and tests, with random weights. Its images are "
        "colour blobs, and that is expected: it shows that training, sampling and export work, not what a real "
        "model learns. Train on a real base model (a Hub id, a local folder or a .safetensors file) for real images."
    )


_REGISTRY: dict[str, BuiltinModel] = {}
# Modules that register built-ins when imported.
_BUILDER_MODULES = ("studio.models.tiny_sd", "studio.models.tiny_sdxl", "studio.models.tiny_backbones",
                    "studio.models.tiny_edit", "studio.models.tiny_flux", "studio.models.tiny_sd3",
                    "studio.models.tiny_flow_controlnet", "studio.models.tiny_vlm")


def register(model: BuiltinModel) -> BuiltinModel:
    _REGISTRY[model.name] = model
    return model


def builtins() -> dict[str, BuiltinModel]:
    for module in _BUILDER_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as error:
            if error.name != module:
                raise
    return dict(sorted(_REGISTRY.items()))


def is_builtin(name: str) -> bool:
    return name in builtins()


def get_builtin(name: str) -> BuiltinModel:
    models = builtins()
    if name not in models:
        raise ModelLoadError(f"'{name}' is not a built-in model. Built-ins: {', '.join(models)}.")
    return models[name]


def materialize(name: str, directory: str | Path, *, force: bool = False) -> Path:
    """Write built-in ``name`` as a standard folder at ``directory`` (atomically)."""
    model = get_builtin(name)
    target = Path(directory)
    if target.exists() and any(target.iterdir()) and not force:
        raise ModelLoadError(f"{target} already exists and is not empty; choose a new folder or pass --force.")
    if target.exists() and not any(target.iterdir()):
        target.rmdir()
    source = builtin_path(model.name)
    with atomic_dir(target, replace=force) as tmp:
        shutil.copytree(source, tmp, dirs_exist_ok=True)
    return target


def builtin_path(name: str) -> Path:
    """The cached folder of built-in ``name``, materialised on first use (safe across processes)."""
    model = get_builtin(name)
    root = builtin_models_dir()
    root.mkdir(parents=True, exist_ok=True)
    target = root / f"{name}-v{model.version}"
    if target.exists():
        return target
    with open(root / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not target.exists():
            # Building must not consume the caller's random numbers (a trainer may have seeded them).
            with atomic_dir(target) as tmp, torch.random.fork_rng(devices=[]):
                model.build(tmp)
    return target
