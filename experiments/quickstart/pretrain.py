"""Quickstart: text-to-image flow matching on the bundled handwritten digits, on CPU.

    python -m seedjax.main --config=experiments/quickstart/pretrain.py --workdir=runs/qs/pretrain
    python -m seedjax.main --config=experiments/quickstart/pretrain.py:tiny --workdir=/tmp/tiny

Variants: `quickstart` (default; the few-minute CPU run behind launch/quickstart.sh) and
`tiny` (seconds; CI). Pixel space, 16x16 grayscale (the glyphs are 8x8 at heart), 4x4
patches -> 16 image tokens; the captions are byte tokens (up to 32).
"""

from experiments.common import diffusion_model_config, link_widths, make_tiny
from seedjax.config import parse_arg


def get_config(arg=None):
    arg = parse_arg(arg, variant="quickstart", steps=-1)
    cfg = diffusion_model_config("pretrain", model_preset="tiny")
    cfg.data.source = "digits"
    cfg.data.image_size = 16
    cfg.data.max_text_len = 32
    cfg.input.patch_size = 4
    cfg.text.width = 96
    cfg.text.depth = 2
    cfg.text.num_heads = 3
    cfg.model.num_heads = 3
    cfg.model.head_dim = 32
    cfg.model.axes_dims_rope = (8, 12, 12)
    cfg.model.depth_double = 2
    cfg.model.depth_single = 2
    cfg.diffusion.cfg_dropout = 0.1
    cfg.sampling.num_steps = 30
    cfg.sampling.guidance_scale = 3.0
    cfg.optimizer.lr = 1e-3
    cfg.optimizer.warmup_steps = 100
    cfg.optimizer.schedule = "cosine"
    cfg.optimizer.end_lr_factor = 0.1
    cfg.optimizer.weight_decay = 0.0
    cfg.ema_decay = 0.995
    cfg.batch_size = 64
    cfg.total_steps = 1200
    cfg.log_every = 100
    cfg.checkpoint_every = 400
    cfg.sample_every = 600
    cfg.eval_every = 1200  # at the end
    cfg.num_samples = 20
    cfg.eval.num_prompts = 300

    if arg.variant == "tiny":
        make_tiny(cfg)
    elif arg.variant != "quickstart":
        raise ValueError(f"unknown variant {arg.variant!r} (quickstart | tiny)")
    if arg.steps > 0:
        cfg.total_steps = arg.steps
    link_widths(cfg)
    return cfg
