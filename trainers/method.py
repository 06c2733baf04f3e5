"""What a training method must say: what trains, how it is grouped, how the result is saved.

The loop in :mod:`trainers.base` does everything else, once, for every method.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import torch

from studio.settings import TrainConfig
from studio.subjects import Subject


class Method(ABC):
    """One training method (LoRA, DreamBooth, textual inversion)."""

    name: str
    artifact: str  # folder of the final result inside the run: "adapter" or "model"
    # May frozen parameters inside a module that also trains be held in reduced precision? (LoRA: yes)
    reduced_frozen_params_ok: bool = False

    def __init__(self, config: TrainConfig, base, subject: Subject):
        self.config = config
        self.base = base
        self.subject = subject
        self.components: dict[str, Any] = base.components
        self.family = base.family

    # --- what trains -------------------------------------------------------------------------
    @abstractmethod
    def setup(self) -> None:
        """Freeze what does not train, add adapters or tokens, mark trainable parameters."""

    @abstractmethod
    def trainable_modules(self) -> dict[str, torch.nn.Module]:
        """Components holding trainable parameters (they get prepared by Accelerate)."""

    def text_encoder_trains(self) -> bool:
        return False

    def parameter_groups(self) -> list[dict]:
        """Optimizer parameter groups; by default UNet params at learning_rate and text-encoder params at
        text_encoder_learning_rate."""
        groups = []
        for name, module in self.trainable_modules().items():
            params = [p for p in module.parameters() if p.requires_grad]
            if not params:
                continue
            lr = self.config.learning_rate
            if name.startswith("text_encoder") and self.config.text_encoder_learning_rate is not None:
                lr = self.config.text_encoder_learning_rate
            groups.append({"params": params, "lr": lr, "name": name})
        return groups

    def on_step(self, step: int) -> None:
        """Called before optimizer step ``step`` (0-based); a method whose trainable set changes during a run
        (pivotal tuning's embedding stop) sets it here."""
        return None

    # --- prompts -------------------------------------------------------------------------------
    @property
    def token(self) -> str:
        """What stands for the subject in prompts (the identifier, or TI's placeholder tokens)."""
        return self.subject.identifier

    def instance_prompt(self) -> str:
        """The instance prompt as the trainer tokenizes it."""
        return self.subject.instance_prompt

    def training_prompt(self, prompt_with_identifier: str) -> str:
        """Any training prompt with the identifier (a caption, another subject's instance prompt) as the
        trainer tokenizes it."""
        return prompt_with_identifier

    def pipeline_prompt(self, prompt_with_identifier: str) -> str:
        """A prompt as a user types it into a pipeline (TI's multi-vector token expands there)."""
        return prompt_with_identifier

    # --- checkpoints ---------------------------------------------------------------------------
    def trainable_state(self) -> dict[str, torch.Tensor]:
        """Trainable tensors by qualified name, for checkpoints."""
        state = {}
        for name, module in self.trainable_modules().items():
            for pname, param in module.named_parameters():
                if param.requires_grad:
                    state[f"{name}.{pname}"] = param.detach().clone()
        return state

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        expected = self.trainable_state().keys()
        missing = sorted(set(expected) - set(state))
        if missing:
            raise ValueError(f"checkpoint lacks {len(missing)} trainable tensors, e.g. {missing[:3]}")
        modules = self.trainable_modules()
        for key, value in state.items():
            module_name, _, pname = key.partition(".")
            param = modules[module_name].get_parameter(pname)
            with torch.no_grad():
                param.copy_(value.to(param.device, param.dtype))

    # --- result --------------------------------------------------------------------------------
    @abstractmethod
    def save_result(self, directory: Path) -> dict[str, Any]:
        """Write the final adapter/model into ``directory`` (empty, temporary); return result.json extras."""
