"""Quickstart ADM: adversarial distribution matching of the one-step generator (from ADP).

    python -m seedjax.main --config=experiments/quickstart/distill_adm.py --workdir=runs/qs/adm \
        --config.init_from=runs/qs/adp
"""

from experiments.quickstart import _distill_common
from seedjax.schema.stages import adm_config, discriminator_config, dmd_config


def get_config(arg=None):
    arg = _distill_common.parse(arg)
    return configure(_distill_common.base("distill_adm", arg), arg)


def configure(cfg, arg):
    """The stage's settings on top of a teacher's config (see _distill_common.base)."""
    cfg.distill.student_from = "ema"
    cfg.distill.teacher_from = "teacher"
    cfg.adm = adm_config(ode_dt=1.0 / 64)
    cfg.dmd = dmd_config(variant="dmd2", fake_updates_per_step=5, gan_weight=0.0)  # the fake score, as in DMD2
    cfg.disc = discriminator_config(levels=(0, 1, 2, 3), head_hidden=128, train_backbone=False, loss="hinge")
    cfg.fake_optimizer = _distill_common.second_optimizer(lr=1e-4)
    cfg.disc_optimizer = _distill_common.second_optimizer(lr=1e-4)
    cfg.sampling.num_steps = 1
    cfg.optimizer.lr = 2e-5
    cfg.total_steps = 400
    cfg.log_every = 25
    cfg.checkpoint_every = 200
    if arg.variant == "tiny":
        cfg.dmd.fake_updates_per_step = 2
        cfg.disc.levels = (0, 1)
        cfg.disc.head_hidden = 32
        cfg.total_steps = 4
        cfg.log_every = 2
        cfg.checkpoint_every = 4
    return _distill_common.finish(cfg, arg)
