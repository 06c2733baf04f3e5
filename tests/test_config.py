"""Settings declarations, recipes and overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from studio.config import build_config, load_config, parse_overrides, recipe_names
from studio.errors import ConfigError
from studio.settings import TrainConfig, declarations
from studio.settings_doc import settings_markdown

REQUIRED_KEYS = ("method base resolution steps batch_size learning_rate optimizer gradient_checkpointing mixed_precision "
                 "prior_preservation num_class_images prior_loss_weight lora_rank lora_alpha train_text_encoder num_vectors "
                 "initializer_token seed checkpoint_every sample_every").split()


def test_issue_key_names_are_declared_with_metadata():
    names = {item.name for item in declarations()}
    assert set(REQUIRED_KEYS) <= names
    for item in declarations():
        assert item.metadata["help"] and item.metadata["group"] in {"basic", "advanced"}, item.name


@pytest.mark.parametrize("name", ["lora", "dreambooth", "textual-inversion", "tiny-lora", "tiny-dreambooth", "tiny-textual-inversion"])
def test_recipes_load(name):
    assert name in recipe_names()
    config = load_config(name)
    assert isinstance(config, TrainConfig)
    if "dreambooth" in name:
        assert config.prior_preservation


def test_overrides_are_typed():
    config = load_config("tiny-lora", parse_overrides(["steps=7", "lora_target_modules=to_q,to_v", "gradient_checkpointing=true", "learning_rate=1e-3"]))
    assert config.steps == 7 and config.lora_target_modules == ["to_q", "to_v"]
    assert config.gradient_checkpointing is True and config.learning_rate == pytest.approx(1e-3)


@pytest.mark.parametrize(
    "values, message",
    [
        ({"optimizer": "sgd"}, "'optimizer'.*one of adamw, adamw8bit"),
        ({"lora_rank": 0}, "'lora_rank'"),
        ({"gradient_checkpointing": "maybe"}, "'gradient_checkpointing'.*true or false"),
        ({"learning_rate": "fast"}, "'learning_rate'"),
        ({"colour": 1}, "Unknown setting 'colour'"),
        ({"resolution": 100}, "divisible by 8"),
        ({"method": "textual_inversion", "prior_preservation": True}, "textual inversion"),
    ],
)
def test_invalid_values_name_the_key(values, message):
    with pytest.raises(ConfigError, match=message):
        build_config(values)


def test_unknown_recipe_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="Unknown recipe 'nope'.*tiny-lora"):
        load_config("nope")
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(str(bad))
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["steps"])


def test_settings_doc_is_current():
    doc = Path(__file__).resolve().parent.parent / "docs" / "settings.md"
    assert doc.read_text() == settings_markdown(), "regenerate with: studio settings --markdown > docs/settings.md"
