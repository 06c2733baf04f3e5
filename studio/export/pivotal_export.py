"""Export a pivotal-tuning run: its LoRA and its token's embedding, together, in the layouts each consumer loads.

The LoRA was trained against the new token, so a file pair is only right together; each pair is proven by
loading both into a fresh diffusers pipeline and comparing the image with the run's own.

* ``diffusers``: ``pytorch_lora_weights.safetensors`` + ``learned_embeds.safetensors`` ({token: rows}),
  for ``load_lora_weights`` + ``load_textual_inversion`` (and ``studio generate --adapter DIR``).
* ``kohya``: the kohya/webui LoRA file + an A1111 embedding file (``emb_params``) named for the token.
  A1111 and Forge read the pair from ``models/Lora`` and ``embeddings/``; ComfyUI from ``models/loras`` and
  ``models/embeddings`` (``embedding:NAME`` in the prompt). The bundled layout (``bundle_emb.NAME.*`` keys
  inside the LoRA file) is read with the LoRA by A1111's LoRA extension (webui PR #13568) but not by
  ComfyUI's LoRA loader (ComfyUI issue #3659, open; its embedding reader takes bundle keys only from a file
  in ``models/embeddings``), so the pair is written as two files, which every one of them loads.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from studio.atomic import save_safetensors
from studio.errors import StudioError
from studio.export.context import ExportContext, replace_word
from studio.export.lora_export import ADAPTER, CONSUMERS, _consumers, _diffusers_verdict, kohya_info
from studio.export.lora_kohya import save_kohya_lora
from studio.export.lora_weights import (
    LORA_WEIGHTS_FILE,
    LoraWeights,
    read_diffusers_lora,
    save_diffusers_lora_weights,
)
from studio.export.ti import A1111_KEY, DIFFUSERS_FILE, a1111_name, read_learned_embeds
from studio.export.verify import (
    IMAGE_TOLERANCE,
    check_embeddings_loaded,
    check_image,
    check_lora_loaded,
    image_difference,
    render,
)
from studio.sampling import GUIDANCE, STEPS


def export_pivotal_run(ctx: ExportContext, formats: list[str]) -> None:
    artifact = ctx.run.directory / ctx.result["artifact"]
    if not (artifact / DIFFUSERS_FILE).is_file():
        raise StudioError(f"{artifact} holds no {DIFFUSERS_FILE}: pivotal export is written for one-text-encoder "
                          "models (SD1.x/2.x) so far.")
    weights = read_diffusers_lora(artifact / LORA_WEIGHTS_FILE)
    token, rows = read_learned_embeds(artifact / DIFFUSERS_FILE)
    ctx.extra["lora_modules"] = len(weights.modules)
    name = a1111_name(token)
    if "diffusers" in formats:
        lora = save_diffusers_lora_weights(weights, ctx.out, ctx.family)
        embedding = ctx.out / DIFFUSERS_FILE
        shutil.copyfile(artifact / DIFFUSERS_FILE, embedding)
        _verify_pair(ctx, lora, embedding, weights, rows, token, "diffusers")
    if "kohya" in formats:
        lora = save_kohya_lora(weights, ctx.out / f"{ctx.stem}.safetensors", ctx.family, kohya_info(ctx) | {"trigger_phrase": name},
                               unet_config=ctx.unet_config)
        embedding = save_safetensors({A1111_KEY: rows.float()}, ctx.out / f"{name}.safetensors",
                                     metadata={"studio.token": token, "studio.base_model": ctx.base})
        _verify_pair(ctx, lora, embedding, weights, rows, name, "kohya")
    ctx.usage += _usage(ctx, formats, token, name)


def _verify_pair(ctx: ExportContext, lora: Path, embedding: Path, weights: LoraWeights, rows: torch.Tensor,
                 token: str, fmt: str) -> None:
    """Both files into a fresh pipeline (the embedding under ``token``, as a user types it): every LoRA layer and
    embedding row as trained, and the run's image."""
    what = f"{fmt} LoRA {lora.name} + embedding {embedding.name}"
    pipe = ctx.fresh_base()
    pipe.load_lora_weights(str(lora), adapter_name=ADAPTER, use_safetensors=True)
    layers = check_lora_loaded(pipe, ADAPTER, weights, what)
    pipe.load_textual_inversion(str(embedding), token=token)
    tokens = [token] + [f"{token}_{i}" for i in range(1, rows.shape[0])]
    vectors = check_embeddings_loaded(pipe, tokens, rows, what)
    prompt = replace_word(ctx.spec.prompt, ctx.run.token, token)
    difference = image_difference(render(pipe, ctx.spec, prompt=prompt), ctx.reference_image())
    check_image(what, difference)
    consumers = _consumers(ctx, lora, weights, fmt, strict=True, norms=None)
    consumers["diffusers"] = _diffusers_verdict(layers)
    loaded_by = [n for n in CONSUMERS[fmt] if consumers.get(n, {}).get("loads") == "all"]
    check = (f"{layers} LoRA layers (load_lora_weights) and {vectors} embedding vectors (load_textual_inversion) loaded "
             f"together by diffusers; max pixel diff {difference:.1e}")
    ctx.record(lora, f"LoRA ({fmt}, pivotal)", ", ".join(loaded_by), check, layers=layers, max_abs_diff=difference,
               tolerance=IMAGE_TOLERANCE, layout=fmt, consumers=consumers, loaded_with=embedding.name)
    embedding_consumers = "A1111, Forge, ComfyUI, diffusers" if fmt == "kohya" else "diffusers"
    ctx.record(embedding, f"embedding ({'a1111' if fmt == 'kohya' else 'diffusers'}, pivotal)", embedding_consumers, check,
               vectors=vectors, max_abs_diff=difference, tolerance=IMAGE_TOLERANCE, loaded_with=lora.name)


def _usage(ctx: ExportContext, formats: list[str], token: str, name: str) -> list[str]:
    pipeline_class = ctx.family.pipeline_classes()[0].__name__
    snippets = []
    if "diffusers" in formats:
        snippets.append(
            f"**diffusers** (the LoRA and its token together):\n\n```python\nfrom diffusers import {pipeline_class}\n\n"
            f"pipe = {pipeline_class}.from_pretrained(\"{ctx.base}\")\n"
            f"pipe.load_lora_weights(\"DIR\", weight_name=\"{LORA_WEIGHTS_FILE}\")\n"
            f"pipe.load_textual_inversion(\"DIR/{DIFFUSERS_FILE}\")\n"
            f"image = pipe(\"{ctx.spec.prompt}\", num_inference_steps={STEPS}, guidance_scale={GUIDANCE}).images[0]\n```"
        )
    if "kohya" in formats:
        typed = replace_word(ctx.spec.prompt, ctx.run.token, name)
        snippets.append(
            f"**AUTOMATIC1111 / Forge**: copy `{ctx.stem}.safetensors` into `models/Lora/` and `{name}.safetensors` into "
            f"`embeddings/`, then prompt `<lora:{ctx.stem}:1> {typed}`. **ComfyUI**: `{ctx.stem}.safetensors` into "
            f"`models/loras/` (LoraLoader), `{name}.safetensors` into `models/embeddings/`, and write `embedding:{name}` "
            f"where the token goes (`{replace_word(ctx.spec.prompt, ctx.run.token, 'embedding:' + name)}`). "
            "Use both files: the LoRA was trained with this token."
        )
    return snippets
