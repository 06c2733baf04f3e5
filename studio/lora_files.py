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
    for name in ("unet", *family.text_encoder_names):
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
    kwargs: dict[str, Any] = {"unet_lora_layers": states.get("unet")}
    metadata: dict[str, Any] = {"unet_lora_adapter_metadata": unet_metadata}
    for name in family.text_encoder_names:
        if name in states:
            kwargs[f"{name}_lora_layers"] = states[name]
            metadata[f"{name}_lora_adapter_metadata"] = text_encoder_metadata
    import inspect

    accepted = inspect.signature(pipeline_class.save_lora_weights).parameters
    kwargs |= {k: v for k, v in metadata.items() if k in accepted and v is not None}
    pipeline_class.save_lora_weights(str(directory), safe_serialization=True, **kwargs)
    return [LORA_WEIGHTS_FILE]
