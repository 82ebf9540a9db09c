"""Multi-shot text-to-video on moving digits: 2-3 shots with hard cuts, one caption per shot.

    python -m seedjax.main --config=experiments/seedance/multishot.py --workdir=runs/seedance/multishot
    python -m seedjax.main --config=experiments/seedance/multishot.py:tiny --workdir=/tmp/multishot_tiny

Half of the training clips have 2-3 shots; every shot's caption is encoded on its own and
placed by the multi-shot MM-RoPE before its frames, and in the spatial layers each frame
attends only to its own shot's caption. Judged per shot (`video/shot_accuracy`).
"""

from experiments.seedance._video_common import video_config
from seedjax.config import parse_arg


def get_config(arg=None):
    arg = parse_arg(arg, variant="quickstart", steps=-1)
    cfg = video_config(arg.variant, multishot=True)
    if arg.steps > 0:
        cfg.total_steps = arg.steps
    return cfg
