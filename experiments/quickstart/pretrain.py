"""Quickstart: text-to-image flow matching on the bundled handwritten digits, on CPU.

    python -m seedjax.main --config=experiments/quickstart/pretrain.py --workdir=runs/qs/pretrain
    python -m seedjax.main --config=experiments/quickstart/pretrain.py:tiny --workdir=/tmp/tiny

Variants: `quickstart` (default; the few-minute CPU run behind launch/quickstart.sh) and
`tiny` (seconds; CI). Pixel space, 16x16 grayscale (the glyphs are 8x8 at heart), 4x4
patches -> 16 image tokens; the captions are byte tokens (up to 32).
"""

from experiments.common import link_widths, make_tiny, small_text_to_image
from seedjax.config import parse_arg


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
    elif arg.variant != "quickstart":
        raise ValueError(f"unknown variant {arg.variant!r} (quickstart | tiny)")
    if arg.steps > 0:
        cfg.total_steps = arg.steps
    link_widths(cfg)
    return cfg
