"""Video quickstart: text-to-video (with text-to-image as one-frame clips) on moving digits, on CPU.

    python -m seedjax.main --config=experiments/seedance/t2v.py --workdir=runs/seedance/t2v
    python -m seedjax.main --config=experiments/seedance/t2v.py:tiny --workdir=/tmp/t2v_tiny
    python -m seedjax.main --config=experiments/seedance/t2v.py:attention=full_3d --workdir=runs/seedance/t2v_full3d

Variants: `quickstart` (default) and `tiny` (CI); `attention=full_3d` trains the full-attention
baseline with the same weights. See experiments/seedance/_video_common.py for the shared setup.
"""

from experiments.seedance._video_common import video_config
from seedjax.config import parse_arg


def get_config(arg=None):
    arg = parse_arg(arg, variant="quickstart", steps=-1, attention="decoupled")
    cfg = video_config(arg.variant)
    cfg.model.attention = arg.attention
    if arg.steps > 0:
        cfg.total_steps = arg.steps
    return cfg
