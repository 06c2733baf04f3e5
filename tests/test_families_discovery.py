"""Family folders are found, not listed: every subpackage of studio.families is asked, in detection order."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

import studio.families
from studio.families import FAMILIES
from studio.families.discovery import discover_families

FAMILY_SOURCE = '''
from studio.families.base import ModelFamily


class {name}Family(ModelFamily):
    name = "{key}"
    {order}
    default_resolution = 64
    text_encoder_names = ("text_encoder",)
    tokenizer_names = ("tokenizer",)
    kohya_base_model_version = "{key}"
    modelspec_architecture = "{key}/lora"


FAMILY_CLASSES = ({name}Family,)
'''


def _folder(root: Path, key: str, order: str = "", source: str | None = None) -> None:
    package = root / key
    package.mkdir()
    text = FAMILY_SOURCE.format(name=key.capitalize(), key=key, order=order) if source is None else source
    (package / "__init__.py").write_text(textwrap.dedent(text))


@pytest.fixture
def extra_folders(tmp_path, monkeypatch):
    """A second studio/families folder (tmp_path) for this test: packages put there are studio.families.<key>."""
    monkeypatch.setattr(studio.families, "__path__", [*studio.families.__path__, str(tmp_path)])
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        if name.startswith("studio.families."):
            del sys.modules[name]


def _discover() -> tuple[type, ...]:
    return discover_families(studio.families.__path__, studio.families.__name__)


def test_the_families_are_asked_in_the_order_they_declare():
    assert [family.name for family in FAMILIES] == ["flux", "sd3", "sdxl", "sd2", "sd1"]
    orders = [family.detection_order for family in FAMILIES]
    assert orders == sorted(orders) and len(set(orders)) == len(orders)
    assert all("detection_order" in vars(family) for family in FAMILIES)


def test_every_family_folder_is_found():
    root = Path(studio.families.__file__).parent
    folders = {path.parent.name for path in root.glob("*/__init__.py")}
    assert folders == {"flux", "sd", "sd3", "sdxl"}
    assert {family.__module__.removeprefix("studio.families.") for family in FAMILIES} == folders


def test_a_folder_added_at_run_time_is_a_family_in_its_place(extra_folders):
    _folder(extra_folders, "alpha", "detection_order = 5")
    _folder(extra_folders, "omega", "detection_order = 99")
    found = _discover()
    assert [family.name for family in found] == ["alpha", "flux", "sd3", "sdxl", "sd2", "sd1", "omega"]
    assert found[0].__module__ == "studio.families.alpha"
    assert FAMILIES == found[1:-1]


def test_a_folder_without_family_classes_is_refused(extra_folders):
    _folder(extra_folders, "empty", source='"""No family here."""\n')
    with pytest.raises(TypeError, match="declares no FAMILY_CLASSES"):
        _discover()


def test_a_family_without_its_own_detection_order_is_refused(extra_folders):
    _folder(extra_folders, "unordered")
    with pytest.raises(TypeError, match="detection_order of its own"):
        _discover()
    subclass = "from studio.families.sd import StableDiffusionFamily\n\n\n" \
               "class Sd1VariantFamily(StableDiffusionFamily):\n    name = 'sd1-variant'\n\n\n" \
               "FAMILY_CLASSES = (Sd1VariantFamily,)\n"
    (extra_folders / "unordered" / "__init__.py").write_text(subclass)
    del sys.modules["studio.families.unordered"]
    with pytest.raises(TypeError, match="Sd1VariantFamily"):
        _discover()


def test_two_families_in_one_place_are_refused(extra_folders):
    _folder(extra_folders, "twin", f"detection_order = {FAMILIES[0].detection_order}")
    with pytest.raises(ValueError, match="share a detection_order"):
        _discover()
