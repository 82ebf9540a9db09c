"""AAPT stage 2: consistency distillation of the adapted block-causal video DiT to 1 NFE a frame.

    python -m seedjax.main --config=experiments/seedance/aapt_consistency.py --workdir=runs/seedance/aapt_consistency \\
        [--config.init_from=runs/seedance/aapt_adapt]
    python -m seedjax.tools.stream --workdir=runs/seedance/aapt_consistency --prompt="a red 3 moving left" --frames=32

The adaptation stage's model and data (experiments/seedance/aapt_adapt.py, same variant), clips
only; the adapted model's EMA becomes both the frozen teacher and the student
(seedjax/stages/aapt_consistency.py). Samples and the video judges run the student at one
evaluation a latent frame (`sampling.num_steps = 1`).

Variants: `quickstart` (default) and `tiny` (CI); `steps=N`, `window=W` (as aapt_adapt's).
"""

from experiments.seedance._video_common import causal_video_config, clips_only
from seedjax.config import parse_arg
from seedjax.schema.stages import aapt_config, distill_config
from seedjax.schema.training import optimizer_config


def distill_base(stage: str, variant: str, window: int, teacher_from: str):
    """What both AAPT distillation stages share: the causal model, clips, 1 NFE, no guidance."""
    cfg = causal_video_config(variant, window)
    clips_only(cfg)
    cfg.stage = stage
    cfg.distill = distill_config(guidance=1.0, teacher_guidance=1.0, teacher_guidance_embed=False,
                                 student_from="ema", teacher_from=teacher_from)
    cfg.aapt = aapt_config()
    cfg.sampling.update(num_steps=1, use_ema=True)
    cfg.optimizer = optimizer_config(lr=2e-4, schedule="constant", warmup_steps=20, grad_clip=1.0, weight_decay=0.0)
    cfg.ema_decay = 0.99
    if variant == "quickstart":
        cfg.total_steps = 400
        cfg.checkpoint_every = cfg.sample_every = cfg.eval_every = 400
    else:
        cfg.batch_size = 4
        cfg.total_steps = cfg.checkpoint_every = cfg.sample_every = cfg.eval_every = 4
        cfg.aapt.grid_steps = 4
        cfg.optimizer.warmup_steps = 0
    return cfg


def get_config(arg=None):
    arg = parse_arg(arg, variant="quickstart", steps=-1, window=0)
    # The adapted model (the pretraining stage's checkpoint: 'model' and 'ema') is teacher and student.
    cfg = distill_base("aapt_consistency", arg.variant, arg.window, teacher_from="ema")
    cfg.init_from = "runs/seedance/aapt_adapt"
    if arg.steps > 0:
        cfg.total_steps = arg.steps
    return cfg
