"""SDXL's names in the files other tools read: kohya/webui LoRA and the single-file checkpoint.

Facts this module encodes (each checked against diffusers' own readers in tests/test_sdxl_export.py):

* The UNet uses the original Stability "SGM" block names, derived from the UNet config like SD1.x's
  (``studio.export.ldm_keys``): ``down_blocks.1.attentions.0`` -> ``input_blocks.4.1`` for SDXL's
  two layers per block, ``mid_block.attentions.0`` -> ``middle_block.1``, ``up_blocks.b.*.l`` ->
  ``output_blocks.(3b+l).*``; SDXL's added-conditioning MLP ``add_embedding.linear_1/2`` is
  ``label_emb.0.0/0.2``.
* kohya LoRA: ``lora_unet_<SGM name with _>``, ``lora_te1_<CLIP-L name>``, ``lora_te2_<CLIP-G name>``;
  text encoders are named from transformers' ``text_model.`` root (transformers 5 no longer has
  that root on ``CLIPTextModel``, so it is added back), except CLIP-G's ``text_projection``, which sits
  beside that root (``lora_te2_text_projection``; only an SVD extraction of a full fine-tune adapts it).
* Single file: ``model.diffusion_model.*`` (SGM), ``first_stage_model.*`` (as SD1.x),
  ``conditioner.embedders.0.transformer.text_model.*`` (CLIP-L in transformers' layout) and
  ``conditioner.embedders.1.model.*`` (CLIP-G in OpenCLIP's layout: fused ``attn.in_proj_*``,
  ``mlp.c_fc``/``c_proj``, ``ln_1``/``ln_2``, ``positional_embedding``, transposed ``text_projection``).
"""

from __future__ import annotations

from typing import Any

import torch

from studio.errors import StudioError
from studio.export.ldm_keys import UNET_PREFIX, clip_to_ldm, unet_key, vae_to_ldm

CLIP_L_PREFIX = "conditioner.embedders.0.transformer."
CLIP_G_PREFIX = "conditioner.embedders.1.model."
_ADDED_EMBEDDING = {"add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2"}
_OPENCLIP_LAYER = {
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "self_attn.out_proj": "attn.out_proj",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
}


def sgm_unet_name(path: str, config: Any) -> str:
    """A diffusers UNet parameter or module path -> its SGM name (without ``model.diffusion_model.``)."""
    for old, new in _ADDED_EMBEDDING.items():
        if path == old or path.startswith(old + "."):
            return new + path[len(old) :]
    per = int(config["layers_per_block"]) + 1
    up_attention = {i for i, kind in enumerate(config["up_block_types"]) if "CrossAttn" in kind}
    return unet_key(path, per, up_attention)


def kohya_lora_name(component: str, path: str, unet_config: Any) -> str:
    """``lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q`` / ``lora_te2_text_model_…``
    (the SDXL family's names: :meth:`studio.families.sdxl.StableDiffusionXLFamily.kohya_lora_name`)."""
    from studio.families.sdxl import StableDiffusionXLFamily

    return StableDiffusionXLFamily().kohya_lora_name(component, path, unet_config)


def clip_g_to_openclip(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CLIPTextModelWithProjection state dict -> ``conditioner.embedders.1.model.*`` (OpenCLIP layout)."""
    out: dict[str, torch.Tensor] = {}
    fused: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        name = key.removeprefix("text_model.")
        if name.endswith("position_ids"):
            continue
        if name == "embeddings.token_embedding.weight":
            out["token_embedding.weight"] = value
        elif name == "embeddings.position_embedding.weight":
            out["positional_embedding"] = value
        elif name.startswith("final_layer_norm."):
            out["ln_final." + name.rpartition(".")[2]] = value
        elif name == "text_projection.weight":
            out["text_projection"] = value.T.contiguous()
        elif name.startswith("encoder.layers."):
            index, _, rest = name.removeprefix("encoder.layers.").partition(".")
            block = f"transformer.resblocks.{index}."
            if rest.startswith("self_attn.") and rest.split(".")[1] in ("q_proj", "k_proj", "v_proj"):
                _, projection, leaf = rest.split(".")
                fused.setdefault(f"{block}attn.in_proj_{leaf}", {})[projection] = value
                continue
            head = next((h for h in _OPENCLIP_LAYER if rest.startswith(h + ".")), None)
            if head is None:
                raise StudioError(f"Single-file SDXL export does not know where text_encoder_2 parameter '{key}' goes.")
            out[block + _OPENCLIP_LAYER[head] + rest[len(head) :]] = value
        else:
            raise StudioError(f"Single-file SDXL export does not know where text_encoder_2 parameter '{key}' goes.")
    for name, parts in fused.items():
        out[name] = torch.cat([parts["q_proj"], parts["k_proj"], parts["v_proj"]])
    return {CLIP_G_PREFIX + key: value for key, value in out.items()}


def sdxl_single_file_state(pipe) -> dict[str, torch.Tensor]:
    """Every weight of an SDXL pipeline in the original single-file layout (what A1111/ComfyUI load)."""
    config = pipe.unet.config
    state = {UNET_PREFIX + sgm_unet_name(key, config): value for key, value in pipe.unet.state_dict().items()}
    state |= vae_to_ldm(pipe.vae.state_dict(), pipe.vae.config)
    clip_l = clip_to_ldm(pipe.text_encoder.state_dict())
    state |= {CLIP_L_PREFIX + key.removeprefix("cond_stage_model.transformer."): value for key, value in clip_l.items()}
    state |= clip_g_to_openclip(pipe.text_encoder_2.state_dict())
    return {key: value.detach().contiguous() for key, value in state.items()}
