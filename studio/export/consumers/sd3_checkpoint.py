"""ComfyUI's and Forge's rules for an SD3/3.5 single-file checkpoint, restated (names and shapes only).

ComfyUI (*Load Checkpoint*: ``comfy/model_detection.py`` ``unet_prefix_from_state_dict`` and
``detect_unet_config``, ``comfy/supported_models.py`` ``SD3``) and Forge (``backend/loader.py``, whose
``huggingface_guess`` package is a copy of that detection) read such a file so:

* **Denoiser prefix**: ``model.diffusion_model.`` when more than 5 keys start with it.
* **Recognised as an MMDiT** by ``joint_blocks.0.context_block.attn.qkv.weight``; sized from the file:
  ``depth = x_embedder.proj.weight.shape[0] // 64``, and the model built is ``depth`` blocks of ``depth``
  heads of 64 (width ``64 · depth``); input channels and patch size from ``x_embedder.proj``, output channels
  from ``final_layer.linear``, the pooled width from ``y_embedder.mlp.0``, the context embedder's widths,
  ``pos_embed_max_size = √(pos_embed rows)``, QK norms if ``…context_block.attn.ln_q.weight`` exists, and
  a second attention in each block that has ``x_block.attn2.qkv.weight``. **SD3** is the MMDiT with 16 input
  channels.
* **Text encoders** under ``text_encoders.``: CLIP-L if ``clip_l.transformer.text_model.final_layer_norm.weight``,
  CLIP-G if ``clip_g.…`` likewise, T5 if ``t5xxl.transformer.encoder.final_layer_norm.weight``; each is built
  at its fixed real size (CLIP-L 768 × 12, CLIP-G 1280 × 32, T5-XXL 4096 × 24) and loaded non-strictly:
  a missing tensor stays random, a misshaped one fails.
* **VAE** under ``first_stage_model.`` in the LDM names, built at SD's fixed widths (128 · [1, 2, 4, 4],
  2 resnets per level) with the file's latent channels.

So a file loads "all" when every tensor of the model these rules build is in it with its shape and it
holds nothing else under those prefixes; tiny models (narrower than 64 · depth) are refused, and why is
said. The expected names come from the diffusers classes built on the meta device, named by
:mod:`studio.families.sd3.checkpoint`.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from studio.families.sd3.checkpoint import (
    CLIP_G_PREFIX,
    CLIP_L_PREFIX,
    DENOISER_PREFIX,
    T5_PREFIX,
    VAE_PREFIX,
)

MARKER = "joint_blocks.0.context_block.attn.qkv.weight"
CLIP = {"vocab_size": 49408, "max_position_embeddings": 77}
CLIP_L = CLIP | {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12}
CLIP_G = CLIP | {"hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32, "num_attention_heads": 20,
                 "projection_dim": 1280}
T5_XXL = {"vocab_size": 32128, "d_model": 4096, "d_kv": 64, "d_ff": 10240, "num_layers": 24, "num_heads": 64,
          "feed_forward_proj": "gated-gelu", "is_encoder_decoder": False}
VAE_BLOCKS = (128, 256, 512, 512)
DETECT = {"CLIP-L": CLIP_L_PREFIX + "text_model.final_layer_norm.weight",
          "CLIP-G": CLIP_G_PREFIX + "text_model.final_layer_norm.weight",
          "T5-XXL": T5_PREFIX + "encoder.final_layer_norm.weight",
          "VAE": VAE_PREFIX + "decoder.conv_in.weight"}


def mmdit_config(shapes: dict[str, tuple[int, ...]]) -> dict[str, Any] | None:
    """The ``SD3Transformer2DModel`` config the rules build from a file's denoiser shapes (no prefix), or None."""
    if MARKER not in shapes:
        return None
    patch = shapes["x_embedder.proj.weight"]
    depth = patch[0] // 64
    context = shapes["context_embedder.weight"]
    return {"num_layers": depth, "num_attention_heads": depth, "attention_head_dim": 64, "in_channels": patch[1],
            "patch_size": patch[2], "out_channels": shapes["final_layer.linear.weight"][0] // (patch[2] * patch[2]),
            "pooled_projection_dim": shapes["y_embedder.mlp.0.weight"][1], "joint_attention_dim": context[1],
            "caption_projection_dim": context[0], "pos_embed_max_size": round(math.sqrt(shapes["pos_embed"][1])),
            "qk_norm": "rms_norm" if "joint_blocks.0.context_block.attn.ln_q.weight" in shapes else None,
            "dual_attention_layers": tuple(sorted(int(k.split(".")[1]) for k in shapes
                                                  if k.startswith("joint_blocks.") and k.endswith(".x_block.attn2.qkv.weight")))}


def _built(component: str, config: dict[str, Any], latent_channels: int = 16) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the model the rules build for ``component`` (in the file's names, no prefix)."""
    from diffusers import AutoencoderKL, SD3Transformer2DModel
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTextModelWithProjection,
        T5Config,
        T5EncoderModel,
    )

    from studio.export.ldm_keys import vae_to_ldm
    from studio.families.base import clip_rooted_path
    from studio.families.sd3.checkpoint import mmdit_state

    text = {"CLIP-L": lambda: CLIPTextModel(CLIPTextConfig(**CLIP_L)),
            "CLIP-G": lambda: CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_G)),
            "T5-XXL": lambda: T5EncoderModel(T5Config(**T5_XXL))}
    with torch.device("meta"):
        if component == "MMDiT":
            model = SD3Transformer2DModel(**config)
            return {k: tuple(v.shape) for k, v in mmdit_state(model.state_dict(), model.config).items()}
        if component == "VAE":
            vae = AutoencoderKL(block_out_channels=VAE_BLOCKS, latent_channels=latent_channels, layers_per_block=2,
                                down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
            return {k.removeprefix(VAE_PREFIX): tuple(v.shape) for k, v in vae_to_ldm(vae.state_dict(), vae.config).items()}
        state = text[component]().state_dict()
    if component == "T5-XXL":  # ComfyUI's T5 reads the embedding from shared.weight; Forge ignores this key by name
        return {k: tuple(v.shape) for k, v in state.items()}
    return {clip_rooted_path(k): tuple(v.shape) for k, v in state.items() if not k.endswith("position_ids")}


def _compare(name: str, have: dict[str, tuple[int, ...]], want: dict[str, tuple[int, ...]]) -> str | None:
    missing = sorted(set(want) - set(have))
    extra = sorted(set(have) - set(want))
    wrong = sorted(k for k in set(want) & set(have) if tuple(have[k]) != want[k])
    if not (missing or extra or wrong):
        return None
    return (f"{name}: {len(wrong)} tensors of another shape, {len(missing)} missing, {len(extra)} unexpected "
            f"(e.g. {(wrong + missing + extra)[:2]})")


def sd3_checkpoint_verdict(shapes: dict[str, tuple[int, ...]], consumer: str = "ComfyUI") -> dict[str, Any]:
    """The verdict of ComfyUI's (or Forge's: the same detection) rules on an SD3 single file's names and shapes."""
    prefixed = sum(k.startswith(DENOISER_PREFIX) for k in shapes)
    prefix = DENOISER_PREFIX if prefixed > 5 else "model."
    denoiser = {k[len(prefix):]: tuple(v) for k, v in shapes.items() if k.startswith(prefix)}
    config = mmdit_config(denoiser)
    if config is None:
        return {"proof": "key rules", "loads": "none", "why": f"no {prefix}{MARKER}: not recognised as an MMDiT"}
    report: dict[str, Any] = {"proof": "key rules", "tensors": len(shapes), "config": config}
    if config["in_channels"] != 16 or config["num_layers"] < 1:
        report["loads"] = "refused"
        report["why"] = (f"{consumer} builds an MMDiT 64 · depth wide: x_embedder's {denoiser['x_embedder.proj.weight'][0]} "
                         f"rows give depth {config['num_layers']}; SD3 also needs 16 input channels ({config['in_channels']})")
        return report
    problems = [_compare("MMDiT", denoiser, _built("MMDiT", config))]
    present = [name for name, key in DETECT.items() if key in shapes]
    for name, component_prefix in (("CLIP-L", CLIP_L_PREFIX), ("CLIP-G", CLIP_G_PREFIX), ("T5-XXL", T5_PREFIX),
                                   ("VAE", VAE_PREFIX)):
        have = {k[len(component_prefix):]: tuple(v) for k, v in shapes.items() if k.startswith(component_prefix)}
        if name not in present:
            problems.append(f"{name}: not detected ({DETECT[name]} missing)" if have or name != "T5-XXL" else None)
            continue
        latent = shapes[DETECT["VAE"]][1] if name == "VAE" else 16
        problems.append(_compare(name, have, _built(name, config, latent)))
    unclaimed = [k for k in shapes if not k.startswith((prefix, CLIP_L_PREFIX, CLIP_G_PREFIX, T5_PREFIX, VAE_PREFIX))]
    if unclaimed:
        problems.append(f"{len(unclaimed)} tensors under no prefix the rules read (e.g. {unclaimed[:2]})")
    problems = [p for p in problems if p]
    report["components"] = present
    report["loads"] = "partial" if problems else "all"
    if problems:
        report["why"] = "; ".join(problems)
    return report


__all__ = ["mmdit_config", "sd3_checkpoint_verdict"]
