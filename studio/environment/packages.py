"""Installed package versions, read from package metadata without importing the packages (cheap)."""

from __future__ import annotations

from importlib import metadata

from packaging.requirements import Requirement
from packaging.version import InvalidVersion, Version

# The packages ``studio doctor`` reports, in the order a reader looks for them.
KEY_PACKAGES = ("torch", "diffusers", "transformers", "peft", "accelerate", "bitsandbytes", "gradio")
DIST_NAME = "studio"


def installed_version(name: str) -> Version | None:
    """The installed version of a distribution, or None when it is not installed."""
    try:
        text = metadata.version(name)
    except metadata.PackageNotFoundError:
        return None
    try:
        return Version(text)
    except InvalidVersion:
        return None


def release(version: Version) -> Version:
    """The version without local labels (torch's ``+cpu``/``+cu124``)."""
    return Version(version.public)


def declared_requirements(name: str, extras: tuple[str, ...] = ()) -> list[Requirement]:
    """An installed distribution's requirements that apply here, with the given extras ([] if absent)."""
    try:
        texts = metadata.requires(name) or []
    except metadata.PackageNotFoundError:
        return []
    requirements = []
    for text in texts:
        requirement = Requirement(text)
        if requirement.marker is None or any(requirement.marker.evaluate({"extra": e}) for e in ("", *extras)):
            requirements.append(requirement)
    return requirements


def studio_requirements(extras: tuple[str, ...] = ()) -> list[Requirement]:
    """Studio's own requirements as installed (pyproject's ranges), for the given extras."""
    return declared_requirements(DIST_NAME, extras)


def unmet_requirements_of(name: str) -> list[tuple[Requirement, Version | None]]:
    """The requirements of an installed package that the environment does not meet (a narrow ``pip
    check``): a dependency missing or at a version outside the package's declared range."""
    unmet = []
    for requirement in declared_requirements(name):
        version = installed_version(requirement.name)
        if version is None or not requirement.specifier.contains(release(version), prereleases=True):
            unmet.append((requirement, version))
    return unmet

