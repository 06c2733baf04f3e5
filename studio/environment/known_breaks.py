"""Package combinations known not to work together, each with what breaks and its fix.

Add a rule when a release breaks Studio (and bound pyproject.toml's range where that helps library
users, see docs/dependencies.md); remove it when no version pyproject allows can meet it any more.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from packaging.specifiers import SpecifierSet
from packaging.version import Version

Versions = dict[str, Version]  # canonical name -> installed release (no local label)


@dataclass(frozen=True)
class KnownBreak:
    packages: tuple[str, ...]  # canonical names; the rule is only tried when all are installed
    breaks: Callable[[Versions], bool]
    what_breaks: str
    fix: str


def in_ranges(**ranges: str) -> Callable[[Versions], bool]:
    """Broken when every named package is at a version inside its range."""
    specs = {name.replace("_", "-"): SpecifierSet(spec) for name, spec in ranges.items()}
    return lambda versions: all(spec.contains(versions[name], prereleases=True) for name, spec in specs.items())


def torchvision_mismatch(versions: Versions) -> bool:
    """torchvision 0.N is built for torch 2.(N-15): 0.15 for 2.0 ... 0.28 for 2.13, 0.29 for 2.14."""
    torch, torchvision = versions["torch"], versions["torchvision"]
    if torch.major != 2 or torchvision.major != 0 or torchvision.minor < 15:
        return False
    return torchvision.minor != torch.minor + 15


KNOWN_BREAKS: tuple[KnownBreak, ...] = (
    KnownBreak(
        packages=("transformers", "peft"),
        breaks=in_ranges(transformers=">=5.24", peft="<0.22"),
        what_breaks=("transformers >= 5.24 refuses peft < 0.22, and no such peft is released yet: "
                     "text-encoder LoRA and SDXL LoRA fail"),
        fix="pip install 'transformers<5.24' (or run ./scripts/setup, which installs the tested versions)",
    ),
    KnownBreak(
        packages=("torch", "torchvision"),
        breaks=torchvision_mismatch,
        what_breaks="torchvision was built for another torch, and transformers imports it when present",
        fix="pip uninstall torchvision (Studio does not need it), or install the torchvision built for your torch",
    ),
)
