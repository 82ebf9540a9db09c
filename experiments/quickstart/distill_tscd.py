"""Quickstart TSCD: trajectory-segmented consistency (3 segments) toward a 6-NFE student.

    python -m seedjax.main --config=experiments/quickstart/distill_tscd.py --workdir=runs/qs/tscd \
        --config.init_from=runs/qs/cfg

`:loss=adversarial` trains with the discriminator only (Hyper-Bagel's choice), `:loss=both`
adds it to the MSE; the default is MSE.
"""

from experiments.quickstart import _distill_common
from seedjax.schema.stages import discriminator_config, tscd_config


def get_config(arg=None):
    arg = _distill_common.parse(arg, loss="mse")
    return configure(_distill_common.base("distill_tscd", arg), arg)


def configure(cfg, arg):
    """The stage's settings on top of a teacher's config (see _distill_common.base)."""
    cfg.distill.student_from = "ema"
    cfg.distill.teacher_from = "ema"  # the CFG-distilled model is the teacher from here on
    cfg.tscd = tscd_config(segments=3, grid_steps=48)
    if arg.loss not in ("mse", "adversarial", "both"):
        raise ValueError(f"loss={arg.loss!r}: choose mse, adversarial or both")
    cfg.tscd.mse_weight = 0.0 if arg.loss == "adversarial" else 1.0
    cfg.tscd.adversarial_weight = 0.0 if arg.loss == "mse" else 0.1
    cfg.disc = discriminator_config(levels=(0, 1, 2, 3), head_hidden=128, train_backbone=True)
    cfg.disc_optimizer = _distill_common.second_optimizer(lr=1e-4)
    cfg.sampling.num_steps = 6
    cfg.sampling.schedule = "uniform"
    cfg.optimizer.lr = 1e-4
    cfg.total_steps = 800
    cfg.log_every = 50
    cfg.checkpoint_every = 400
    if arg.variant == "tiny":
        cfg.disc.levels = (0, 1)
        cfg.disc.head_hidden = 32
        cfg.total_steps = 4
        cfg.log_every = 2
        cfg.checkpoint_every = 4
    return _distill_common.finish(cfg, arg)
