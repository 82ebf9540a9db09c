"""Config files, typed args, locked overrides, and the CLI's exit code 2 before any write."""

import os

import ml_collections
import pytest

from seedjax import config as config_lib
from seedjax.main import main
from tests.runner import ROOT

QUICKSTART = os.path.join(ROOT, "experiments/quickstart/pretrain.py")


def test_parse_arg_types_and_unknown_keys():
    arg = config_lib.parse_arg("variant=tiny,steps=50,lr=0.5,ema=false", variant="base", steps=10, lr=1.0, ema=True)
    assert arg.variant == "tiny" and arg.steps == 50 and arg.lr == 0.5 and arg.ema is False
    assert config_lib.parse_arg("tiny", variant="base").variant == "tiny"
    with pytest.raises(config_lib.ConfigError, match="steps"):
        config_lib.parse_arg("setps=3", variant="base", steps=10)
    with pytest.raises(config_lib.ConfigError, match="int"):
        config_lib.parse_arg("steps=many", steps=10)


def test_overrides_are_typed_and_locked():
    cfg = ml_collections.ConfigDict(dict(a=1, b=dict(c=0.5, d="x", e=(1, 2), f=True)))
    cfg.lock()
    config_lib.apply_overrides(cfg, {"a": "3", "b.c": "2", "b.d": "y", "b.e": "(4, 5, 6)", "b.f": "false"})
    assert (cfg.a, cfg.b.c, cfg.b.d, cfg.b.e, cfg.b.f) == (3, 2.0, "y", (4, 5, 6), False)
    with pytest.raises(config_lib.ConfigError, match=r"unknown config key 'config.b.cc'.*b.c"):
        config_lib.apply_overrides(cfg, {"b.cc": "1"})
    with pytest.raises(config_lib.ConfigError, match="expected an int"):
        config_lib.apply_overrides(cfg, {"a": "1.5"})
    with pytest.raises(config_lib.ConfigError, match="group of settings"):
        config_lib.apply_overrides(cfg, {"b": "1"})


def test_every_experiment_config_loads_with_its_tiny_variant():
    found = []
    for family in ("quickstart", "seedream", "seedance"):
        folder = os.path.join(ROOT, "experiments", family)
        for name in sorted(os.listdir(folder)):
            if name.endswith(".py") and not name.startswith("_") and not name.endswith("pipeline.py"):
                cfg = config_lib.load_config(os.path.join(folder, name) + ":variant=tiny")
                assert cfg.total_steps > 0 and "stage" in cfg, name
                found.append(name)
    assert "pretrain.py" in found


@pytest.mark.parametrize("override, message", [
    ("--config.optimizer.lrr=0.1", "unknown config key 'config.optimizer.lrr'"),
    ("--config.total_steps=ten", "expected an int"),
    ("--config.stage=nope", "unknown stage"),
])
def test_cli_bad_override_exits_2_and_writes_nothing(tmp_path, capsys, override, message):
    workdir = tmp_path / "run"
    code = main([f"--config={QUICKSTART}:variant=tiny", f"--workdir={workdir}", override])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not workdir.exists()


def test_cli_missing_config_file_exits_2(tmp_path, capsys):
    assert main(["--config=does/not/exist.py", f"--workdir={tmp_path / 'w'}"]) == 2
    assert "does not exist" in capsys.readouterr().err
