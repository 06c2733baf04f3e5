"""Prompt embeddings cached on disk (T5-XXL's among them), keyed like the class-image cache.

A Flux or SD3.5 run needs its text encoders (T5-XXL: 4.76 B parameters, 9.5 GB in bf16) only to embed
the run's prompts. The embeddings are kept on disk, one file per prompt, under
``DATA/text-embeddings/KEY/``, KEY hashing what could change them: the base model's identity (as the
class-image cache: ``trainers.prior.base_identity``), the family, the encoders' dtype and a format
version; the file name hashes the prompt. A run whose prompts are all cached never moves a text
encoder to the accelerator (a second run on the same subject, a resumed run, another recipe on the
same base). Bases built in memory (the benchmarks' random real architectures) are encoded as before,
without the disk. Missing prompts are encoded once, on the accelerator when the encoders fit beside what
is already there, else on the CPU (slow, once), then written.

Only runs whose text encoders are frozen use it (``cache_text_embeddings`` on and no text-encoder
training): the in-memory cache of ``Trainer._build_caches`` is then filled from here.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from studio.atomic import save_safetensors, write_json
from studio.families.base import PromptEmbedding
from studio.paths import class_images_cache_dir

VERSION = 1


def cache_dir() -> Path:
    return class_images_cache_dir().parent / "text-embeddings"


def encoders_dtype(components: dict, names: tuple[str, ...]) -> str:
    dtypes = sorted({str(next(components[n].parameters()).dtype) for n in names if components.get(n) is not None})
    return ",".join(dtypes)


def cache_key(base, family, dtype: str) -> str:
    from trainers.prior import base_identity

    record = json.dumps([base_identity(base), type(family).__name__, dtype, VERSION])
    return hashlib.sha256(record.encode()).hexdigest()[:20]


def prompt_file(folder: Path, prompt: str) -> Path:
    return folder / (hashlib.sha256(prompt.encode()).hexdigest()[:24] + ".safetensors")


def _encoder_bytes(components: dict, names: tuple[str, ...]) -> int:
    return sum(p.numel() * p.element_size() for n in names if components.get(n) is not None for p in components[n].parameters())


def encoding_device(components: dict, names: tuple[str, ...], device: torch.device) -> torch.device:
    """The accelerator when the encoders fit in its free memory (with a 20 % margin), else the CPU."""
    if device.type != "cuda":
        return device
    free, _ = torch.cuda.mem_get_info(device)
    return device if _encoder_bytes(components, names) * 1.2 < free else torch.device("cpu")


def cached_prompt_embeddings(base, family, components: dict, prompts: list[str], device: torch.device) -> PromptEmbedding:
    """Embeddings of ``prompts`` (in order) on ``device``: read from the disk cache, encoding the missing ones."""
    names = tuple(family.text_encoder_names)
    if base.source not in ("builtin", "folder", "single_file", "hub"):
        with torch.no_grad():  # a model built in memory (benchmarks) has no identity to key a disk cache by
            return family.encode_prompts(components, prompts, device)
    folder = cache_dir() / cache_key(base, family, encoders_dtype(components, names))
    unique = list(dict.fromkeys(prompts))
    missing = [p for p in unique if not prompt_file(folder, p).exists()]
    if missing:
        folder.mkdir(parents=True, exist_ok=True)
        write_json(folder / "info.json", {"base": base.ref, "family": type(family).__name__,
                                          "dtype": encoders_dtype(components, names), "version": VERSION})
        where = encoding_device(components, names, device)
        for name in names:
            if components.get(name) is not None:
                components[name].to(where)
        with torch.no_grad():
            for prompt in missing:  # one at a time: the files hold one prompt each
                embedding = family.encode_prompts(components, [prompt], where)
                state = {k: v.detach().to("cpu").contiguous() for k, v in embedding.state().items()}
                save_safetensors(state, prompt_file(folder, prompt), metadata={"prompt": prompt})
    parts = {p: PromptEmbedding.from_state(load_file(str(prompt_file(folder, p)))) for p in unique}
    return PromptEmbedding.cat([parts[p] for p in prompts]).to(device)
