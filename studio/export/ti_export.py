"""Export a textual-inversion run (diffusers and A1111 embedding files) and prove each file reloads.

SD1.x/2.x runs have one embedding file; SDXL runs have one per text encoder
(``learned_embeds_text_encoder[_2].safetensors``), which the A1111 layout joins as ``clip_l``/``clip_g``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from studio.errors import StudioError
from studio.export.context import ExportContext, replace_word
from studio.export.ti import A1111_KEY, DIFFUSERS_FILE, SDXL_KEYS, a1111_name, read_learned_embeds
from studio.export.verify import (
    IMAGE_TOLERANCE,
    check_embeddings_loaded,
    check_image,
    image_difference,
    render,
)
from studio.methods import method_spec

TI_FORMATS = method_spec("textual_inversion").export_formats
ENCODER_KEYS = dict(zip(("text_encoder", "text_encoder_2"), SDXL_KEYS, strict=True))


def run_embeddings(ctx: ExportContext) -> tuple[str, dict[str, Path], dict[str, torch.Tensor]]:
    """(token, file per text encoder, rows per text encoder) of the run."""
    artifact = ctx.run.directory / ctx.result["artifact"]
    files = {"text_encoder": artifact / DIFFUSERS_FILE} if (artifact / DIFFUSERS_FILE).is_file() else {
        p.stem.removeprefix("learned_embeds_"): p for p in sorted(artifact.glob("learned_embeds_*.safetensors"))}
    if not files:
        raise StudioError(f"{artifact} holds no learned_embeds*.safetensors; the run's result is incomplete.")
    tokens, rows = set(), {}
    for encoder, path in files.items():
        token, rows[encoder] = read_learned_embeds(path)
        tokens.add(token)
    if len(tokens) != 1:
        raise StudioError(f"{artifact}: the embedding files name different tokens {sorted(tokens)}.")
    return tokens.pop(), files, rows


def export_ti_run(ctx: ExportContext, formats: list[str]) -> None:
    token, files, rows = run_embeddings(ctx)
    if "diffusers" in formats:
        targets = {}
        for encoder, source in files.items():
            targets[encoder] = ctx.out / source.name
            shutil.copyfile(source, targets[encoder])
        _verify(ctx, {e: str(p) for e, p in targets.items()}, None, token, rows, "diffusers",
                "diffusers load_textual_inversion", targets)
    if "a1111" in formats:
        name = a1111_name(token)
        from studio.atomic import save_safetensors

        state = a1111_embedding_state(rows)
        target = save_safetensors(state, ctx.out / f"{name}.safetensors",
                                  metadata={"studio.token": token, "studio.base_model": ctx.base})
        sources = a1111_embedding_sources(state, target)
        if ctx.family.text_only_encoder_names:
            # T5 reads the typed word as text: the image a user gets depends on what they type, so the rows
            # are checked under the run's own token (the image then must match), and the card says so.
            ctx.notes.append(
                f"{ctx.family.label}'s T5 encoder reads the prompt as text and gets no embedding: type `{token}` as "
                f"trained (the file's name `{name}` is what A1111/Forge/ComfyUI call it); another spelling changes "
                "what T5 sees, and so the image.")
            _verify(ctx, sources, token, token, rows, "A1111", "Forge, ComfyUI, diffusers", {"a1111": target})
        else:
            _verify(ctx, sources, name, name, rows, "A1111", "A1111, Forge, ComfyUI, diffusers", {"a1111": target})
    ctx.usage += _usage(ctx, formats, token, {encoder: path.name for encoder, path in files.items()})


def _verify(ctx: ExportContext, sources: dict, load_as: str | None, token: str, rows: dict[str, torch.Tensor],
            fmt: str, consumer: str, written: dict[str, Path]) -> None:
    """Load with diffusers' ``load_textual_inversion``; an A1111 file is loaded under its file-stem name,
    and the prompt types that name, as a webui user would."""
    what = f"{fmt} embedding {', '.join(p.name for p in written.values())}"
    pipe = ctx.fresh_base()
    tokens = [token] + [f"{token}_{i}" for i in range(1, next(iter(rows.values())).shape[0])]
    vectors = 0
    for encoder, source in sources.items():
        tokenizer = getattr(pipe, encoder.replace("text_encoder", "tokenizer"))
        load_token = load_as or (token if not isinstance(source, str) else None)
        if hasattr(pipe, "load_textual_inversion"):
            pipe.load_textual_inversion(source, token=load_token, text_encoder=getattr(pipe, encoder), tokenizer=tokenizer)
        else:  # SD3's pipeline has no textual-inversion loader: the same rows added as Studio applies them
            from studio.adapters import add_token_rows

            file_token, loaded = read_learned_embeds(Path(source)) if isinstance(source, str) else (None, source)
            add_token_rows(tokenizer, getattr(pipe, encoder), load_token or file_token, loaded)
        vectors = check_embeddings_loaded(pipe, tokens, rows[encoder], what, encoder=encoder)
    prompt = replace_word(ctx.spec.prompt, ctx.run.token, token)
    difference = image_difference(render(pipe, ctx.spec, prompt=prompt), ctx.reference_image())
    check_image(what, difference)
    for path in written.values():
        ctx.record(path, f"embedding ({fmt})", consumer,
                   f"{vectors} vectors loaded by diffusers load_textual_inversion; max pixel diff {difference:.1e}",
                   vectors=vectors, max_abs_diff=difference, tolerance=IMAGE_TOLERANCE)


def load_embedding_lines(family, files: dict[str, str]) -> str:
    """The diffusers lines that load an export's embedding files (``{text encoder: file name}``); one file for the
    first encoder loads with diffusers' defaults, others name their encoder and its tokenizer (the family's)."""
    if list(files) == list(family.embedding_text_encoder_names[:1]):
        return "".join(f"pipe.load_textual_inversion(\"DIR/{file}\")\n" for file in files.values())
    return "".join(
        f"pipe.load_textual_inversion(\"DIR/{file}\", text_encoder=pipe.{encoder}, "
        f"tokenizer=pipe.{family.tokenizer_of(encoder)})\n"
        for encoder, file in files.items()
    )


def a1111_embedding_state(rows: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The A1111/Forge/ComfyUI embedding file's tensors: one ``emb_params`` for a single encoder, else one
    tensor per encoder (SDXL's ``clip_l``/``clip_g``)."""
    if list(rows) == ["text_encoder"]:
        return {A1111_KEY: rows["text_encoder"].float()}
    return {ENCODER_KEYS[encoder]: value.float() for encoder, value in rows.items()}


def a1111_embedding_sources(state: dict[str, torch.Tensor], path: Path) -> dict[str, str | torch.Tensor]:
    """What diffusers' ``load_textual_inversion`` reads per encoder to check that file: the file itself when it
    holds one tensor, else each encoder's tensor (diffusers loads a multi-encoder file tensor by tensor)."""
    if A1111_KEY in state:
        return {"text_encoder": str(path)}
    return {encoder: state[key] for encoder, key in ENCODER_KEYS.items() if key in state}


def _usage(ctx: ExportContext, formats: list[str], token: str, files: dict[str, str]) -> list[str]:
    pipeline_class = ctx.family.pipeline_classes()[0].__name__
    snippets = []
    if "diffusers" in formats:
        loads = load_embedding_lines(ctx.family, files)
        snippets.append(
            f"**diffusers**:\n\n```python\nfrom diffusers import {pipeline_class}\n\n"
            f"pipe = {pipeline_class}.from_pretrained(\"{ctx.base}\")\n{loads}"
            f"image = pipe(\"{ctx.spec.prompt}\").images[0]\n```"
        )
    if "a1111" in formats:
        name = a1111_name(token)
        snippets.append(
            f"**AUTOMATIC1111 / Forge**: copy `{name}.safetensors` into `embeddings/` and type `{name}` in the prompt "
            f"(e.g. `{replace_word(ctx.spec.prompt, ctx.run.token, name)}`). **ComfyUI**: copy it into `models/embeddings/` "
            f"and write `embedding:{name}`."
        )
    return snippets
