"""Textual-inversion embeddings: diffusers' ``learned_embeds.safetensors`` and A1111's ``<name>.safetensors``.

* diffusers: ``{placeholder_token: tensor[num_vectors, dim]}``; ``load_textual_inversion(path, token=...)``
  expands a multi-vector token to ``tok tok_1 ...``.
* A1111 (and kohya sd-scripts, ComfyUI): one tensor ``emb_params`` [num_vectors, dim]; the webui calls the
  embedding by its file stem, so ``<sks>`` is written as ``sks.safetensors`` and typed as ``sks``.
  SDXL's two encoders use ``clip_l`` / ``clip_g`` instead.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from studio.errors import StudioError

DIFFUSERS_FILE = "learned_embeds.safetensors"
A1111_KEY = "emb_params"
SDXL_KEYS = ("clip_l", "clip_g")


def read_learned_embeds(path: Path) -> tuple[str, torch.Tensor]:
    """(placeholder token, rows [n, dim]) from a diffusers embedding file."""
    from safetensors.torch import load_file

    state = load_file(str(path))
    if len(state) != 1:
        raise StudioError(f"{path} should hold one embedding (token -> [vectors, dim]); it has keys {list(state)[:4]}.")
    token, rows = next(iter(state.items()))
    return token, rows if rows.ndim == 2 else rows[None]


def a1111_name(token: str) -> str:
    """The webui's embedding name: the token without the angle brackets, safe as a file stem."""
    name = re.sub(r"[^\w.-]+", "_", token.strip().strip("<>")).strip("._")
    if not name:
        raise StudioError(f"Cannot make an A1111 embedding name from token '{token}'.")
    return name


def embedding_kind(keys: list[str]) -> str | None:
    """'a1111', 'a1111-sdxl' or 'diffusers' when ``keys`` look like an embedding file, else None."""
    if keys == [A1111_KEY]:
        return "a1111"
    if sorted(keys) == sorted(SDXL_KEYS):
        return "a1111-sdxl"
    if len(keys) == 1 and not re.search(r"\.(weight|bias)$|lora", keys[0]):
        return "diffusers"
    return None
