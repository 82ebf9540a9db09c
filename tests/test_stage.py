"""Every stage module declares its hooks on one Stage object; the loop reads only that."""

import dataclasses
import os

import pytest

from seedjax.config import ConfigError
from seedjax.train.stage import Stage, load_stage

STAGES = sorted(f[:-3] for f in os.listdir(os.path.join(os.path.dirname(__file__), "..", "seedjax", "stages"))
                if f.endswith(".py") and f != "__init__.py")


@pytest.mark.parametrize("name", STAGES)
def test_each_stage_declares_its_hooks(name):
    import importlib

    stage = load_stage(name)
    module = importlib.import_module(f"seedjax.stages.{name}")
    for field in dataclasses.fields(Stage):
        hook = getattr(stage, field.name)
        if field.type in (bool, "bool"):  # a property of the stage (reads_edits), not a hook
            assert isinstance(hook, bool), field.name
            continue
        assert hook is None or callable(hook), field.name
        # A module function named like a hook but left off STAGE would silently never run.
        if hook is None:
            assert not callable(getattr(module, field.name, None)), f"{name}.{field.name} is not on STAGE"


def test_a_misspelt_hook_is_an_error_not_a_missing_feature():
    with pytest.raises(TypeError, match="evalute"):
        Stage(init=lambda c, r: None, train_step=lambda *a: {}, evalute=lambda *a: {})


def test_unknown_stage_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown stage 'pretrian'"):
        load_stage("pretrian")
