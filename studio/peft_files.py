"""Adapter folders in peft's own layout, for adapter types diffusers' LoRA files cannot hold (LoKr, LoHa).

One folder per adapted component (``peft/unet/``, ``peft/text_encoder/``) with ``adapter_config.json``
and ``adapter_model.safetensors``: what ``PeftModel.save_pretrained`` writes and
``PeftModel.from_pretrained`` reads (keys ``base_model.model.<module>.<tensor>``). Written from live,
peft-adapted components; loaded onto a pipeline under an adapter name, so diffusers' ``set_adapters``
weights them like any LoRA.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from studio.errors import StudioError

PEFT_DIR = "peft"
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
KEY_PREFIX = "base_model.model."


def config_dict(config: Any) -> dict[str, Any]:
    """A peft config as JSON-ready data (sets become sorted lists)."""
    data = config.to_dict()
    return {k: (sorted(v) if isinstance(v, set) else v) for k, v in data.items()}


def save_peft_adapters(components: dict[str, Any], names: tuple[str, ...], directory: Path,
                       base_model: str | None = None) -> list[str]:
    """Write ``directory/peft/<component>/`` for each component of ``names`` that carries an adapter."""
    from peft.utils import get_peft_model_state_dict

    from studio.atomic import save_safetensors, write_json

    written = []
    for name in names:
        module = components.get(name)
        configs = getattr(module, "peft_config", None) if module is not None else None
        if not configs:
            continue
        config = next(iter(configs.values()))
        folder = directory / PEFT_DIR / name
        folder.mkdir(parents=True, exist_ok=True)
        state = {KEY_PREFIX + key: value.detach().float().cpu().contiguous()
                 for key, value in get_peft_model_state_dict(module).items()}
        save_safetensors(state, folder / WEIGHTS_FILE, metadata={"format": "pt"})
        data = config_dict(config) | ({"base_model_name_or_path": base_model} if base_model else {})
        write_json(folder / CONFIG_FILE, data)
        written.append(f"{PEFT_DIR}/{name}")
    return written


def peft_folders(directory: Path) -> dict[str, Path]:
    """The component folders under ``directory`` (a run's artifact or an export's ``peft/``)."""
    root = directory / PEFT_DIR if (directory / PEFT_DIR).is_dir() else directory
    return {p.name: p for p in sorted(root.iterdir()) if (p / CONFIG_FILE).is_file()} if root.is_dir() else {}


def read_config(folder: Path) -> Any:
    """The folder's peft config, as the class its ``peft_type`` names."""
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    data = json.loads((folder / CONFIG_FILE).read_text())
    kind = data.get("peft_type", "LORA")
    if kind not in PEFT_TYPE_TO_CONFIG_MAPPING:
        raise StudioError(f"{folder} holds a {kind} adapter, which this peft does not know.")
    config_class = PEFT_TYPE_TO_CONFIG_MAPPING[kind]
    fields = set(config_class.__dataclass_fields__)
    return config_class(**{k: v for k, v in data.items() if k in fields})


def needs_peft_loader(directory: Path) -> bool:
    """Whether the folders hold anything but plain LoRA (LoKr, LoHa, DoRA), which only peft's own layers apply."""
    for folder in peft_folders(directory).values():
        data = json.loads((folder / CONFIG_FILE).read_text())
        if data.get("peft_type", "LORA") != "LORA" or data.get("use_dora"):
            return True
    return False


def load_peft_adapters(pipe, directory: Path, adapter_name: str) -> list[str]:
    """Add every component folder under ``directory`` to the matching pipeline component as
    ``adapter_name`` (peft's own injection and state loading); returns the components adapted."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    folders = peft_folders(directory)
    if not folders:
        raise StudioError(f"{directory} holds no peft adapter folder ({CONFIG_FILE}).")
    for name, folder in folders.items():
        module = getattr(pipe, name, None)
        if module is None:
            raise StudioError(f"{folder} adapts '{name}', which this pipeline does not have.")
        module.add_adapter(read_config(folder), adapter_name=adapter_name)
        state = {k.removeprefix(KEY_PREFIX): v for k, v in load_file(str(folder / WEIGHTS_FILE)).items()}
        result = set_peft_model_state_dict(module, state, adapter_name=adapter_name)
        unexpected = getattr(result, "unexpected_keys", None) or []
        if unexpected:
            raise StudioError(f"{folder}: {len(unexpected)} tensors fit no layer of {name} (e.g. {unexpected[:2]}).")
    return list(folders)
