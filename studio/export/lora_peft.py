"""PEFT adapter folders: ``adapter_config.json`` + ``adapter_model.safetensors`` per component.

This is what ``PeftModel.save_pretrained`` writes and ``PeftModel.from_pretrained(model, folder)``
reads: tensor keys ``base_model.model.<module path>.lora_A.weight`` (PEFT drops the adapter name on
save), module paths as the live torch modules name them. One folder per adapted component
(``unet/``, ``text_encoder/``) because a PEFT adapter belongs to one model.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from studio.atomic import save_safetensors, write_json
from studio.errors import StudioError
from studio.export.lora_weights import COMPONENTS, LoraModule, LoraWeights, _pattern_value

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
KEY_PREFIX = "base_model.model."


def _most_common(values: list) -> object:
    return Counter(values).most_common(1)[0][0]


def peft_config_dict(modules: list[LoraModule], base_model: str) -> dict:
    """The LoraConfig for ``modules`` (built by peft itself, so its fields are the current ones)."""
    from peft import LoraConfig

    rank = _most_common([m.rank for m in modules])
    alpha = _most_common([m.alpha for m in modules])
    config = LoraConfig(
        r=int(rank),
        lora_alpha=float(alpha),
        target_modules=sorted(m.path for m in modules),
        rank_pattern={m.path: m.rank for m in modules if m.rank != rank},
        alpha_pattern={m.path: m.alpha for m in modules if m.alpha != alpha},
        init_lora_weights=True,
        base_model_name_or_path=base_model,
    )
    data = config.to_dict()
    return {k: (sorted(v) if isinstance(v, set) else v) for k, v in data.items()}


def save_peft_folders(weights: LoraWeights, directory: Path, base_model: str) -> list[Path]:
    """Write ``directory/<component>/`` for each adapted component; returns the folders."""
    folders = []
    for component in weights.components:
        modules = weights.by_component(component)
        folder = directory / component
        folder.mkdir(parents=True, exist_ok=True)
        state = {}
        for module in modules:
            state[f"{KEY_PREFIX}{module.path}.lora_A.weight"] = module.down
            state[f"{KEY_PREFIX}{module.path}.lora_B.weight"] = module.up
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
        for module_path, tensors in sorted(pairs.items()):
            alpha = _pattern_value(config.get("alpha_pattern"), module_path, config.get("lora_alpha", config.get("r", 8)))
            declared = _pattern_value(config.get("rank_pattern"), module_path, config.get("r", 8))
            rank = int(tensors["down"].shape[0])
            modules.append(LoraModule(component, module_path, tensors["down"], tensors["up"], float(alpha) * rank / declared))
    return LoraWeights(modules)


def _component_of(folder: Path) -> str:
    return folder.name if folder.name in COMPONENTS else "unet"
