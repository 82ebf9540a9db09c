"""Quickstart: a reward model on the bundled digits (true vs perturbed captions, clean vs degraded images).

    python -m seedjax.main --config=experiments/quickstart/reward.py --workdir=runs/quickstart/reward
    python -m seedjax.main --config=experiments/quickstart/reward.py:tiny --workdir=/tmp/tiny_reward

Two heads: `alignment` (does the image show the caption's digit?) and `quality` (is the image
free of blur, noise, stamps and mosaic?). Held-out accuracy per head is logged as eval/*.
Variants: `quickstart` (default) and `tiny` (seconds; CI). `source=digit_scenes` trains on the
coloured scenes instead (perturbed digit, colour, count and position).
"""

import ml_collections

import data_pipelines
from seedjax.config import base_config, parse_arg
from seedjax.schema.evals import eval_entry, evals_config
from seedjax.schema.models import reward_model_config
from seedjax.schema.stages import reward_config


def get_config(arg=None):
    arg = parse_arg(arg, variant="quickstart", steps=-1, source="digits")
    cfg = base_config(stage="reward")
    cfg.data = data_pipelines.default_config()
    cfg.data.source = "reward_pairs"
    cfg.data.path = arg.source  # the labelled bundled source whose captions are perturbed
    cfg.data.image_size = 32
    cfg.data.max_text_len = 32 if arg.source == "digits" else 64
    cfg.reward_model = reward_model_config()
    cfg.reward_model.channels = data_pipelines.channels(cfg.data)
    cfg.reward_model.image_size = cfg.data.image_size
    cfg.reward_model.max_text_len = cfg.data.max_text_len
    # A 16-channel conv stem, then 8x8 patches: 16 image tokens next to the caption's 32.
    cfg.reward_model.update(stem_channels=16, patch_size=8, width=128, depth=3)
    cfg.reward = reward_config()
    cfg.eval = ml_collections.ConfigDict(dict(num_prompts=300, batch_size=100))
    cfg.evals = evals_config(accuracy=eval_entry("reward_accuracy", num_prompts=0, batch_size=0))
    cfg.optimizer.lr = 5e-4
    cfg.optimizer.warmup_steps = 100
    cfg.optimizer.end_lr_factor = 0.05
    cfg.optimizer.weight_decay = 0.01
    cfg.batch_size = 32
    cfg.total_steps = 1500
    cfg.log_every = 50
    cfg.checkpoint_every = 500
    cfg.eval_every = 500

    if arg.variant == "tiny":
        cfg.reward_model.width = 64
        cfg.reward_model.depth = 1
        cfg.reward_model.stem_channels = 8
        cfg.batch_size = 8
        cfg.total_steps = 10
        cfg.log_every = 5
        cfg.checkpoint_every = 10
        cfg.eval_every = 10
        cfg.eval.num_prompts = 16
        cfg.eval.batch_size = 8
        cfg.optimizer.warmup_steps = 2
    elif arg.variant != "quickstart":
        raise ValueError(f"unknown variant {arg.variant!r} (quickstart | tiny)")
    if arg.steps > 0:
        cfg.total_steps = arg.steps
    return cfg
