"""Quickstart CFG distillation: the digits teacher's guided velocity in one evaluation.

    python -m seedjax.main --config=experiments/quickstart/distill_cfg.py --workdir=runs/qs/cfg \
        --config.init_from=runs/qs/pretrain
"""

from experiments.quickstart import _distill_common
from seedjax.schema.stages import cfg_config


def get_config(arg=None):
    arg = _distill_common.parse(arg)
    return configure(_distill_common.base("distill_cfg", arg), arg)


def configure(cfg, arg):
    """The stage's settings on top of a teacher's config (see _distill_common.base)."""
    cfg.cfg_distill = cfg_config(guidance_min=1.0, guidance_max=5.0)
    cfg.distill.teacher_guidance_embed = False  # the pretrained teacher runs true CFG
    cfg.distill.student_from = "ema"
    cfg.distill.teacher_from = "ema"
    cfg.sampling.schedule = "flow"  # samples like the teacher (its step count), at half the NFE
    cfg.optimizer.lr = 2e-4
    cfg.total_steps = 600
    cfg.log_every = 50
    cfg.checkpoint_every = 300
    if arg.variant == "tiny":
        cfg.total_steps = 4
        cfg.log_every = 2
        cfg.checkpoint_every = 4
    return _distill_common.finish(cfg, arg)
