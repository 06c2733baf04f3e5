"""A LoRA extracted from a full fine-tune: truncated SVD of ``W_tuned - W_base`` per layer.

Every ``Linear`` and ``Conv2d`` whose weight changed is approximated by its top-``rank`` singular
directions (a conv's kernel is flattened to ``[out, in*k*k]``; the down factor keeps the kernel,
the up factor is 1x1, as kohya's LoCon layout). At ``rank >= min(out, in*k*k)`` the layer's update is
reproduced exactly; what a LoRA cannot hold at all (biases, norms, embeddings) is measured and
reported instead of silently dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from studio.export.lora_weights import COMPONENTS, LoraModule, LoraWeights, module_key

ADAPTABLE = (torch.nn.Linear, torch.nn.Conv2d)


@dataclass
class Extraction:
    weights: LoraWeights
    rank: int
    # Squared Frobenius norms, summed over the model: the fine-tune's whole change, what the LoRA
    # layers approximate, and what the LoRA layers miss (truncation error).
    delta_norm2: float
    adaptable_norm2: float
    truncation_norm2: float
    # Each adapted module's squared change, by (component, path without text_model. root): what a
    # consumer that leaves the module out loses of the fine-tune.
    module_norm2: dict[tuple[str, str], float] = field(default_factory=dict)

    @property
    def captured_fraction(self) -> float:
        """Share of the fine-tune's squared weight change the LoRA holds (1.0 = everything)."""
        if self.delta_norm2 == 0:
            return 1.0
        return (self.adaptable_norm2 - self.truncation_norm2) / self.delta_norm2

    def relative_norm(self, norm2: float) -> float:
        """``sqrt(norm2 / ||delta||^2)``: a part of the change as a relative Frobenius norm."""
        return (norm2 / self.delta_norm2) ** 0.5 if self.delta_norm2 else 0.0

    def summary(self) -> dict:
        return {
            "rank": self.rank,
            "modules": len(self.weights.modules),
            "captured_fraction": round(self.captured_fraction, 6),
            # What no LoRA file holds (the truncated singular directions plus biases, norms and
            # embeddings), as a relative Frobenius norm of the whole DreamBooth change.
            "left_out_relative_norm": round(self.relative_norm(self.delta_norm2 - self.adaptable_norm2
                                                                + self.truncation_norm2), 6),
            "truncation_relative_norm": round(self.relative_norm(self.truncation_norm2), 6),
            "not_adaptable_relative_norm": round(self.relative_norm(self.delta_norm2 - self.adaptable_norm2), 6),
            "truncation_relative_error": round((self.truncation_norm2 / self.adaptable_norm2) ** 0.5, 6)
            if self.adaptable_norm2
            else 0.0,
            "not_adaptable_fraction": round(1 - self.adaptable_norm2 / self.delta_norm2, 6) if self.delta_norm2 else 0.0,
        }


def low_rank_factors(delta: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(down, up, squared truncation error) with ``up @ down ~= delta`` at ``rank``."""
    out_features = delta.shape[0]
    matrix = delta.reshape(out_features, -1).double()
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    r = min(rank, s.numel())
    root = s[:r].sqrt()
    up = u[:, :r] * root
    down = root[:, None] * vh[:r]
    error = float((s[r:] ** 2).sum())
    if delta.ndim == 4:
        down = down.reshape(r, *delta.shape[1:])
        up = up[:, :, None, None]
    return down.to(delta.dtype).contiguous(), up.to(delta.dtype).contiguous(), error


def extract_lora(base_components: dict, tuned_components: dict, rank: int, names=COMPONENTS) -> Extraction:
    """SVD-extract a LoRA of ``rank`` for every changed Linear/Conv2d of the named components
    (by default the UNet and every text encoder a pipeline has: SDXL's ``text_encoder_2`` too)."""
    modules: list[LoraModule] = []
    norms: dict[tuple[str, str], float] = {}
    total = adaptable = truncation = 0.0
    for name in names:
        base, tuned = base_components.get(name), tuned_components.get(name)
        if base is None or tuned is None:
            continue
        base_params = dict(base.named_parameters())
        adaptable_params: set[str] = set()
        for path, module in tuned.named_modules():
            if not isinstance(module, ADAPTABLE):
                continue
            adaptable_params.add(f"{path}.weight")
            delta = (module.weight.detach().float() - base_params[f"{path}.weight"].detach().float())
            norm2 = float(delta.double().pow(2).sum())
            if norm2 == 0.0:
                continue
            down, up, error = low_rank_factors(delta, rank)
            modules.append(LoraModule(name, path, down, up, float(down.shape[0])))
            norms[module_key(name, path)] = norm2
            adaptable += norm2
            truncation += error
        for pname, param in tuned.named_parameters():
            norm2 = float((param.detach().double() - base_params[pname].detach().double()).pow(2).sum())
            total += norm2
    return Extraction(LoraWeights(modules), rank, total, adaptable, truncation, norms)
