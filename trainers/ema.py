"""An exponential moving average (EMA) of a method's trainable weights.

The average is held in float32, on the CPU by default (``ema_on_cpu``: no accelerator memory, one copy
from the device per step) or beside the weights. Its decay warms up as in diffusers' ``EMAModel``
(``min(decay, (1 + n) / (10 + n))`` after n updates), so short runs are not dominated by the start.
:meth:`ExponentialAverage.applied` swaps the average into the live weights for samples, validation and
saving, and puts the raw weights back afterwards (bit for bit).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

STATE_PREFIX = "ema."


class ExponentialAverage:
    """EMA of ``method``'s trainable tensors, keyed as :meth:`trainers.method.Method.trainable_state` keys them."""

    def __init__(self, method, decay: float, on_cpu: bool = True):
        self.method = method
        self.decay = float(decay)
        self.updates = 0
        self.parameters = self._parameters()
        device = torch.device("cpu") if on_cpu else None
        self.shadow = {
            name: param.detach().to(device=device or param.device, dtype=torch.float32, copy=True)
            for name, param in self.parameters.items()
        }

    def _parameters(self) -> dict[str, torch.nn.Parameter]:
        modules = self.method.trainable_modules()
        found = {}
        for key in self.method.trainable_state():
            module_name, _, pname = key.partition(".")
            found[key] = modules[module_name].get_parameter(pname)
        return found

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self) -> None:
        decay = self.current_decay()
        for name, param in self.parameters.items():
            shadow = self.shadow[name]
            shadow.lerp_(param.detach().to(shadow.device, torch.float32), 1.0 - decay)
        self.updates += 1

    def state(self) -> dict[str, torch.Tensor]:
        """For checkpoints: the average and its update count."""
        return {STATE_PREFIX + k: v.cpu() for k, v in self.shadow.items()} | {
            STATE_PREFIX + "updates": torch.tensor(self.updates, dtype=torch.int64)}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        missing = [k for k in self.shadow if STATE_PREFIX + k not in state]
        if missing:
            raise ValueError(f"checkpoint lacks the EMA of {len(missing)} tensors, e.g. {missing[:2]}")
        for name, shadow in self.shadow.items():
            shadow.copy_(state[STATE_PREFIX + name])
        self.updates = int(state[STATE_PREFIX + "updates"])

    def weights(self) -> dict[str, torch.Tensor]:
        """The averaged tensors under the trainable names (for saving a result of them)."""
        return {k: v.clone() for k, v in self.shadow.items()}

    @contextmanager
    def applied(self) -> Iterator[None]:
        """The average in the live weights for the duration; the raw weights restored exactly after."""
        with torch.no_grad():
            raw = {name: param.detach().clone() for name, param in self.parameters.items()}
            for name, param in self.parameters.items():
                param.copy_(self.shadow[name].to(param.device, param.dtype))
        try:
            yield
        finally:
            with torch.no_grad():
                for name, param in self.parameters.items():
                    param.copy_(raw[name])
