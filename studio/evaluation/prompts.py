"""Evaluation prompts: DreamBench's templates (or the user's), filled in for one subject.

``{0}`` is the identifier (for textual inversion, the learned token string) and ``{1}`` the class
noun. Each prompt also gets its *text* form, the prompt with the identifier removed: CLIP does not
know the identifier, so CLIP-T scores that text, and the untrained base model is prompted with it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from studio.evaluation.errors import EvaluationError
from studio.paths import datasets_dir

DREAMBENCH_FILE = "dreambench_prompts.json"
DREAMBENCH_CHOICES = ("dreambench", "dreambench-live", "dreambench-objects")
CLIP_T_TEXT_RULE = (
    "CLIP-T scores each image against its prompt with the identifier token removed "
    "(e.g. 'a sks dog in the snow' -> 'a dog in the snow'); prompts without the identifier are used as given"
)
# Class nouns whose last word names a person or an animal get DreamBench's live-subject prompts
# (outfits, hats); everything else gets the object prompts. A material or toy word anywhere in
# the noun ("stuffed animal", "toy dog", "rubber duck") makes it an object.
LIVE_WORDS = frozenset(
    "person man woman boy girl child kid baby toddler people human guy lady gentleman teenager "
    "dog puppy cat kitten kitty pet animal horse pony donkey bird parrot owl chicken hen rooster duck "
    "rabbit bunny hamster guinea pig fox wolf bear lion tiger leopard cheetah cow calf sheep lamb goat "
    "monkey ape gorilla panda raccoon squirrel deer elephant giraffe zebra turtle tortoise frog lizard "
    "snake fish ferret rat otter koala kangaroo penguin dolphin seal sloth hedgehog alpaca llama camel "
    "retriever corgi poodle husky terrier labrador bulldog beagle dachshund spaniel pug chihuahua shiba "
    "collie shepherd schnauzer doberman rottweiler maltese pomeranian greyhound tabby".split()
)
OBJECT_WORDS = frozenset(
    "toy toys plush plushie stuffed teddy rubber plastic statue figurine sculpture robot cartoon doll "
    "ceramic wooden porcelain lego emoji".split()
)


@dataclass(frozen=True)
class EvalPrompt:
    """One evaluation prompt: the template, the personalised prompt and its identifier-free text."""

    template: str
    prompt: str
    text: str


def load_dreambench() -> dict:
    """The DreamBench prompt file shipped in ``datasets/`` (CC BY 4.0, see datasets/README.md)."""
    path = datasets_dir() / DREAMBENCH_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise EvaluationError(f"{path} cannot be read ({error}); restore it from the Studio source.") from error


def _singular(word: str) -> str:
    return word[:-1] if word.endswith("s") and word[:-1] in LIVE_WORDS else word


def is_live(class_noun: str) -> bool:
    """True for people and animals (DreamBench's 'live subjects'), False for objects."""
    words = re.findall(r"[a-z]+", class_noun.lower())
    if not words or any(w in OBJECT_WORDS for w in words):
        return False
    return _singular(words[-1]) in LIVE_WORDS or class_noun.lower() in load_dreambench().get("live_classes", [])


def dreambench_templates(class_noun: str, which: str = "dreambench") -> list[str]:
    """DreamBench's 25 templates: live-subject ones for people and animals, object ones otherwise."""
    data = load_dreambench()
    if which == "dreambench":
        which = "dreambench-live" if is_live(class_noun) else "dreambench-objects"
    if which not in DREAMBENCH_CHOICES[1:]:
        raise EvaluationError(f"prompts must be one of {', '.join(DREAMBENCH_CHOICES)} or a file, not {which!r}.")
    return list(data["live_subjects" if which == "dreambench-live" else "objects"])


def read_prompt_file(path: str | Path) -> list[str]:
    """Templates or plain prompts from a JSON list (or {"prompts": [...]}) or a text file, one a line."""
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise EvaluationError(f"Prompt file {path} cannot be read ({error.strerror or error}).") from error
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except ValueError as error:
            raise EvaluationError(f"Prompt file {path} is not valid JSON ({error}).") from error
        items = data.get("prompts") if isinstance(data, dict) else data
        if not isinstance(items, list) or not all(isinstance(p, str) for p in items):
            raise EvaluationError(f"Prompt file {path} must hold a JSON list of strings or {{\"prompts\": [...]}}.")
    else:
        items = text.splitlines()
    prompts = [p.strip() for p in items if p.strip() and not p.strip().startswith("#")]
    if not prompts:
        raise EvaluationError(f"Prompt file {path} holds no prompts; add one per line (or a JSON list).")
    return prompts


def resolve_templates(prompts: str | Path | Sequence[str], class_noun: str) -> list[str]:
    """``dreambench`` (live/object by class), ``dreambench-live``/``-objects``, a file, or a list."""
    if isinstance(prompts, str) and prompts in DREAMBENCH_CHOICES:
        return dreambench_templates(class_noun, prompts)
    if isinstance(prompts, str | Path):
        return read_prompt_file(prompts)
    templates = [p for p in prompts if p.strip()]
    if not templates:
        raise EvaluationError("No evaluation prompts given.")
    return templates


def strip_identifier(prompt: str, identifier: str) -> str:
    """Remove the identifier as a whole word ('a sks dog' -> 'a dog'); spaces are tidied."""
    if not identifier:
        return " ".join(prompt.split())
    pattern = rf"(?<![\w<>]){re.escape(identifier)}(?![\w<>])"
    return " ".join(re.sub(pattern, " ", prompt).split())


def fill(template: str, token: str, class_noun: str) -> EvalPrompt:
    """Fill ``{0}``/``{1}``; a template without ``{0}`` has the token removed textually instead."""
    prompt = " ".join(template.replace("{0}", token).replace("{1}", class_noun).split())
    if "{0}" in template:
        text = " ".join(template.replace("{0}", "").replace("{1}", class_noun).split())
    else:
        text = strip_identifier(prompt, token)
    return EvalPrompt(template, prompt, text)


def build_prompts(templates: Sequence[str], token: str, class_noun: str) -> list[EvalPrompt]:
    """One :class:`EvalPrompt` per template, duplicates dropped (they would double-count)."""
    return [fill(t, token, class_noun) for t in dict.fromkeys(templates)]
