"""The part every quickstart distillation config shares (not a config file itself).

Each stage config starts from the teacher's config (`experiments/quickstart/pretrain.py`, same
variant): the same text encoder, MMDiT and data, so every checkpoint of the chain loads into
the next stage. Variants: `quickstart` (the measured CPU run) and `tiny` (CI). Each stage file
has `configure(cfg, arg)`, so the same recipe applies to another teacher (experiments/seedream/).
"""

from __future__ import annotations

import copy

import ml_collections

from experiments.quickstart import pretrain
from seedjax.config import parse_arg
from seedjax.schema.stages import distill_config
from seedjax.schema.training import optimizer_config


def parse(arg, **defaults):
    return parse_arg(arg, variant="quickstart", steps=-1, **defaults)


def base(stage: str, arg, teacher: ml_collections.ConfigDict | None = None) -> ml_collections.ConfigDict:
    """The teacher's config (default: the quickstart teacher of `arg.variant`) turned into `stage`'s."""
    cfg = teacher if teacher is not None else pretrain.get_config(arg.variant)
    cfg.stage = stage
    cfg.model.guidance_embed = True  # every student takes the guidance scale as an input
    cfg.distill = distill_config()
    cfg.sampling.schedule = "uniform"
    cfg.sampling.guidance_scale = 1.0  # the guidance is embedded: one evaluation per step
    cfg.sampling.use_ema = True
    cfg.eval.data = copy.deepcopy(cfg.data)  # held-out prompts (the training data may be ODE pairs)
    cfg.ema_decay = 0.99
    cfg.optimizer = optimizer_config(lr=1e-4, schedule="constant", warmup_steps=0, grad_clip=1.0)
    cfg.eval_every = 0
    cfg.sample_every = 0
    if arg.variant == "tiny":
        cfg.batch_size = 4
        cfg.total_steps = 4
        cfg.log_every = 2
        cfg.checkpoint_every = 4
        cfg.eval.num_prompts = 8
        cfg.eval.batch_size = 8
    return cfg


def finish(cfg: ml_collections.ConfigDict, arg) -> ml_collections.ConfigDict:
    if arg.steps > 0:
        cfg.total_steps = arg.steps
    return cfg


def second_optimizer(lr: float = 1e-4, **overrides) -> ml_collections.ConfigDict:
    """The optimizer of a fake score network or a discriminator (its own, not the generator's)."""
    return optimizer_config(lr=lr, schedule="constant", warmup_steps=0, grad_clip=1.0, b1=0.0, b2=0.99,
                            **overrides)
