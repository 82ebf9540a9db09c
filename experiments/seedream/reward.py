"""Seedream 3.0 reward model on `digit_scenes`: is the wrong digit, colour, count or position spotted?

    python -m seedjax.main --config=experiments/seedream/reward.py --workdir=runs/scenes_reward

Scaled up from the quickstart reward model (Seedream 3.0: quality improves as the reward model
grows): width 256, 6 layers, 48-channel stem. Trained on real scenes with perturbed captions
(one of digit / colour / count / position wrong) and degraded copies (blur, noise, stamp,
mosaic); held-out accuracy per head and per perturbation kind is logged as eval/*.
Variants: `default` and `tiny` (CI).
"""

from experiments.quickstart import reward as quickstart_reward
from seedjax.config import parse_arg


def get_config(arg=None):
    arg = parse_arg(arg, variant="default", steps=4000)
    cfg = quickstart_reward.get_config("variant=tiny,source=digit_scenes" if arg.variant == "tiny"
                                       else "source=digit_scenes")
    if arg.variant == "tiny":
        return cfg
    if arg.variant != "default":
        raise ValueError(f"unknown variant {arg.variant!r} (default | tiny)")
    cfg.reward_model.update(width=256, depth=6, num_heads=8, stem_channels=48)
    cfg.total_steps = arg.steps
    cfg.optimizer.lr = 3e-4
    cfg.optimizer.warmup_steps = 200
    cfg.eval_every = 1000
    cfg.checkpoint_every = 1000
    cfg.eval.num_prompts = 500
    return cfg
