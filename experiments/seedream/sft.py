"""Seedream 3.0 SFT on `digit_scenes`: high-contrast images with detailed captions, from scene pretraining.

    python -m seedjax.main --config=experiments/seedream/sft.py --workdir=runs/scenes_sft \
        --config.init_from=runs/scenes

The model and data are experiments/seedream/scenes_pretrain.py's; the curated subset is
`data.filter` (default: contrast >= 0.177, the top 30% of scenes, and captions of at least 30
characters, i.e. two or three objects with their relation), sampled resolution-balanced at a
fifth of pretraining's learning rate. eval/target_share: the share of generated scenes with that
contrast. Variants: `default` and `tiny` (CI).
"""

from experiments.common import make_ci_run
from experiments.seedream.scenes_pretrain import scenes_config
from seedjax.config import parse_arg
from seedjax.schema.evals import generator_entry
from seedjax.schema.stages import sft_config


def get_config(arg=None):
    arg = parse_arg(arg, variant="default", steps=600, filter="contrast >= 0.177 and len(caption) >= 30",
                    target="contrast >= 0.177")
    cfg = scenes_config(arg.steps)
    cfg.stage = "sft"
    cfg.sft = sft_config(target=arg.target)
    cfg.evals.target_share = generator_entry("target_share")  # on the generator entry's samples
    cfg.data.filter = arg.filter
    cfg.data.balance_resolutions = True
    cfg.init_from_ema = True
    cfg.ema_decay = 0.99
    cfg.optimizer.lr = 2e-4
    cfg.optimizer.warmup_steps = 20
    cfg.optimizer.schedule = "constant"
    cfg.eval_every = arg.steps
    cfg.eval.num_prompts = 300
    if arg.variant == "tiny":
        make_ci_run(cfg, steps=4, batch_size=8)
    elif arg.variant != "default":
        raise ValueError(f"unknown variant {arg.variant!r} (default | tiny)")
    return cfg
