"""Quickstart: text-to-image flow matching on the bundled handwritten digits, on CPU.

    python -m seedjax.main --config=experiments/quickstart/pretrain.py --workdir=runs/qs/pretrain
    python -m seedjax.main --config=experiments/quickstart/pretrain.py:fast --workdir=runs/quickstart/pretrain
    python -m seedjax.main --config=experiments/quickstart/pretrain.py:tiny --workdir=/tmp/tiny

Variants: `quickstart` (default; 1200 steps, the first stage of `bash launch/quickstart.sh full`
and the model the SFT, RLHF and distillation configs start from), `fast` (the one-stage
`bash launch/quickstart.sh`: a shorter schedule at a higher learning rate with a shorter EMA,
sampled and evaluated once at the end; see BENCHMARKS.md) and `tiny` (seconds; CI). Pixel
space, 16x16 grayscale (the glyphs are 8x8 at heart), 4x4 patches -> 16 image tokens; the
captions are byte tokens (up to 32).
"""

from experiments.common import link_widths, make_tiny, small_text_to_image
from seedjax.config import parse_arg

# The `fast` variant (what `bash launch/quickstart.sh` runs): chosen by the pilot runs in BENCHMARKS.md.
FAST_STEPS, FAST_LR, FAST_WARMUP, FAST_EMA = 600, 3e-3, 50, 0.98


def get_config(arg=None):
    arg = parse_arg(arg, variant="quickstart", steps=-1)
    cfg = small_text_to_image(num_heads=3)
    cfg.data.source = "digits"
    cfg.data.image_size = 16
    cfg.data.max_text_len = 32
    cfg.total_steps = 1200
    cfg.checkpoint_every = 400
    cfg.sample_every = 600
    cfg.eval_every = 1200  # at the end
    cfg.num_samples = 20
    cfg.eval.num_prompts = 300

    if arg.variant == "tiny":
        make_tiny(cfg)
    elif arg.variant == "fast":
        steps = arg.steps if arg.steps > 0 else FAST_STEPS
        cfg.total_steps = steps
        cfg.optimizer.update(lr=FAST_LR, warmup_steps=FAST_WARMUP)
        # The EMA is what samples: 0.995 would still lean on the weights of ~200 steps ago,
        # before the model has learnt to follow the caption (600 steps: prompt accuracy 0.54
        # at EMA 0.995 and lr 1e-3, 0.82 at EMA 0.99, 0.88 with lr 2e-3, 0.95 with 3e-3 and EMA 0.98).
        cfg.ema_decay = FAST_EMA
        cfg.checkpoint_every = steps // 2
        cfg.sample_every = steps  # one grid, at the end (each sampling costs a compile)
        cfg.eval_every = steps
    elif arg.variant != "quickstart":
        raise ValueError(f"unknown variant {arg.variant!r} (quickstart | fast | tiny)")
    if arg.steps > 0:
        cfg.total_steps = arg.steps
    link_widths(cfg)
    return cfg
