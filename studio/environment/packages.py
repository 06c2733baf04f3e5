"""Installed package versions, read from package metadata without importing the packages (cheap)."""

from __future__ import annotations

from importlib import metadata

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
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


def studio_requirements(extras: tuple[str, ...] = ()) -> list[Requirement]:
    """Studio's own requirements as installed (pyproject's ranges), for the given extras."""
    try:
        texts = metadata.requires(DIST_NAME) or []
    except metadata.PackageNotFoundError:
        return []
    requirements = []
    for text in texts:
        requirement = Requirement(text)
        if requirement.marker is None:
            requirements.append(requirement)
        elif any(requirement.marker.evaluate({"extra": extra}) for extra in extras):
            requirements.append(requirement)
        elif not extras and requirement.marker.evaluate({"extra": ""}):
            requirements.append(requirement)
    return requirements


def unmet_requirements_of(name: str) -> list[tuple[Requirement, Version | None]]:
    """The requirements of an installed package that the environment does not meet (a narrow ``pip
    check``): a dependency missing or at a version outside the package's declared range."""
    try:
        texts = metadata.requires(name) or []
    except metadata.PackageNotFoundError:
        return []
    unmet = []
    for text in texts:
        requirement = Requirement(text)
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        version = installed_version(requirement.name)
        if version is None or not requirement.specifier.contains(release(version), prereleases=True):
            unmet.append((requirement, version))
    return unmet


def canonical(name: str) -> str:
    return canonicalize_name(name)
