"""Quickstart ADP: a one-step generator pretrained adversarially on ODE pairs of the 6-NFE student.

    python -m seedjax.tools.ode_pairs --init_from=runs/qs/dmdo --workdir=runs/qs/ode_pairs --num=4096
    python -m seedjax.main --config=experiments/quickstart/distill_adp.py --workdir=runs/qs/adp \
        --config.init_from=runs/qs/dmdo --config.data.path=runs/qs/ode_pairs
"""

import data_pipelines
from experiments.quickstart import _distill_common
from seedjax.schema.models import patch_discriminator_config
from seedjax.schema.stages import adp_config, discriminator_config


def get_config(arg=None):
    arg = _distill_common.parse(arg)
    return configure(_distill_common.base("distill_adp", arg), arg)


def configure(cfg, arg):
    """The stage's settings on top of a teacher's config (see _distill_common.base)."""
    cfg.data.channels = data_pipelines.channels(cfg.eval.data)
    cfg.data.source = "shards"  # ODE pairs; data.path is set per run (the pipeline passes it)
    cfg.distill.student_from = "ema"
    cfg.distill.teacher_from = "teacher"
    cfg.adp = adp_config(regression_weight=1.0, adversarial_weight=0.1, latent_weight=0.85, pixel_weight=0.15)
    cfg.disc = discriminator_config(levels=(0, 1, 2, 3), head_hidden=128, train_backbone=True, t_min=0.0, t_max=1.0)
    cfg.pixel_disc = patch_discriminator_config(channels=32, num_layers=2, norm_groups=8)
    cfg.disc_optimizer = _distill_common.second_optimizer(lr=1e-4)
    cfg.sampling.num_steps = 1
    cfg.optimizer.lr = 5e-5
    cfg.total_steps = 600
    cfg.log_every = 50
    cfg.checkpoint_every = 300
    if arg.variant == "tiny":
        cfg.disc.levels = (0, 1)
        cfg.disc.head_hidden = 32
        cfg.pixel_disc.channels = 8
        cfg.total_steps = 4
        cfg.log_every = 2
        cfg.checkpoint_every = 4
    return _distill_common.finish(cfg, arg)
