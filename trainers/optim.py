"""The optimizer and learning-rate schedule a configuration asks for."""

from __future__ import annotations

import torch

from studio.errors import ConfigError
from studio.methods import method_spec
from studio.settings import TrainConfig


def adamw(groups: list[dict], lr: float) -> torch.optim.Optimizer:
    """torch's fused AdamW where this torch supports it for these tensors (one kernel for all of them:
    on LoRA's many small tensors 5x less CPU time than the default per-tensor loop), else the default."""
    try:
        return torch.optim.AdamW(groups, lr=lr, fused=True)
    except (RuntimeError, ValueError):
        return torch.optim.AdamW(groups, lr=lr)


def build_optimizer(config: TrainConfig, groups: list[dict]) -> torch.optim.Optimizer:
    """AdamW, bitsandbytes' 8-bit AdamW, Prodigy or schedule-free AdamW over ``groups``; textual inversion gets no weight decay
    (decay would pull the new embedding towards zero, away from the vocabulary's scale)."""
    if not groups:
        raise ConfigError(f"method={config.method} left nothing to train; check lora_target_modules.")
    decay = config.weight_decay if method_spec(config.method).weight_decay else 0.0
    for group in groups:
        group.setdefault("weight_decay", decay)
    if config.optimizer == "adamw8bit":
        bnb = _package("bitsandbytes", "adamw8bit")
        return bnb.optim.AdamW8bit(groups, lr=config.learning_rate)
    if config.optimizer == "prodigy":
        prodigyopt = _package("prodigyopt", "prodigy")
        # Bias correction and (with a warm-up) the safeguard are what Prodigy's authors advise for diffusion
        # fine-tunes; its step size is learning_rate x its own estimate d, so learning_rate is usually 1.0.
        return prodigyopt.Prodigy(groups, lr=config.learning_rate, d_coef=config.prodigy_d_coef,
                                  use_bias_correction=True, safeguard_warmup=config.lr_warmup_steps > 0)
    if config.optimizer == "schedulefree_adamw":
        schedulefree = _package("schedulefree", "schedulefree_adamw")
        if config.lr_scheduler not in SCHEDULE_FREE_SCHEDULES:
            raise ConfigError(f"optimizer=schedulefree_adamw replaces the learning-rate schedule; lr_scheduler={config.lr_scheduler} "
                              "would decay it twice. Use lr_scheduler=constant (lr_warmup_steps is its warm-up).")
        # The warm-up is declared once (lr_warmup_steps); schedule-free applies it itself.
        return schedulefree.AdamWScheduleFree(groups, lr=config.learning_rate, warmup_steps=config.lr_warmup_steps)
    return adamw(groups, config.learning_rate)


SCHEDULE_FREE_SCHEDULES = ("constant", "constant_with_warmup")


def _package(name: str, optimizer: str):
    """The optimizer's package, or an error naming it and how to install it."""
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError as error:
        raise ConfigError(f"optimizer={optimizer} needs the {name} package: pip install {name}, or use optimizer=adamw.") from error


def _inner(optimizer):
    return getattr(optimizer, "optimizer", optimizer)  # under Accelerate's wrapper


def has_weight_modes(optimizer) -> bool:
    """Schedule-free optimizers train one sequence of weights and evaluate another (their average)."""
    inner = _inner(optimizer)
    return callable(getattr(inner, "eval", None)) and callable(getattr(inner, "train", None))


def set_weight_mode(optimizer, mode: str) -> None:
    """``train``: the weights the optimizer steps; ``eval``: the weights to sample, score and save."""
    if has_weight_modes(optimizer):
        getattr(_inner(optimizer), mode)()


def build_lr_scheduler(config: TrainConfig, optimizer: torch.optim.Optimizer):
    from diffusers.optimization import get_scheduler

    if has_weight_modes(optimizer):  # schedule-free warms up itself; the schedule stays flat
        return get_scheduler("constant", optimizer)
    return get_scheduler(config.lr_scheduler, optimizer, num_warmup_steps=config.lr_warmup_steps, num_training_steps=config.steps)
