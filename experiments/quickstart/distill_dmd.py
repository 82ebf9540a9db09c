"""Quickstart distribution matching: DMDO (6 NFE, Hyper-Bagel) or DMD2 (1 NFE, the DMDX paper's baseline).

    python -m seedjax.main --config=experiments/quickstart/distill_dmd.py:dmdo --workdir=runs/qs/dmdo \
        --config.init_from=runs/qs/tscd
    python -m seedjax.main --config=experiments/quickstart/distill_dmd.py:variant=quickstart,dmd=dmd2 \
        --workdir=runs/qs/dmd2 --config.init_from=runs/qs/adp

Args: `variant` quickstart | tiny, `dmd` dmdo | dmd2 (dmd2 = the one-step student with DMD2's
reference settings: 5 fake-score updates per generator update, GAN weights 5e-3 / 1e-2).
"""

from experiments.quickstart import _distill_common
from seedjax.schema.stages import discriminator_config, dmd_config


def get_config(arg=None):
    arg = _distill_common.parse(arg, dmd="dmdo")
    return configure(_distill_common.base("distill_dmd", arg), arg)


def configure(cfg, arg):
    """The stage's settings on top of a teacher's config (see _distill_common.base)."""
    cfg.distill.student_from = "ema"
    cfg.distill.teacher_from = "teacher"  # the CFG-distilled model, carried forward
    if arg.dmd == "dmdo":
        cfg.dmd = dmd_config(variant="dmdo", fake_updates_per_step=5, segments=3, gan_weight=0.0)  # TSCD's segments
        cfg.sampling.num_steps = 6
    elif arg.dmd == "dmd2":
        cfg.dmd = dmd_config(variant="dmd2", fake_updates_per_step=5, gan_weight=5e-3, gan_disc_weight=1e-2)
        cfg.sampling.num_steps = 1
    else:
        raise ValueError(f"dmd={arg.dmd!r}: choose dmdo or dmd2")
    cfg.disc = discriminator_config(levels=(-1,), head_hidden=128, loss="logistic")  # GAN heads on the fake score
    cfg.fake_optimizer = _distill_common.second_optimizer(lr=1e-4)
    cfg.optimizer.lr = 2e-5
    cfg.total_steps = 400
    cfg.log_every = 25
    cfg.checkpoint_every = 200
    if arg.variant == "tiny":
        cfg.dmd.fake_updates_per_step = 2
        cfg.disc.head_hidden = 32
        cfg.total_steps = 4
        cfg.log_every = 2
        cfg.checkpoint_every = 4
    return _distill_common.finish(cfg, arg)
