"""AAPT stage 3: adversarial post-training with student forcing, 1 NFE a latent frame (R3GAN).

    python -m seedjax.main --config=experiments/seedance/aapt_adversarial.py --workdir=runs/seedance/aapt_adversarial \\
        [--config.init_from=runs/seedance/aapt_consistency]
    python -m seedjax.tools.stream --workdir=runs/seedance/aapt_adversarial --prompt="a red 3 moving left" --frames=32

The generator starts from the consistency stage's student (its EMA); the frame discriminator's
backbone from that stage's teacher, the adapted diffusion model (seedjax/stages/aapt_adversarial.py).
Each step rolls out `aapt.segments` (2) times the clip length, so half of what the discriminator
judges lies past the data's length.

Variants: `quickstart` (default) and `tiny` (CI); `steps=N`, `window=W` (as aapt_adapt's).
"""

from experiments.quickstart._distill_common import second_optimizer
from experiments.seedance.aapt_consistency import distill_base
from seedjax.config import parse_arg


def get_config(arg=None):
    arg = parse_arg(arg, variant="quickstart", steps=-1, window=0)
    cfg = distill_base("aapt_adversarial", arg.variant, arg.window, teacher_from="teacher")
    cfg.init_from = "runs/seedance/aapt_consistency"
    cfg.optimizer.update(lr=5e-5, b1=0.0, b2=0.99)
    cfg.disc_optimizer = second_optimizer(lr=1e-4, weight_decay=0.0)
    if arg.variant == "quickstart":  # a step rolls out, recomputes and judges 2 x 8 frames: half the batch
        cfg.batch_size = 16
        cfg.total_steps = cfg.checkpoint_every = cfg.sample_every = cfg.eval_every = 300
    else:
        cfg.aapt.head_hidden = 32
    if arg.steps > 0:
        cfg.total_steps = arg.steps
    return cfg
