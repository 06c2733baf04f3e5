"""A CUDA device's allocated memory, emulated on the CPU: this project has no GPU, nor does its CI.

What ``torch.cuda.max_memory_allocated`` reports is the largest sum of live tensor bytes on the device.
Four pieces reproduce it on the CPU for a training step of the real architectures:

- :class:`DeviceBytes` counts the bytes of every live CPU tensor storage (registered as ops make them,
  released when the storage dies) and keeps the peak: allocated bytes, not RSS, so no allocator slack
  and no interpreter baseline, as the CUDA counter.
- :func:`cuda_autocast_policy` gives CPU autocast CUDA's rule for the norms: ``layer_norm`` and
  ``group_norm`` run in fp32 under CUDA autocast (CPU autocast keeps them in bf16). Which tensors are
  fp32 decides much of a step's memory (see ``trainers/quantize.py``: this rule made a quantized
  Flux's residual stream fp32).
- :class:`benchmarks.dry.DryCompute` skips the heavy kernels (matmuls, attention, bitsandbytes' 4-bit
  and 8-bit GEMMs) and allocates their outputs: a real-size step takes a minute, not hours.
- :class:`EmulatedSwapper` parks swapped blocks in "host" tensors the count ignores (a GPU's counter does
  not see the host's memory) and gives each block a zero-filled "device" copy when it runs, so block
  swapping shows on the count as it would on a GPU. Parked tensors of one shape and dtype share one host
  tensor (their values do not matter under dry compute), so a model whose host copy would not fit in
  this machine's RAM (FLUX.1-dev in bf16) still runs. :class:`EmulatedOffload` does the same for activation
  offloading: checkpointed inputs parked on the meta device, fetched back as zero-filled device tensors.

Checked against the H200's measurements (``benchmarks/results/flow_memory.json``, ``qlora_memory.json``):
see ``benchmarks/lowvram_memory.py --emulate`` and docs/performance.md.
"""

from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from trainers.activation_offload import ActivationOffload
from trainers.block_swap import BlockSwapper


class DeviceBytes(TorchDispatchMode):
    """Live bytes of the CPU tensor storages made while active (plus those :meth:`add` registers), and the peak."""

    def __init__(self, host: list[torch.Tensor] = ()) -> None:
        """``host``: tensors standing for the host's memory, never counted."""
        super().__init__()
        self.live: dict[int, int] = {}
        self.host = {t.untyped_storage().data_ptr() for t in host}
        self.current = 0
        self.peak = 0

    def add(self, tensor: torch.Tensor) -> None:
        if not isinstance(tensor, torch.Tensor) or tensor.device.type != "cpu":
            return
        storage = tensor.untyped_storage()
        key, size = storage.data_ptr(), storage.nbytes()
        if size == 0 or key in self.live or key in self.host:
            return
        self.live[key] = size
        self.current += size
        self.peak = max(self.peak, self.current)
        weakref.finalize(storage, self._released, key)  # storages keep their Python object until they die

    def add_module(self, module: torch.nn.Module) -> None:
        """Register a module's parameters, buffers and bitsandbytes quantization states."""
        for param in module.parameters():
            self.add(param)
            state = getattr(param, "quant_state", None)
            if state is not None:
                for tensor in (state.code, state.absmax, *((state.offset, state.state2.absmax, state.state2.code)
                                                           if state.nested else ())):
                    self.add(tensor)
        for buffer in module.buffers():
            self.add(buffer)

    def reset_peak(self) -> None:
        self.peak = self.current

    def _released(self, key: int) -> None:
        self.current -= self.live.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_leaves(out):
            self.add(tensor)
        return out


def second_step_peak(module: torch.nn.Module, step, host: list[torch.Tensor] = ()) -> int:
    """The emulated device's peak bytes during the second of two calls of ``step()`` on ``module`` (the first makes
    what a training step keeps from one to the next, such as optimizer state)."""
    meter = DeviceBytes(host=host)
    meter.add_module(module)
    with meter:
        step()
        meter.reset_peak()
        step()
    return meter.peak


_POLICY: torch.library.Library | None = None


def cuda_autocast_policy() -> None:
    """From now on in this process, CPU autocast runs ``layer_norm`` and ``group_norm`` in fp32, as CUDA autocast."""
    global _POLICY
    if _POLICY is not None:
        return
    library = torch.library.Library("aten", "IMPL")
    skip_autocast = torch._C.DispatchKeySet(torch._C.DispatchKey.AutocastCPU)

    def fp32(value):
        return value.float() if isinstance(value, torch.Tensor) and value.is_floating_point() else value

    def layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5, cudnn_enable=True):
        with torch._C._ExcludeDispatchKeyGuard(skip_autocast):
            return torch.ops.aten.layer_norm(fp32(input), normalized_shape, fp32(weight), fp32(bias), eps, cudnn_enable)

    def group_norm(input, num_groups, weight=None, bias=None, eps=1e-5, cudnn_enabled=True):
        with torch._C._ExcludeDispatchKeyGuard(skip_autocast):
            return torch.ops.aten.group_norm(fp32(input), num_groups, fp32(weight), fp32(bias), eps, cudnn_enabled)

    library.impl("layer_norm", layer_norm, "AutocastCPU")
    library.impl("group_norm", group_norm, "AutocastCPU")
    _POLICY = library


def materialize(module: torch.nn.Module) -> torch.nn.Module:
    """A module built on the meta device, given CPU memory and small random values (their values do not matter
    under dry compute; random ones quantize as real weights do)."""
    module.to_empty(device="cpu", recurse=True)
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            if tensor.is_floating_point():
                tensor.uniform_(-0.02, 0.02)
    return module


class EmulatedSwapper(BlockSwapper):
    """Studio's block swapper with shared host tensors and zero-filled device copies (see the module)."""

    def __init__(self, *args, **kwargs) -> None:
        self.hosts: dict[tuple, torch.Tensor] = {}
        super().__init__(*args, **kwargs)

    def _cpu(self, tensor: torch.Tensor) -> torch.Tensor:
        key = (tuple(tensor.shape), tensor.dtype)
        if key not in self.hosts:
            self.hosts[key] = torch.zeros(tensor.shape, dtype=tensor.dtype)
        return self.hosts[key]

    def _device_copy(self, parked: torch.Tensor) -> torch.Tensor:
        return torch.zeros(parked.shape, dtype=parked.dtype, device=self.device)


class EmulatedOffload(ActivationOffload):
    """Activation offloading with the host on the meta device and zero-filled device copies (see the module)."""

    def park(self, tensor: torch.Tensor):
        return tensor.device, tensor.to("meta")

    def fetch(self, parked) -> torch.Tensor:
        device, host = parked
        return torch.zeros(host.shape, dtype=host.dtype, device=device)
