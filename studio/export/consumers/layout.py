"""What a consumer's key rules are checked against: the LoRA-adaptable modules of a model.

A :class:`ModelLayout` lists every ``Linear`` and ``Conv2d`` of the UNet and text encoders (the only
layers a LoRA file can adapt) with the family and UNet config that fix their names in other tools'
layouts. It is built from live modules or from modules on the meta device: a real SD1.5 or SDXL
layout costs no weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from studio.export.lora_weights import COMPONENTS, module_key
from studio.families.base import clip_rooted_path


@dataclass(frozen=True)
class Module:
    component: str
    path: str  # text encoders: with CLIP's ``text_model.`` root
    kind: str  # "linear" | "conv1x1" | "conv"

    @property
    def key(self) -> tuple[str, str]:
        return module_key(self.component, self.path)


@dataclass
class ModelLayout:
    family: Any
    unet_config: Any
    modules: list[Module]

    def by_component(self, component: str) -> list[Module]:
        return [m for m in self.modules if m.component == component]


def _kind(module: torch.nn.Module) -> str | None:
    if isinstance(module, torch.nn.Linear):
        return "linear"
    if isinstance(module, torch.nn.Conv2d):
        return "conv1x1" if tuple(module.kernel_size) == (1, 1) else "conv"
    return None


def layout_of(components: dict[str, Any], family=None) -> ModelLayout:
    """The layout of a pipeline's components (``pipe.components`` or a dict of modules)."""
    from studio.families import family_for

    family = family or family_for(components)
    modules = []
    for component in COMPONENTS:
        model = components.get(component)
        if model is None:
            continue
        for path, module in model.named_modules():
            kind = _kind(module)
            if kind is None:
                continue
            modules.append(Module(component, path if component == family.denoiser_name else clip_rooted_path(path), kind))
    return ModelLayout(family, components[family.denoiser_name].config, modules)
