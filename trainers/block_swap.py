"""Block swapping: the frozen weights of the denoiser's last N transformer blocks live on the CPU.

Setting ``blocks_to_swap`` (Flux and SD3; the family names the block lists, ``swappable_block_lists``).
Each swapped block's frozen tensors (weights, biases, buffers; NF4 codes with their quantization state;
fp8 weights) are kept once in CPU memory (pinned on CUDA). A forward pre-hook puts a device copy in
place just before the block runs and a forward hook drops it right after; the next swapped block's copy
is started meanwhile on a second CUDA stream, so the transfer overlaps the current block's compute.

The backward pass: with gradient checkpointing the blocks run their forward again inside the backward
(in reverse order), and the same hooks bring each one back for that recompute (prefetching the previous
block). Autograd keeps the device copies the recompute saved until that block's backward is done, so
the backward reads the right weights while at most about two swapped blocks sit on the device. Without
checkpointing autograd would keep every block's copy until the backward: nothing would be saved, so
the setting requires ``gradient_checkpointing``.

Trainable tensors (the LoRA's ``lora_A``/``lora_B``) never move: they stay on the device, where the
optimizer, its state, gradient clipping and the checkpoints expect them. Only frozen tensors swap, so
the CPU copy is always current and dropping the device copy needs no transfer back.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from studio.errors import ConfigError
from trainers.bitsandbytes_layers import quant_state_tensors, quant_state_with


def check_block_swap(config) -> None:
    """Refuse settings block swapping cannot serve, naming the setting and the fix."""
    n = getattr(config, "blocks_to_swap", 0)
    if not n:
        return
    if config.method not in ("lora", "textual_inversion"):
        raise ConfigError(f"blocks_to_swap={n} swaps a frozen denoiser: for method lora or textual_inversion, not "
                          f"{config.method} (set blocks_to_swap=0).")
    if not config.gradient_checkpointing:
        raise ConfigError(f"blocks_to_swap={n} needs gradient_checkpointing=true: without it the backward pass keeps "
                          "every block's weights on the device and swapping saves nothing.")
    if config.base_quantization == "int8":
        raise ConfigError(f"blocks_to_swap={n} does not combine with base_quantization=int8 (bitsandbytes keeps int8 "
                          "state outside the weights); use base_quantization=nf4 or fp8, or blocks_to_swap=0.")
    if config.torch_compile:
        raise ConfigError(f"blocks_to_swap={n} does not combine with torch_compile; set torch_compile=false.")


def swapped_blocks(family, denoiser: torch.nn.Module, count: int) -> list[torch.nn.Module]:
    """The last ``count`` of the family's blocks (in forward order); a clear error when there are fewer."""
    blocks = family.swappable_blocks(denoiser)
    if not blocks:
        raise ConfigError(f"blocks_to_swap={count}: {family.label} has no transformer blocks to swap (Flux and SD3 do); "
                          "set blocks_to_swap=0.")
    if count > len(blocks):
        raise ConfigError(f"blocks_to_swap={count}, but this {family.label} transformer has {len(blocks)} blocks; "
                          f"set blocks_to_swap to at most {len(blocks)}.")
    return blocks[len(blocks) - count:]


@dataclass
class _Slot:
    """One frozen tensor of a swapped block: where it is set, its CPU copy and (NF4) its quantization state."""

    owner: torch.nn.Module
    name: str
    is_param: bool
    cpu: torch.Tensor
    cpu_state: object | None = None


class BlockSwapper:
    """Keeps the frozen tensors of ``blocks`` on the CPU and brings each to ``device`` around its forward.

    ``log`` (optional list) records ("load" | "release", block index) in order. ``released_value`` maps a
    released tensor's CPU copy to what the block holds meanwhile (default: the CPU copy itself); the tests
    give NaNs, so any use of a released block shows in the loss, where on a CPU the two devices are one."""

    def __init__(self, blocks: list[torch.nn.Module], device: torch.device, *, log: list | None = None,
                 released_value=None, prepare=None) -> None:
        """``prepare(block)`` runs on each block just before it is parked (quantization: so only one block at a
        time is on the device in full)."""
        self.blocks = blocks
        self.device = torch.device(device)
        self.log = log
        self.released_value = released_value or (lambda tensor: tensor)
        self.cuda = self.device.type == "cuda"
        self.copy_stream = torch.cuda.Stream(self.device) if self.cuda else None
        self.slots: list[list[_Slot]] = []
        for block in blocks:
            if prepare is not None:
                prepare(block)
            self.slots.append(self._park(block))
        self.loaded: dict[int, tuple[list[tuple[torch.Tensor, object | None]], object | None]] = {}
        self.handles = []
        for index, block in enumerate(blocks):
            self.handles.append(block.register_forward_pre_hook(lambda _m, _a, i=index: self._before(i)))
            self.handles.append(block.register_forward_hook(lambda _m, _a, _o, i=index: self._after(i)))

    # ------------------------------------------------------------------ parking
    def _park(self, block: torch.nn.Module) -> list[_Slot]:
        """Move the block's trainable tensors to the device and its frozen ones to (pinned) CPU memory."""
        slots = []
        for module in block.modules():
            for name, param in list(module.named_parameters(recurse=False)):
                if param.requires_grad:
                    param.data = param.data.to(self.device)
                    continue
                state = getattr(param, "quant_state", None)
                slots.append(_Slot(module, name, True, self._cpu(param.data), quant_state_with(state, self._cpu)))
            for name, buffer in list(module.named_buffers(recurse=False)):
                if buffer is not None:
                    slots.append(_Slot(module, name, False, self._cpu(buffer)))
        for slot in slots:
            self._install(slot, self.released_value(slot.cpu), slot.cpu_state)
        return slots

    def _cpu(self, tensor: torch.Tensor) -> torch.Tensor:
        """The parked (host) copy of a frozen tensor."""
        tensor = tensor.detach().to("cpu")
        return tensor.pin_memory() if self.cuda else tensor

    def _device_copy(self, parked: torch.Tensor) -> torch.Tensor:
        """A parked tensor's copy on the device (asynchronous from pinned memory; on a CPU the tensor itself)."""
        return parked.to(self.device, non_blocking=True)

    @staticmethod
    def _install(slot: _Slot, tensor: torch.Tensor, state) -> None:
        if slot.is_param:
            param = getattr(slot.owner, slot.name)
            param.data = tensor
            if state is not None:
                param.quant_state = state
                if hasattr(slot.owner, "quant_state"):  # bitsandbytes' Linear4bit keeps its own reference too
                    slot.owner.quant_state = state
        else:
            slot.owner._buffers[slot.name] = tensor

    # ------------------------------------------------------------------ moving
    def _start(self, index: int) -> None:
        """Begin copying block ``index`` to the device (on the copy stream where there is one)."""
        if index in self.loaded:
            return
        if self.log is not None:
            self.log.append(("load", index))
        stream = torch.cuda.stream(self.copy_stream) if self.cuda else _nothing()
        with stream:
            copies = [(self._device_copy(s.cpu), quant_state_with(s.cpu_state, self._device_copy)) for s in self.slots[index]]
            event = torch.cuda.Event() if self.cuda else None
            if event is not None:
                event.record(self.copy_stream)
        self.loaded[index] = (copies, event)

    def _before(self, index: int) -> None:
        following = self._following(index)
        for other in list(self.loaded):  # a recompute that checkpointing stopped early never ran its forward hook
            if other not in (index, following):
                self.release(other)
        self._start(index)
        copies, event = self.loaded[index]
        if event is not None:
            compute = torch.cuda.current_stream(self.device)
            compute.wait_event(event)
            for tensor, state in copies:  # the allocator must not reuse them while compute may still read them
                for t in [tensor, *quant_state_tensors(state)]:
                    t.record_stream(compute)
        for slot, (tensor, state) in zip(self.slots[index], copies, strict=True):
            self._install(slot, tensor, state)
        if following is not None:
            self._start(following)

    @staticmethod
    def _in_backward() -> bool:
        return _current_autograd_node() is not None

    def _following(self, index: int) -> int | None:
        """The swapped block that runs next: the next one in a forward, the previous one in the backward's recompute."""
        following = index + (-1 if self._in_backward() else 1)
        return following if 0 <= following < len(self.blocks) else None

    def _after(self, index: int) -> None:
        """Drop the block's copy, unless it is the next one to run anyway: the last block after a training forward
        (the backward recomputes it first), the first one after the backward (the next step starts with it)."""
        backward = self._in_backward()
        if (index == len(self.blocks) - 1 and not backward and torch.is_grad_enabled()) or (index == 0 and backward):
            return
        self.release(index)

    def release(self, index: int) -> None:
        """Drop the device copy of block ``index`` (autograd keeps what a pending backward still needs)."""
        if self.loaded.pop(index, None) is None:
            return
        if self.log is not None:
            self.log.append(("release", index))
        for slot in self.slots[index]:
            self._install(slot, self.released_value(slot.cpu), slot.cpu_state)

    def release_all(self) -> None:
        for index in list(self.loaded):
            self.release(index)

    def remove(self) -> None:
        """Take the hooks off (the frozen tensors stay on the CPU)."""
        self.release_all()
        for handle in self.handles:
            handle.remove()
        self.handles = []

    def swapped_bytes(self) -> int:
        return sum(s.cpu.numel() * s.cpu.element_size() + sum(t.numel() * t.element_size() for t in quant_state_tensors(s.cpu_state))
                   for slots in self.slots for s in slots)


def _current_autograd_node():
    """The autograd node running now (None outside the backward pass; a private torch API, hence the guard)."""
    current = getattr(torch._C, "_current_autograd_node", None)
    return current() if current is not None else None


@contextmanager
def _nothing() -> Iterator[None]:
    yield


@contextmanager
def detached(blocks: list[torch.nn.Module], denoiser: torch.nn.Module) -> Iterator[None]:
    """The denoiser without ``blocks`` for the duration (their places in its ModuleLists empty), so moving or
    quantizing the rest never puts the swapped blocks on the device."""
    wanted = {id(b) for b in blocks}
    places = [(parent, key, child) for parent in denoiser.modules() for key, child in list(parent._modules.items())
              if child is not None and id(child) in wanted]
    for parent, key, _ in places:
        parent._modules[key] = None
    try:
        yield
    finally:
        for parent, key, child in places:
            parent._modules[key] = child


def place_with_swapping(trainer, quantize_and_move) -> BlockSwapper | None:
    """Quantize and place the trainer's modules (``quantize_and_move()``), keeping ``blocks_to_swap`` blocks'
    frozen weights on the CPU; returns the installed swapper (None when the setting is 0)."""
    count = getattr(trainer.config, "blocks_to_swap", 0)
    if not count:
        quantize_and_move()
        return None
    check_block_swap(trainer.config)
    if trainer.accelerator.num_processes > 1:
        raise ConfigError(f"blocks_to_swap={count} runs on one GPU (distributed training wraps the whole model on each "
                          "device); launch one process or set blocks_to_swap=0.")
    denoiser = trainer.components[trainer.family.denoiser_name]
    blocks = swapped_blocks(trainer.family, denoiser, count)
    with detached(blocks, denoiser):
        quantize_and_move()
    from trainers import quantize

    kind = trainer.config.base_quantization
    # each block quantized on the device, then parked on the CPU before the next: one block there at a time
    prepare = (lambda block: quantize.quantize_block(trainer, block, kind)) if kind != "none" else None
    return BlockSwapper(blocks, trainer.device, prepare=prepare)
