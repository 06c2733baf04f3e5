"""Export a pivotal-tuning run: its LoRA and its token's embedding, together, in the layouts each consumer loads.

The LoRA was trained against the new token, so a file pair is only right together; each pair is proven by
loading both into a fresh diffusers pipeline and comparing the image with the run's own.

* ``diffusers``: ``pytorch_lora_weights.safetensors`` + ``learned_embeds.safetensors`` ({token: rows}),
  for ``load_lora_weights`` + ``load_textual_inversion`` (and ``studio generate --adapter DIR``). SDXL has
  one embedding file per text encoder (``learned_embeds_text_encoder[_2].safetensors``), each loaded with
  ``load_textual_inversion(..., text_encoder=pipe.text_encoder[_2], tokenizer=pipe.tokenizer[_2])``.
* ``kohya``: the kohya/webui LoRA file + an A1111 embedding file named for the token: ``emb_params``, or
  SDXL's ``clip_l`` / ``clip_g`` pair in one file (what A1111, Forge and ComfyUI read for SDXL).
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
from studio.export.context import ExportContext, replace_word
from studio.export.lora_export import ADAPTER, CONSUMERS, _consumers, _diffusers_verdict, kohya_info
from studio.export.lora_kohya import save_kohya_lora
from studio.export.lora_weights import (
    LORA_WEIGHTS_FILE,
    LoraWeights,
    read_diffusers_lora,
    save_diffusers_lora_weights,
)
from studio.export.ti import a1111_name
from studio.export.ti_export import (
    a1111_embedding_sources,
    a1111_embedding_state,
    load_embedding_lines,
    run_embeddings,
)
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
    weights = read_diffusers_lora(artifact / LORA_WEIGHTS_FILE)
    token, files, rows = run_embeddings(ctx)  # one file, or one per text encoder (SDXL)
    ctx.extra["lora_modules"] = len(weights.modules)
    name = a1111_name(token)
    if "diffusers" in formats:
        lora = save_diffusers_lora_weights(weights, ctx.out, ctx.family)
        embeddings = {encoder: ctx.out / source.name for encoder, source in files.items()}
        for encoder, source in files.items():
            shutil.copyfile(source, embeddings[encoder])
        _verify_pair(ctx, lora, list(embeddings.values()), {e: str(p) for e, p in embeddings.items()}, weights, rows,
                     token, "diffusers")
    if "kohya" in formats:
        lora = save_kohya_lora(weights, ctx.out / f"{ctx.stem}.safetensors", ctx.family, kohya_info(ctx) | {"trigger_phrase": name},
                               unet_config=ctx.unet_config)
        state = a1111_embedding_state(rows)
        embedding = save_safetensors(state, ctx.out / f"{name}.safetensors",
                                     metadata={"studio.token": token, "studio.base_model": ctx.base})
        sources = a1111_embedding_sources(state, embedding)
        _verify_pair(ctx, lora, [embedding], sources, weights, rows, name, "kohya")
    ctx.usage += _usage(ctx, formats, token, name, {encoder: path.name for encoder, path in files.items()})


def _verify_pair(ctx: ExportContext, lora: Path, embeddings: list[Path], sources: dict[str, str | torch.Tensor],
                 weights: LoraWeights, rows: dict[str, torch.Tensor], token: str, fmt: str) -> None:
    """The LoRA and the embedding (each text encoder's rows) into a fresh pipeline, the embedding under ``token``
    as a user types it: every LoRA layer and embedding row as trained, and the run's image."""
    what = f"{fmt} LoRA {lora.name} + embedding {', '.join(p.name for p in embeddings)}"
    pipe = ctx.fresh_base()
    pipe.load_lora_weights(str(lora), adapter_name=ADAPTER, use_safetensors=True)
    layers = check_lora_loaded(pipe, ADAPTER, weights, what)
    tokens = [token] + [f"{token}_{i}" for i in range(1, next(iter(rows.values())).shape[0])]
    vectors = 0
    for encoder, source in sources.items():
        pipe.load_textual_inversion(source, token=token, text_encoder=getattr(pipe, encoder),
                                    tokenizer=getattr(pipe, encoder.replace("text_encoder", "tokenizer")))
        vectors += check_embeddings_loaded(pipe, tokens, rows[encoder], what, encoder=encoder)
    prompt = replace_word(ctx.spec.prompt, ctx.run.token, token)
    difference = image_difference(render(pipe, ctx.spec, prompt=prompt), ctx.reference_image())
    check_image(what, difference)
    consumers = _consumers(ctx, lora, weights, fmt, strict=True, norms=None)
    consumers["diffusers"] = _diffusers_verdict(layers)
    loaded_by = [n for n in CONSUMERS[fmt] if consumers.get(n, {}).get("loads") == "all"]
    check = (f"{layers} LoRA layers (load_lora_weights) and {vectors} embedding vectors in {len(sources)} text "
             f"encoder(s) (load_textual_inversion) loaded together by diffusers; max pixel diff {difference:.1e}")
    ctx.record(lora, f"LoRA ({fmt}, pivotal)", ", ".join(loaded_by), check, layers=layers, max_abs_diff=difference,
               tolerance=IMAGE_TOLERANCE, layout=fmt, consumers=consumers,
               loaded_with=", ".join(p.name for p in embeddings))
    embedding_consumers = "A1111, Forge, ComfyUI, diffusers" if fmt == "kohya" else "diffusers"
    for embedding in embeddings:
        ctx.record(embedding, f"embedding ({'a1111' if fmt == 'kohya' else 'diffusers'}, pivotal)", embedding_consumers,
                   check, vectors=vectors, max_abs_diff=difference, tolerance=IMAGE_TOLERANCE, loaded_with=lora.name)


def _usage(ctx: ExportContext, formats: list[str], token: str, name: str, files: dict[str, str]) -> list[str]:
    pipeline_class = ctx.family.pipeline_classes()[0].__name__
    snippets = []
    if "diffusers" in formats:
        loads = load_embedding_lines(ctx.family, files)
        snippets.append(
            f"**diffusers** (the LoRA and its token together):\n\n```python\nfrom diffusers import {pipeline_class}\n\n"
            f"pipe = {pipeline_class}.from_pretrained(\"{ctx.base}\")\n"
            f"pipe.load_lora_weights(\"DIR\", weight_name=\"{LORA_WEIGHTS_FILE}\")\n{loads}"
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
