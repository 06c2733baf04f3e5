"""Finding the families: every subpackage of :mod:`studio.families` is one family's folder.

A folder's ``__init__.py`` declares ``FAMILY_CLASSES`` (its :class:`ModelFamily` classes); each class sets its
own integer ``detection_order``. The families are asked in that order, lowest first (the most specific
family first), so no list is edited when a folder is added. Only subpackages are imported here (their
``__init__.py``): a folder's other modules (key names, writers) load when used.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterable
from types import ModuleType

from studio.families.base import ModelFamily


def discover_families(path: Iterable[str], package: str) -> tuple[type[ModelFamily], ...]:
    """The family classes declared by every subpackage of ``package`` found on ``path``, in detection order."""
    found: list[type[ModelFamily]] = []
    for info in sorted(pkgutil.iter_modules(list(path), package + "."), key=lambda info: info.name):
        if info.ispkg:
            found += declared_families(importlib.import_module(info.name))
    return in_detection_order(found)


def declared_families(module: ModuleType) -> tuple[type[ModelFamily], ...]:
    """A family folder's ``FAMILY_CLASSES``, each a ModelFamily with a ``detection_order`` of its own."""
    classes = getattr(module, "FAMILY_CLASSES", None)
    if not classes:
        raise TypeError(f"{module.__name__} is a folder of studio.families but declares no FAMILY_CLASSES.")
    for cls in classes:
        if not (isinstance(cls, type) and issubclass(cls, ModelFamily)):
            raise TypeError(f"{module.__name__}.FAMILY_CLASSES holds {cls!r}, which is not a ModelFamily.")
        if type(vars(cls).get("detection_order")) is not int:
            raise TypeError(f"{cls.__name__} ({module.__name__}) sets no integer detection_order of its own.")
    return tuple(classes)


def in_detection_order(families: Iterable[type[ModelFamily]]) -> tuple[type[ModelFamily], ...]:
    """The families sorted by ``detection_order``; two sharing an order or a name are refused."""
    ordered = tuple(sorted(families, key=lambda family: family.detection_order))
    for attribute in ("detection_order", "name"):
        values = [getattr(family, attribute) for family in ordered]
        shared = sorted({value for value in values if values.count(value) > 1}, key=str)
        if shared:
            owners = [family.__name__ for family in ordered if getattr(family, attribute) in shared]
            raise ValueError(f"Model families share a {attribute} ({', '.join(map(str, shared))}): "
                             f"{', '.join(owners)}.")
    return ordered


__all__ = ["declared_families", "discover_families", "in_detection_order"]
