"""A diffusers pipeline folder that loads under transformers 4 and 5 alike.

transformers 5 saves ``CLIPTextModel`` without the ``text_model.`` root of its state-dict keys and a
tokenizer as ``tokenizer.json`` alone. transformers 4 then loads that text encoder with every weight
missing (randomly initialised, with only a warning) and cannot build the slow ``CLIPTokenizer`` that
``model_index.json`` names. transformers 5 reads the rooted keys and ignores the extra tokenizer files,
so writing both the way transformers 4 did serves every version.
"""

from __future__ import annotations

import json
from pathlib import Path

from studio.atomic import save_safetensors, write_json, write_text
from studio.families.base import clip_rooted_path

TOKENIZER_JSON = "tokenizer.json"
VOCAB_FILE = "vocab.json"
MERGES_FILE = "merges.txt"
WEIGHTS_INDEX = "model.safetensors.index.json"


def make_portable(folder: Path, family) -> None:
    """Root every text encoder's weights and give every BPE tokenizer its ``vocab.json``/``merges.txt``."""
    for name in family.clip_text_encoder_names:  # T5's keys have no CLIP root
        root_text_encoder_weights(folder / name)
    for name in family.tokenizer_names:
        write_slow_tokenizer_files(folder / name)


def root_text_encoder_weights(directory: Path) -> int:
    """Rewrite ``directory``'s safetensors with CLIP's ``text_model.`` root; returns the keys renamed."""
    from safetensors import safe_open

    renamed = 0
    for path in sorted(directory.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            state = {clip_rooted_path(key): handle.get_tensor(key) for key in handle.keys()}
            changed = sum(1 for key in handle.keys() if clip_rooted_path(key) != key)
        if changed:
            save_safetensors(state, path, metadata={"format": "pt", **metadata})
            renamed += changed
    index = directory / WEIGHTS_INDEX
    if index.is_file():
        data = json.loads(index.read_text())
        data["weight_map"] = {clip_rooted_path(key): file for key, file in data.get("weight_map", {}).items()}
        write_json(index, data)
    return renamed


def write_slow_tokenizer_files(directory: Path) -> bool:
    """``vocab.json`` and ``merges.txt`` from a BPE ``tokenizer.json`` when they are missing."""
    source = directory / TOKENIZER_JSON
    if not source.is_file() or ((directory / VOCAB_FILE).is_file() and (directory / MERGES_FILE).is_file()):
        return False
    model = json.loads(source.read_text(encoding="utf-8")).get("model", {})
    if model.get("type") != "BPE":
        return False
    merges = [merge if isinstance(merge, str) else " ".join(merge) for merge in model.get("merges", [])]
    vocab = dict(sorted(model["vocab"].items(), key=lambda item: item[1]))
    write_text(directory / VOCAB_FILE, json.dumps(vocab, ensure_ascii=False))
    write_text(directory / MERGES_FILE, "#version: 0.2\n" + "\n".join(merges) + "\n")
    return True
