"""Write the diffusers LoRA file from peft-adapted components (used by the trainer and export)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

LORA_WEIGHTS_FILE = "pytorch_lora_weights.safetensors"


def lora_state_dicts(components: dict[str, Any], family) -> dict[str, dict]:
    """diffusers-style LoRA state dicts per component that carries a peft adapter."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    states = {}
    for name in (family.denoiser_name, *family.text_encoder_names):
        module = components.get(name)
        if module is None or not getattr(module, "peft_config", None):
            continue
        states[name] = convert_state_dict_to_diffusers(get_peft_model_state_dict(module))
    return states


def save_diffusers_lora(
    components: dict[str, Any],
    family,
    directory: Path,
    *,
    unet_metadata: dict | None = None,
    text_encoder_metadata: dict | None = None,
) -> list[str]:
    """Save ``pytorch_lora_weights.safetensors`` via the pipeline class's own ``save_lora_weights``."""
    pipeline_class = family.pipeline_classes()[0]
    states = lora_state_dicts(components, family)
    metadata = {name: unet_metadata if name == family.denoiser_name else text_encoder_metadata for name in states}
    kwargs = family.save_lora_kwargs(states, metadata)
    import inspect

    accepted = inspect.signature(pipeline_class.save_lora_weights).parameters
    refused = [k for k in kwargs if k.endswith("_lora_layers") and k not in accepted]
    if refused:
        from studio.errors import StudioError

        raise StudioError(f"{pipeline_class.__name__} LoRA files have no place for {', '.join(refused)}.")
    kwargs = {k: v for k, v in kwargs.items() if k in accepted}
    pipeline_class.save_lora_weights(str(directory), safe_serialization=True, **kwargs)
    return [LORA_WEIGHTS_FILE]
