"""SD3/3.5 as one file in Stability's original layout: what the official all-in-one checkpoints hold
(``sd3_medium_incl_clips_t5xxlfp16.safetensors``) and what ComfyUI's *Load Checkpoint* and diffusers'
``StableDiffusion3Pipeline.from_single_file`` read.

* ``model.diffusion_model.`` + the MMDiT's names (:mod:`studio.families.sd3.names`' module names with the
  ``weight``/``bias`` leaf): query, key and value fused into ``qkv`` (rows q, k, v); the QK RMS norms as
  ``attn.ln_q`` / ``ln_k``; the patch embedding ``x_embedder.proj`` and the position table ``pos_embed``
  (no leaf); the last block's ``context_block.adaLN_modulation.1`` and ``final_layer.adaLN_modulation.1``
  hold (shift, scale) where diffusers holds (scale, shift).
* ``text_encoders.clip_l.transformer.`` / ``text_encoders.clip_g.transformer.`` + transformers' CLIP names with
  the ``text_model.`` root (CLIP-G's ``text_projection.weight`` beside it). CLIP-L has no projection there:
  SD3 pools CLIP-L unprojected (SAI's reference code and ComfyUI; diffusers' loader puts an identity in),
  so a CLIP-L whose ``text_projection`` is not the identity has no place in this layout.
* ``text_encoders.t5xxl.transformer.`` + transformers' ``T5EncoderModel`` names; the encoder's embedding
  (``encoder.embed_tokens.weight``, tied to ``shared.weight``) is written too: diffusers' loader does not tie
  them again and leaves it empty otherwise; ComfyUI and Forge skip it. Left out when the pipeline has no T5.
* ``first_stage_model.`` + the VAE in the original LDM names (:mod:`studio.export.ldm_keys`).
"""

from __future__ import annotations

from typing import Any

import torch

from studio.errors import StudioError
from studio.families.base import clip_rooted_path
from studio.families.fused_lora import swap_halves
from studio.families.sd3.names import place

DENOISER_PREFIX = "model.diffusion_model."
CLIP_L_PREFIX = "text_encoders.clip_l.transformer."
CLIP_G_PREFIX = "text_encoders.clip_g.transformer."
T5_PREFIX = "text_encoders.t5xxl.transformer."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIXES = {"text_encoder": CLIP_L_PREFIX, "text_encoder_2": CLIP_G_PREFIX, "text_encoder_3": T5_PREFIX}
# diffusers name -> original name, for tensors outside the Linear modules names.py places
_PLAIN = {"pos_embed.pos_embed": "pos_embed", "pos_embed.proj.weight": "x_embedder.proj.weight",
          "pos_embed.proj.bias": "x_embedder.proj.bias"}
_NORMS = {"attn.norm_q": "x_block.attn.ln_q", "attn.norm_k": "x_block.attn.ln_k",
          "attn.norm_added_q": "context_block.attn.ln_q", "attn.norm_added_k": "context_block.attn.ln_k",
          "attn2.norm_q": "x_block.attn2.ln_q", "attn2.norm_k": "x_block.attn2.ln_k"}
_BLOCK = "transformer_blocks."
_CLIP_L_PROJECTION = "text_projection.weight"



def _norm_name(module: str) -> str | None:
    if not module.startswith(_BLOCK):
        return None
    index, _, rest = module[len(_BLOCK):].partition(".")
    return f"joint_blocks.{index}.{_NORMS[rest]}" if rest in _NORMS else None


def mmdit_state(state: dict[str, torch.Tensor], config: Any) -> dict[str, torch.Tensor]:
    """A diffusers ``SD3Transformer2DModel`` state dict in Stability's MMDiT names (no prefix)."""
    out: dict[str, torch.Tensor] = {}
    fused: dict[tuple[str, str], tuple[tuple[str, ...], bool, dict[int, torch.Tensor]]] = {}
    for key, value in state.items():
        if key in _PLAIN:
            out[_PLAIN[key]] = value
            continue
        module, _, leaf = key.rpartition(".")
        norm = _norm_name(module)
        if norm is not None:
            out[f"{norm}.{leaf}"] = value
            continue
        name, members, slot, swapped = place(module, config)
        fused.setdefault((name, leaf), (members, swapped, {}))[2][slot] = value
    for (name, leaf), (members, swapped, parts) in fused.items():
        if len(parts) != len(members):
            raise StudioError(f"{name}.{leaf}: the SD3 transformer lacks some of {members}.")
        value = torch.cat([parts[i] for i in range(len(members))])
        out[f"{name}.{leaf}"] = (swap_halves(value) if swapped else value).contiguous()
    return out


def diffusers_mmdit_state(original: dict[str, torch.Tensor], config: Any) -> dict[str, torch.Tensor]:
    """Stability's MMDiT names back to diffusers' (the inverse of :func:`mmdit_state`): fused weights split
    in equal thirds, swapped modulations swapped back. Every tensor must find a place."""
    reverse_plain = {v: k for k, v in _PLAIN.items()}
    width = int(config.num_attention_heads) * int(config.attention_head_dim)
    out: dict[str, torch.Tensor] = {}
    left = dict(original)
    for key in list(left):
        if key in reverse_plain:
            out[reverse_plain[key]] = left.pop(key)
    for index in range(int(config.num_layers)):
        for diffusers_norm, norm in _NORMS.items():
            for leaf in ("weight", "bias"):
                value = left.pop(f"joint_blocks.{index}.{norm}.{leaf}", None)
                if value is not None:
                    out[f"{_BLOCK}{index}.{diffusers_norm}.{leaf}"] = value
    modules = [f"{_BLOCK}{i}.{m}" for i in range(int(config.num_layers)) for m in _block_members()]
    modules += ["context_embedder", "time_text_embed.timestep_embedder.linear_1", "time_text_embed.timestep_embedder.linear_2",
                "time_text_embed.text_embedder.linear_1", "time_text_embed.text_embedder.linear_2", "proj_out",
                "norm_out.linear"]
    for module in modules:
        name, members, slot, swapped = place(module, config)
        for leaf in ("weight", "bias"):
            value = left.get(f"{name}.{leaf}")
            if value is None:
                continue
            if swapped:
                value = swap_halves(value)
            part = value if len(members) == 1 else value[slot * width: (slot + 1) * width]
            out[f"{module}.{leaf}"] = part.contiguous()
    used = {f"{place(m, config)[0]}.{leaf}" for m in modules for leaf in ("weight", "bias")}
    unplaced = sorted(set(left) - used)
    if unplaced:
        raise StudioError(f"{len(unplaced)} tensors of the SD3 file have no place in diffusers' SD3 (e.g. {unplaced[:3]}).")
    return out


def _block_members() -> list[str]:
    from studio.families.sd3.names import GROUPS

    return [member for members in GROUPS.values() for member in members]


def single_file_state(pipe) -> dict[str, torch.Tensor]:
    """Every weight of an SD3 pipeline in the original all-in-one layout (see the module docstring)."""
    from studio.export.ldm_keys import vae_to_ldm

    def cpu(module: torch.nn.Module) -> dict[str, torch.Tensor]:  # meta tensors stay (names and shapes only)
        return {k: v.detach() if v.is_meta else v.detach().cpu().contiguous() for k, v in module.state_dict().items()}

    clip_l = cpu(pipe.text_encoder)
    projection = clip_l.pop(_CLIP_L_PROJECTION, None)
    if projection is not None and not projection.is_meta and not torch.equal(projection, torch.eye(*projection.shape,
                                                                                                  dtype=projection.dtype)):
        raise StudioError("CLIP-L's text_projection is not the identity: SD3's single-file layout has no place for it "
                          "(SD3 pools CLIP-L unprojected; ComfyUI and diffusers' single-file loader assume the identity). "
                          "Export --format diffusers instead.")
    transformer = pipe.transformer
    state = {DENOISER_PREFIX + k: v for k, v in mmdit_state(cpu(transformer), transformer.config).items()}
    state |= {CLIP_L_PREFIX + clip_rooted_path(k): v for k, v in clip_l.items()}
    state |= {CLIP_G_PREFIX + clip_rooted_path(k): v for k, v in cpu(pipe.text_encoder_2).items()}
    t5 = getattr(pipe, "text_encoder_3", None)
    if t5 is not None:
        t5_state = cpu(t5)
        if "encoder.embed_tokens.weight" in t5_state:  # tied to shared.weight: a copy (safetensors stores no aliases)
            t5_state["encoder.embed_tokens.weight"] = t5_state["encoder.embed_tokens.weight"].clone()
        state |= {T5_PREFIX + k: v for k, v in t5_state.items()}
    state |= vae_to_ldm(cpu(pipe.vae), pipe.vae.config)  # first_stage_model.…
    return state


__all__ = ["CLIP_G_PREFIX", "CLIP_L_PREFIX", "DENOISER_PREFIX", "T5_PREFIX", "VAE_PREFIX", "diffusers_mmdit_state",
           "mmdit_state", "single_file_state"]
