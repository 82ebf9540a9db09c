"""SeedVR2 one-step restoration: adversarial post-training of the multi-step restoration model.

    python -m seedjax.main --config=experiments/seedvr/restore_adversarial.py --workdir=runs/seedvr/restore_adversarial \\
        [--config.init_from=runs/seedvr/restore]
    python -m seedjax.tools.restore --workdir=runs/seedvr/restore_adversarial --input=my_videos/ --out=restored/

Generator and discriminator both start from the multi-step model's EMA (seedjax/stages/
restore_adversarial.py): RpGAN with approximate R1/R2 and feature matching; samples in one step.
Variants: `quickstart` (default) and `tiny` (CI); `steps=N`; `fm=W` (restore_gan.fm_weight).
"""

from experiments.quickstart._distill_common import second_optimizer
from experiments.seedvr._restore_common import restore_config
from seedjax.config import parse_arg
from seedjax.schema.stages import restore_gan_config


def get_config(arg=None):
    arg = parse_arg(arg, variant="quickstart", steps=-1, fm=1.0)
    cfg = restore_config(arg.variant)
    cfg.stage = "restore_adversarial"
    cfg.init_from = "runs/seedvr/restore"
    cfg.init_from_ema = True
    cfg.restore_gan = restore_gan_config(fm_weight=arg.fm)
    cfg.sampling.update(num_steps=1, schedule="uniform")
    cfg.optimizer.update(lr=5e-5, warmup_steps=0, schedule="constant", b1=0.0, b2=0.99)
    cfg.disc_optimizer = second_optimizer(lr=1e-4, weight_decay=0.0)
    cfg.ema_decay = 0.99
    if arg.variant == "quickstart":
        cfg.total_steps = 600
        cfg.checkpoint_every = 200
        cfg.sample_every = cfg.eval_every = 600
    else:
        cfg.restore_gan.head_hidden = 16
    if arg.steps > 0:
        cfg.total_steps = arg.steps
    return cfg
