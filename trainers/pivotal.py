"""Pivotal tuning: a LoRA on the denoiser and a new textual-inversion token, trained together.

The token's rows are textual inversion's (:class:`trainers.textual_inversion.EmbeddingWithNewRows`):
only they change in the text encoders. They train at ``embedding_learning_rate`` with no weight decay,
the LoRA at ``learning_rate``; with ``embedding_stop_step`` N the rows train for the first N steps and
are then held fixed (no gradient, so no optimizer update) while the LoRA trains on against them.
The result is the LoRA file and the embedding file side by side in ``adapter/``; they are applied
together (``studio.adapters``) and exported together (``studio.export.pivotal_export``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from studio.errors import ConfigError
from trainers.lora import LoRAMethod
from trainers.textual_inversion import TextualInversionMethod

ROWS = "new_rows"  # the token's trainable rows inside each wrapped embedding


class PivotalMethod(LoRAMethod):
    name = "pivotal"
    artifact = "adapter"
    reduced_frozen_params_ok = True

    def __init__(self, config, base, subject):
        super().__init__(config, base, subject)
        self.tokens = TextualInversionMethod(config, base, subject)  # the token half: prompts, rows, its file

    # --- prompts: the placeholder token stands for the subject -------------------------------------
    @property
    def token(self) -> str:
        return self.tokens.token

    def instance_prompt(self) -> str:
        return self.tokens.instance_prompt()

    def training_prompt(self, prompt_with_identifier: str) -> str:
        return self.tokens.training_prompt(prompt_with_identifier)

    def pipeline_prompt(self, prompt_with_identifier: str) -> str:
        return self.tokens.pipeline_prompt(prompt_with_identifier)

    # --- what trains ---------------------------------------------------------------------------------
    def setup(self) -> None:
        if self.config.adapter_type not in (None, "lora"):
            raise ConfigError(f"Pivotal tuning trains a plain LoRA with its token; adapter_type={self.config.adapter_type} "
                              "is for method=lora.")
        if self.config.train_text_encoder:
            raise ConfigError("Pivotal tuning trains the text encoder through its new token only; set train_text_encoder=false.")
        self.tokens.setup()  # freezes everything, adds the token, wraps the embeddings
        super().setup()  # freezes everything again and adds the LoRA
        for rows in self.embedding_rows().values():
            rows.requires_grad_(True)

    def embedding_rows(self) -> dict[str, torch.nn.Parameter]:
        return {name: self.components[name].get_input_embeddings().new_rows for name in self.tokens.encoder_names}

    def text_encoder_trains(self) -> bool:
        return True  # the prompt is encoded each step (the token's rows move)

    def trainable_modules(self) -> dict[str, torch.nn.Module]:
        return super().trainable_modules() | self.tokens.trainable_modules()

    def parameter_groups(self) -> list[dict]:
        denoiser = self.family.denoiser_name
        lora = [p for p in self.components[denoiser].parameters() if p.requires_grad]
        return [{"params": lora, "lr": self.config.learning_rate, "name": denoiser},
                {"params": list(self.embedding_rows().values()), "lr": self.config.embedding_learning_rate,
                 "weight_decay": 0.0, "name": "embedding"}]

    def on_step(self, step: int) -> None:
        """Before optimizer step ``step`` (0-based): the rows train while ``step < embedding_stop_step``."""
        stop = self.config.embedding_stop_step
        for rows in self.embedding_rows().values():
            rows.requires_grad_(not stop or step < stop)

    # --- checkpoints: the rows are kept even while they are held fixed -------------------------------
    def trainable_state(self) -> dict[str, torch.Tensor]:
        state = super().trainable_state()
        for name in self.tokens.encoder_names:
            for pname, param in self.components[name].named_parameters():
                if pname.endswith(ROWS):
                    state[f"{name}.{pname}"] = param.detach().clone()
        return state

    # --- result --------------------------------------------------------------------------------------
    def save_result(self, directory: Path) -> dict[str, Any]:
        extras = super().save_result(directory)
        self.tokens.save_result(directory)
        return extras | {"placeholder_tokens": self.tokens.placeholder_tokens, "num_vectors": self.config.num_vectors,
                         "embedding_stop_step": self.config.embedding_stop_step,
                         "files": sorted(p.name for p in directory.iterdir())}
