"""Checks on a resolved config that are cheap and must fail before anything is written.

Every entry point that trains calls `validate_config` after `seedjax.config.load_config`
(and `seedjax.train.workdir.check_workdir` for its workdir); a ConfigError here is one line on stderr and exit code 2,
with the workdir untouched. What a check needs from the data is read from data_pipelines'
own constants, so the two never disagree on what a source is.
"""

from __future__ import annotations

import os

import ml_collections

from data_pipelines.core.config import EDIT_SOURCES, SOURCES
from data_pipelines.core.config import validate as validate_data_groups
from data_pipelines.core.mixtures import components
from data_pipelines.sources.reward_pairs import BASE_SOURCES
from seedjax.config import ConfigError
from seedjax.train import evaluators
from seedjax.train.stage import load_stage
from seedjax.train.state import make_tx

# Sources read from `path` (the others are generated or bundled).
_PATH_SOURCES = {"folder": "an image folder", "jsonl": "a JSONL manifest", "edit_jsonl": "a JSONL edit manifest",
                 "shards": "a shard directory",
                 "video_folder": "a video folder", "video_jsonl": "a JSONL video manifest"}


def validate_config(config) -> None:
    stage = load_stage(config.stage)
    if stage.validate_config:  # the stage's own checks (e.g. the kind of its input checkpoints)
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
    for key, group in config.items():  # optimizer, and a stage's others (fake_optimizer, disc_optimizer)
        if key.endswith("optimizer") and isinstance(group, ml_collections.ConfigDict):
            _validate_optimizer(key, group, int(config.total_steps))
    model = config.get("model")
    if model is not None and model.get("kind") == "video_dit" and model.get("causal", False) and \
            "sampling" in config and float(config.sampling.guidance_scale) != 1.0:
        raise ConfigError(f"config.model.causal: a block-causal video model samples frame by frame with one KV cache, "
                          f"without classifier-free guidance; set config.sampling.guidance_scale=1 (got "
                          f"{config.sampling.guidance_scale})")
    if "data" in config:
        validate_data(config.data, "config.data", stage.reads_edits)
    if "eval" in config and "data" in config.eval:  # held-out data of stages that train on something else
        validate_data(config.eval.data, "config.eval.data", stage.reads_edits)
    evaluators.check(config)  # config.evals: every type, option and cadence


def _validate_optimizer(key: str, opt_cfg, total_steps: int) -> None:
    """Build the optax transformation: the builder is the one list of names and schedules."""
    try:
        make_tx(opt_cfg, total_steps)
    except ValueError as e:
        raise ConfigError(str(e).replace("config.optimizer.", f"config.{key}.")) from None


def _is_url(path: str) -> bool:
    return "://" in path  # gs://, s3://...: checked by their filesystem when opened


def validate_data(data_cfg, where: str, reads_edits: bool = False) -> None:
    """Every source known and every path that must exist present (locally); edit triples only
    for a stage that reads edit batches (`reads_edits`)."""
    try:
        comps = components(data_cfg)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if data_cfg.channels not in (-1, 1, 3):
        raise ConfigError(f"{where}.channels must be 1, 3 or -1 (the source's own), got {data_cfg.channels}")
    for name, (kind, path, _) in comps.items():
        key = f"{where}.mixture.{name}" if data_cfg.mixture else where
        if kind not in SOURCES:
            raise ConfigError(f"{key}.source: unknown source {kind!r}; use one of {', '.join(SOURCES)}")
        if kind in EDIT_SOURCES and not reads_edits:
            raise ConfigError(f"{key}.source: {kind} makes editing batches (source and target images), which "
                              "this stage does not read; the generator stages (stage=pretrain or sft) do")
        if kind == "reward_pairs" and path not in BASE_SOURCES:
            raise ConfigError(f"{key}.path: reward_pairs pairs captions of a bundled source; got {path!r}, "
                              f"use one of {', '.join(BASE_SOURCES)}")
        if kind in _PATH_SOURCES:
            if not path:
                raise ConfigError(f"{key}.path: source {kind!r} needs {_PATH_SOURCES[kind]} (--{key}.path=...)")
            if not _is_url(path) and not os.path.exists(path):
                raise ConfigError(f"{key}.path: {path!r} does not exist")
    eval_path = data_cfg.get("eval_path", "")
    if eval_path and not _is_url(eval_path) and not os.path.exists(eval_path):
        raise ConfigError(f"{where}.eval_path: {eval_path!r} does not exist")
    try:  # data.degradations and data.edits (their values, and what they cannot be combined with)
        validate_data_groups(data_cfg, where)
    except ValueError as e:
        raise ConfigError(str(e)) from None
