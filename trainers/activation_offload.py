"""Activation offloading (setting ``offload_activations``): what checkpointing keeps of each block waits in CPU memory.

With gradient checkpointing a training step keeps, of every checkpointed block, only the block's inputs until the
backward pass recomputes it: FLUX.1-dev at 1024 px holds 57 blocks x 27 MiB = 1.5 GiB of them. torch's
non-reentrant checkpoint saves those inputs as saved tensors of an autograd node of its own, outside the hooks it
installs inside the block; a saved-tensor hook around the checkpoint call therefore sees exactly those inputs. It
copies each to (pinned) CPU memory in the forward and back to the device when the backward recomputes the block;
what the block saves inside stays under checkpointing (dropped, recomputed). Cost: two copies of each block's
input per step. The step computes the same values (``tests/test_activation_offload.py``).
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

from studio.errors import ConfigError


def check_activation_offload(config) -> None:
    if getattr(config, "offload_activations", False) and not config.gradient_checkpointing:
        raise ConfigError("offload_activations=true moves what gradient checkpointing keeps to the CPU: it needs "
                          "gradient_checkpointing=true (or set offload_activations=false).",
                          browser="Offloading activations moves what gradient checkpointing keeps to the CPU: tick "
                                  "gradient_checkpointing too, or untick offload_activations.")


class ActivationOffload:
    """A ``gradient_checkpointing_func`` for diffusers models whose checkpointed inputs wait on the host."""

    def __init__(self, device: torch.device) -> None:
        self.device = torch.device(device)
        self.pinned = self.device.type == "cuda"

    def park(self, tensor: torch.Tensor):
        """Where a checkpointed input waits until the backward pass."""
        if tensor.device.type == "cpu":  # a CPU run: the input is already in host memory
            return tensor.device, tensor
        host = torch.empty(tensor.size(), dtype=tensor.dtype, layout=tensor.layout, pin_memory=self.pinned)
        host.copy_(tensor, non_blocking=self.pinned)  # ordered before the device copy's memory is reused (same stream)
        return tensor.device, host

    def fetch(self, parked) -> torch.Tensor:
        device, host = parked
        return host.to(device, non_blocking=self.pinned)

    def checkpoint(self, module: torch.nn.Module, *args):
        with torch.autograd.graph.saved_tensors_hooks(self.park, self.fetch):
            return checkpoint(module.__call__, *args, use_reentrant=False)


def checkpointing_function(config, device: torch.device):
    """The denoiser's ``gradient_checkpointing_func``: None for torch's own, or one that offloads the inputs."""
    check_activation_offload(config)
    return ActivationOffload(device).checkpoint if getattr(config, "offload_activations", False) else None
