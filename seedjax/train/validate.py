"""Checks on a resolved config that are cheap and must fail before anything is written."""

from __future__ import annotations

import importlib

from seedjax.config import ConfigError


def validate_config(config) -> None:
    try:
        stage = importlib.import_module(f"seedjax.stages.{config.stage}")
    except ModuleNotFoundError as e:
        if e.name == f"seedjax.stages.{config.stage}":
            raise ConfigError(f"config.stage: unknown stage {config.stage!r} (no module seedjax.stages.{config.stage})")
        raise
    if hasattr(stage, "validate_config"):  # the stage's own checks (e.g. the kind of its input checkpoints)
        try:
            stage.validate_config(config)
        except ValueError as e:
            raise ConfigError(str(e)) from None
    for key in ("total_steps", "batch_size", "log_every", "checkpoint_every", "keep_checkpoints"):
        if int(config[key]) <= 0:
            raise ConfigError(f"config.{key} must be positive, got {config[key]}")
    for key in ("sample_every", "eval_every"):
        if int(config[key]) < 0:
            raise ConfigError(f"config.{key} must be >= 0, got {config[key]}")
    if config.sharding.replicated_params not in ("error", "warn", "ignore"):
        raise ConfigError("config.sharding.replicated_params must be error, warn or ignore, "
                          f"got {config.sharding.replicated_params!r}")
    accum = int(config.optimizer.grad_accum_steps)
    if accum < 1 or config.batch_size % accum:
        raise ConfigError(f"config.optimizer.grad_accum_steps={accum} must be >= 1 and divide "
                          f"config.batch_size={config.batch_size}")
