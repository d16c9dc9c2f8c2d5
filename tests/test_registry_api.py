"""The model registry's public accessors (no caller reaches into its private state)."""

import pytest

from agegender.models import ModelEntry, create_model, get_model_entry, is_model, list_models


def test_is_model_and_get_model_entry() -> None:
    name = list_models()[0]
    assert is_model(name) and not is_model("no_such_model")
    entry = get_model_entry(name)
    assert isinstance(entry, ModelEntry) and entry.name == name
    assert {"input_size", "resize", "mean", "std", "family"} <= set(entry.cfg)
    assert "tasks" not in entry.options
    with pytest.raises(TypeError):
        entry.cfg["input_size"] = 1  # read-only
    assert create_model(name).default_cfg["input_size"] == entry.cfg["input_size"]


def test_get_model_entry_unknown_names_the_models() -> None:
    name = list_models()[0]
    with pytest.raises(ValueError, match=rf"unknown model '{name}x'; did you mean {name}"):
        get_model_entry(name + "x")
