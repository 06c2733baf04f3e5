"""PEFT adapter folders: ``adapter_config.json`` + ``adapter_model.safetensors`` per component.

This is what ``PeftModel.save_pretrained`` writes and ``PeftModel.from_pretrained(model, folder)``
reads: tensor keys ``base_model.model.<module path>.lora_A.weight`` (PEFT drops the adapter name on
save), module paths as the live torch modules name them. One folder per adapted component
(``unet/``, ``text_encoder/``) because a PEFT adapter belongs to one model.

Text encoders: transformers 4 names CLIP's modules under a ``text_model.`` root that transformers 5
dropped on ``CLIPTextModel``, and peft matches tensor keys exactly. So a text-encoder adapter holds each
tensor under both names and targets its modules with a pattern that accepts either: the installed
transformers finds its own names, and the other set is left unused without a warning.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

from studio.atomic import save_safetensors, write_json
from studio.errors import StudioError
from studio.export.lora_weights import COMPONENTS, LoraModule, LoraWeights, _pattern_value, module_key
from studio.families import is_denoiser
from studio.families.base import CLIP_ROOT, clip_rooted_path, clip_rootless_path

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
KEY_PREFIX = "base_model.model."


def _most_common(values: list) -> object:
    return Counter(values).most_common(1)[0][0]


def _config_path(module: LoraModule) -> str:
    """The path patterns use: text encoders' without the root (peft matches patterns as dotted suffixes)."""
    return module.path if is_denoiser(module.component) else clip_rootless_path(module.path)


def target_modules(modules: list[LoraModule]) -> list[str] | str:
    """The UNet's module paths; for a text encoder one pattern matching each path with or without the root."""
    if all(is_denoiser(m.component) for m in modules):
        return sorted(m.path for m in modules)
    paths = "|".join(re.escape(p) for p in sorted(_config_path(m) for m in modules))
    return rf"^({re.escape(CLIP_ROOT)})?({paths})$"


def peft_config_dict(modules: list[LoraModule], base_model: str) -> dict:
    """The LoraConfig for ``modules`` (built by peft itself, so its fields are the current ones)."""
    from peft import LoraConfig

    rank = _most_common([m.rank for m in modules])
    alpha = _most_common([m.alpha for m in modules])
    config = LoraConfig(
        r=int(rank),
        lora_alpha=float(alpha),
        target_modules=target_modules(modules),
        rank_pattern={_config_path(m): m.rank for m in modules if m.rank != rank},
        alpha_pattern={_config_path(m): m.alpha for m in modules if m.alpha != alpha},
        init_lora_weights=True,
        base_model_name_or_path=base_model,
    )
    data = config.to_dict()
    return {k: (sorted(v) if isinstance(v, set) else v) for k, v in data.items()}


def _key_paths(module: LoraModule) -> list[str]:
    if is_denoiser(module.component):
        return [module.path]
    return list(dict.fromkeys([clip_rooted_path(module.path), clip_rootless_path(module.path)]))


def save_peft_folders(weights: LoraWeights, directory: Path, base_model: str) -> list[Path]:
    """Write ``directory/<component>/`` for each adapted component; returns the folders."""
    folders = []
    for component in weights.components:
        modules = weights.by_component(component)
        folder = directory / component
        folder.mkdir(parents=True, exist_ok=True)
        state = {}
        for module in modules:
            for path in _key_paths(module):  # separate copies: safetensors refuses shared storage
                state[f"{KEY_PREFIX}{path}.lora_A.weight"] = module.down.clone()
                state[f"{KEY_PREFIX}{path}.lora_B.weight"] = module.up.clone()
        save_safetensors(state, folder / WEIGHTS_FILE, metadata={"format": "pt"})
        write_json(folder / CONFIG_FILE, peft_config_dict(modules, base_model))
        folders.append(folder)
    return folders


def is_peft_folder(path: Path) -> bool:
    return (path / CONFIG_FILE).is_file() or any((path / c / CONFIG_FILE).is_file() for c in COMPONENTS)


def read_peft_folders(path: Path) -> LoraWeights:
    """Read a folder holding component subfolders (or one adapter folder, taken as the UNet's)."""
    from safetensors.torch import load_file

    if (path / CONFIG_FILE).is_file():
        folders = {_component_of(path): path}
    else:
        folders = {c: path / c for c in COMPONENTS if (path / c / CONFIG_FILE).is_file()}
    modules = []
    for component, folder in folders.items():
        config = json.loads((folder / CONFIG_FILE).read_text())
        if config.get("peft_type", "LORA") != "LORA":
            raise StudioError(f"{folder} holds a {config.get('peft_type')} adapter; only LoRA adapters are supported.")
        weights_path = folder / WEIGHTS_FILE
        if not weights_path.is_file():
            raise StudioError(f"{folder} has {CONFIG_FILE} but no {WEIGHTS_FILE} (pickle .bin adapters are refused).")
        state = load_file(str(weights_path))
        pairs: dict[str, dict] = {}
        for key, value in state.items():
            name = key.removeprefix(KEY_PREFIX)
            for suffix, role in ((".lora_A.weight", "down"), (".lora_B.weight", "up")):
                if name.endswith(suffix):
                    pairs.setdefault(name[: -len(suffix)], {})[role] = value
                    break
            else:
                raise StudioError(f"{weights_path} has a key that is not a LoRA tensor: {key}.")
        seen: set[tuple[str, str]] = set()
        for module_path, tensors in sorted(pairs.items()):
            if module_key(component, module_path) in seen:
                continue  # the same text-encoder module under its other (rooted / rootless) name
            seen.add(module_key(component, module_path))
            alpha = _pattern_value(config.get("alpha_pattern"), module_path, config.get("lora_alpha", config.get("r", 8)))
            declared = _pattern_value(config.get("rank_pattern"), module_path, config.get("r", 8))
            rank = int(tensors["down"].shape[0])
            modules.append(LoraModule(component, module_path, tensors["down"], tensors["up"], float(alpha) * rank / declared))
    return LoraWeights(modules)


def _component_of(folder: Path) -> str:
    return folder.name if folder.name in COMPONENTS else "unet"
