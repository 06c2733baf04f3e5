"""Block swapping (blocks_to_swap, trainers/block_swap.py) on tiny-flux: a run with swapping gives the same
losses and trained adapter as one without; on the real module, every block holds its weights when it
computes (forward and the checkpointed backward) and at most two swapped blocks are loaded at once."""

from __future__ import annotations

import json
from functools import partial

import pytest
import torch
from conftest import tiny_config
from peft import LoraConfig
from safetensors.torch import load_file

from studio.errors import ConfigError
from studio.families.base import PromptEmbedding
from studio.models import load_base
from trainers import METHODS
from trainers.base import Trainer, prepare_run_dir
from trainers.block_swap import BlockSwapper, check_block_swap, swapped_blocks

ADAPTER = "adapter/pytorch_lora_weights.safetensors"


def _nan_like(tensor: torch.Tensor) -> torch.Tensor:
    return torch.full_like(tensor, float("nan"))


def _lora_transformer():
    base = load_base("tiny-flux")
    transformer = base.pipeline.transformer
    transformer.requires_grad_(False)
    transformer.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"],
                                       init_lora_weights="gaussian"))
    transformer.enable_gradient_checkpointing()
    transformer.train()
    return base.family, transformer


def _step(family, transformer) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    config = transformer.config
    noisy = torch.randn(1, config.in_channels // 4, 8, 8, generator=generator)
    embedding = PromptEmbedding(torch.randn(1, 7, config.joint_attention_dim, generator=generator),
                                torch.randn(1, config.pooled_projection_dim, generator=generator))
    transformer.zero_grad(set_to_none=True)
    loss = family.predict(transformer, noisy, torch.tensor([500.0]), embedding, 64).pow(2).mean()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in transformer.named_parameters() if p.requires_grad}


def test_swapped_blocks_hold_their_weights_whenever_they_compute():
    family, transformer = _lora_transformer()
    loss, grads = _step(family, transformer)
    log: list = []
    # released blocks hold NaNs: any forward or backward that used one would poison the loss or a gradient
    swapper = BlockSwapper(family.swappable_blocks(transformer), torch.device("cpu"), log=log, released_value=_nan_like)
    swapped_loss, swapped_grads = _step(family, transformer)
    assert torch.equal(swapped_loss, loss)
    assert grads.keys() == swapped_grads.keys() and all(torch.equal(grads[k], swapped_grads[k]) for k in grads)
    assert all(torch.isfinite(g).all() for g in swapped_grads.values())
    # forward in order (the last block stays for the backward, which recomputes it first), then the recompute
    # in reverse, prefetching the previous block; the first stays loaded for the next step
    assert log == [("load", 0), ("load", 1), ("release", 0), ("load", 0), ("release", 1)]
    again_loss, again = _step(family, transformer)  # the next step starts from what the last one kept
    assert torch.equal(again_loss, loss) and all(torch.equal(grads[k], again[k]) for k in grads)
    loaded, most = set(), 0
    for action, index in log:
        (loaded.add if action == "load" else loaded.discard)(index)
        most = max(most, len(loaded))
    assert most <= 2
    assert all(p.requires_grad and p.device.type == "cpu" for n, p in transformer.named_parameters() if "lora_" in n)
    swapper.remove()  # the poison is real: without the hooks the released blocks compute NaN
    assert _step(family, transformer)[0].isnan()


def _run(subject, directory, **overrides):
    config = tiny_config("lora", base="tiny-flux", steps=6, batch_size=1, log_every=1, gradient_checkpointing=True,
                         train_text_encoder=False, **overrides)
    prepare_run_dir(config, subject, directory)
    trainer = Trainer(METHODS["lora"], config, directory)
    trainer.run()
    losses = [json.loads(line)["loss"] for line in (directory / "events.jsonl").read_text().splitlines()
              if json.loads(line)["type"] == "step"]
    return trainer, losses, load_file(str(directory / ADAPTER))


def test_run_with_block_swapping_trains_the_same_adapter(sample_subject, tmp_path):
    _, plain_losses, plain = _run(sample_subject, tmp_path / "plain")
    trainer, losses, swapped = _run(sample_subject, tmp_path / "swap", blocks_to_swap=2)
    assert trainer.swapper is not None and len(trainer.swapper.blocks) == 2
    assert losses == plain_losses and len(losses) == 6
    assert swapped.keys() == plain.keys()
    assert all(torch.equal(swapped[k], plain[k]) for k in plain)
    assert any(v.abs().sum() > 0 for k, v in swapped.items() if ".up." in k)  # it trained (lora_B starts at zero)


def test_bad_block_swap_settings_name_the_fix():
    with pytest.raises(ConfigError, match="gradient_checkpointing=true"):
        check_block_swap(tiny_config("lora", base="tiny-flux", blocks_to_swap=1))
    with pytest.raises(ConfigError, match="base_quantization=nf4"):
        check_block_swap(tiny_config("lora", base="tiny-flux", blocks_to_swap=1, gradient_checkpointing=True,
                                     base_quantization="int8"))
    flux = load_base("tiny-flux")
    with pytest.raises(ConfigError, match="at most 2"):
        swapped_blocks(flux.family, flux.pipeline.transformer, 3)
    sd = load_base("tiny-sd")
    with pytest.raises(ConfigError, match="blocks_to_swap=0"):
        swapped_blocks(sd.family, sd.pipeline.unet, 1)


def _deeper_tiny_flux():
    """tiny-flux's shape with 2 double and 4 single blocks (tiny-flux has one of each: too few to swap some)."""
    from diffusers import FluxTransformer2DModel

    family, tiny = _lora_transformer()
    torch.manual_seed(0)
    transformer = FluxTransformer2DModel.from_config({**tiny.config, "num_layers": 2, "num_single_layers": 4})
    transformer.requires_grad_(False)
    transformer.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"],
                                       init_lora_weights="gaussian"))
    transformer.enable_gradient_checkpointing()
    transformer.train()
    return family, transformer


@pytest.mark.parametrize("kind", ["none", "nf4", "fp8"])
def test_swapped_blocks_leave_device_memory_between_their_uses(kind):
    """On an emulated device (benchmarks/device_emulation.py: live tensor bytes, swapped blocks parked in host
    tensors the count ignores), swapping the last 4 of 6 blocks lowers a training step's peak by their weights
    less at most two blocks in flight. With bitsandbytes' own 4-bit node the NF4 step saved nothing: its graph
    kept every swapped block's device copy from the forward to the backward."""
    from benchmarks.device_emulation import EmulatedSwapper, second_step_peak
    from trainers.bitsandbytes_layers import quant_state_tensors
    from trainers.quantize import quantize_module

    peaks, parked, largest = {}, 0, 0
    for swap in (0, 4):
        family, transformer = _deeper_tiny_flux()
        if kind != "none":
            quantize_module(transformer, kind, compute_dtype=torch.float32, device=torch.device("cpu"))
        swapper = None
        if swap:
            blocks = family.swappable_blocks(transformer)[-swap:]
            swapper = EmulatedSwapper(blocks, torch.device("cpu"))
            parked = swapper.swapped_bytes()
            largest = max(sum(t.numel() * t.element_size() for s in slots for t in [s.cpu, *quant_state_tensors(s.cpu_state)])
                          for slots in swapper.slots)
        hosts = list(swapper.hosts.values()) if swapper else []
        peaks[swap] = second_step_peak(transformer, partial(_step, family, transformer), hosts)
    saved = peaks[0] - peaks[4]
    assert saved >= parked - 2 * largest, (kind, peaks, parked, largest)
    assert saved <= parked
