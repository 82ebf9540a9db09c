"""Building blocks shared by experiment configs: a full diffusion-model config in one call."""

from __future__ import annotations

import ml_collections

import data_pipelines
from seedjax.config import base_config
from seedjax.schema.evals import evals_config, generator_eval
from seedjax.schema.models import mmdit_preset, text_config
from seedjax.schema.training import diffusion_config, input_config, sampling_config


def diffusion_model_config(stage: str = "pretrain", model_preset: str = "tiny", **overrides) -> ml_collections.ConfigDict:
    """Config for a stage that trains or uses the text encoder + MMDiT."""
    cfg = base_config(stage=stage)
    cfg.model = mmdit_preset(model_preset)
    cfg.text = text_config()
    cfg.data = data_pipelines.default_config()
    cfg.diffusion = diffusion_config()
    cfg.input = input_config()
    cfg.sampling = sampling_config()
    # REPA (Seedream 3.0 uses weight 0.5); needs model.repa_layer >= 0.
    cfg.repa = ml_collections.ConfigDict(dict(weight=0.0, encoder="classifier", encoder_seed=1,
                                                encoder_steps=600, projector_dim=256))
    cfg.ema_decay = 0.999
    cfg.init_from_ema = False
    cfg.eval = ml_collections.ConfigDict(dict(num_prompts=200, batch_size=100))  # the held-out prompts
    # What runs every eval_every steps: the digit judges on held-out prompts (your own images:
    # generator_eval('folder'), see experiments/custom/); stages add their own entries.
    cfg.evals = evals_config(generator=generator_eval("digits"))
    cfg.update(overrides)
    return cfg


def small_text_to_image(num_heads: int) -> ml_collections.ConfigDict:
    """The CPU-sized MMDiT (2 + 2 blocks of `num_heads` x 32) with its text encoder and recipe.

    Shared by the quickstart digits and the `digit_scenes` studies; callers set the data and
    the schedule, then call `link_widths`.
    """
    cfg = diffusion_model_config("pretrain", model_preset="tiny")
    cfg.input.patch_size = 4
    cfg.text.update(width=32 * num_heads, depth=2, num_heads=num_heads)
    cfg.model.update(num_heads=num_heads, head_dim=32, axes_dims_rope=(8, 12, 12), depth_double=2, depth_single=2)
    cfg.diffusion.cfg_dropout = 0.1
    cfg.sampling.update(num_steps=30, guidance_scale=3.0)
    cfg.optimizer.update(lr=1e-3, warmup_steps=100, schedule="cosine", end_lr_factor=0.1, weight_decay=0.0)
    cfg.ema_decay = 0.995
    cfg.batch_size = 64
    cfg.log_every = 100
    return cfg


def link_widths(cfg: ml_collections.ConfigDict) -> None:
    """Make the model's input and text widths agree with the data and the text encoder."""
    channels = data_pipelines.channels(cfg.data)
    cfg.model.in_channels = cfg.input.patch_size**2 * channels
    cfg.model.text_dim = cfg.text.width
    cfg.model.pooled_dim = cfg.text.width
    cfg.text.max_len = cfg.data.max_text_len


def make_tiny(cfg: ml_collections.ConfigDict) -> None:
    """Shrink a diffusion-model config so one run takes seconds on a CPU (the `tiny` variants; CI)."""
    cfg.model.depth_double = 1
    cfg.model.depth_single = 1
    cfg.text.depth = 1
    cfg.batch_size = 8
    cfg.total_steps = 20
    cfg.log_every = 5
    cfg.checkpoint_every = 10
    cfg.sample_every = 20
    cfg.eval_every = 0
    cfg.num_samples = 4
    cfg.sampling.num_steps = 4
    cfg.eval.num_prompts = 20
    cfg.optimizer.warmup_steps = 5


def make_ci_run(cfg: ml_collections.ConfigDict, steps: int, batch_size: int) -> None:
    """A few-step run that still logs, checkpoints and evaluates once (the `tiny` variants of
    fine-tuning stages; CI)."""
    cfg.update(total_steps=steps, batch_size=batch_size, log_every=max(steps // 2, 1), checkpoint_every=steps,
               sample_every=0, eval_every=steps)
    cfg.eval.update(num_prompts=batch_size, batch_size=batch_size)
    cfg.sampling.num_steps = 4
