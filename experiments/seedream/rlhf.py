"""Seedream 3.0 RLHF on `digit_scenes`: maximise the scene reward model's composite reward.

    python -m seedjax.main --config=experiments/seedream/rlhf.py --workdir=runs/scenes_rlhf \
        --config.init_from=runs/scenes_sft \
        --config.rlhf.reward_models=runs/scenes_reward#alignment:1,runs/scenes_reward#quality:0.25

The generator is experiments/seedream/scenes_pretrain.py's model (from SFT); the reward models
come from experiments/seedream/reward.py (several workdirs may be listed, each with a weight).
eval/*: the GenEval-style scene checks (digit, colour, count, position) of the independent
scorer and the reward of the same images. Variants: `default` and `tiny` (CI).
"""

from experiments.common import make_ci_run
from experiments.seedream.scenes_pretrain import scenes_config
from seedjax.config import parse_arg
from seedjax.schema.evals import generator_entry
from seedjax.schema.stages import rlhf_config


def get_config(arg=None):
    arg = parse_arg(arg, variant="default", steps=400)
    cfg = scenes_config(arg.steps)
    cfg.stage = "rlhf"
    cfg.rlhf = rlhf_config(num_prompts=16, num_steps=10, guidance_scale=cfg.sampling.guidance_scale,
                           shift=cfg.sampling.shift, grad_steps=1, stop_window=(0.1, 0.6), fm_weight=1.0)
    cfg.evals.reward = generator_entry("rlhf_reward")  # the reward models on the generator entry's samples
    cfg.init_from_ema = True
    cfg.ema_decay = 0.0
    cfg.sampling.use_ema = False
    cfg.optimizer.lr = 5e-5
    cfg.optimizer.warmup_steps = 10
    cfg.optimizer.schedule = "constant"
    cfg.batch_size = 32
    cfg.log_every = 10
    cfg.checkpoint_every = 100
    cfg.eval_every = 100
    cfg.eval.num_prompts = 300
    if arg.variant == "tiny":
        cfg.rlhf.update(num_prompts=2, num_steps=4, stop_window=(0.0, 0.8))
        make_ci_run(cfg, steps=4, batch_size=4)
    elif arg.variant != "default":
        raise ValueError(f"unknown variant {arg.variant!r} (default | tiny)")
    return cfg
