"""Image-to-video on moving digits: T2I, T2V and I2V in one model (Seedance's unified tasks).

    python -m seedjax.main --config=experiments/seedance/i2v.py --workdir=runs/seedance/i2v
    python -m seedjax.main --config=experiments/seedance/i2v.py:condition=timestep --workdir=runs/seedance/i2v_ts
    python -m seedjax.main --config=experiments/seedance/i2v.py:tiny --workdir=/tmp/i2v_tiny

`condition=concat` (default): the clean first frame and a mask concatenated along channels;
`condition=timestep`: per-frame timesteps with the first frame clean at t = 0 (Wan2.2 TI2V).
Seedance trains 20% then 40% of video examples as I2V; here 40% throughout. Samples and the
`video_prompts` judges condition on the first frame of held-out clips (first-frame PSNR).
"""

from experiments.seedance._video_common import video_config
from seedjax.config import parse_arg


def get_config(arg=None):
    arg = parse_arg(arg, variant="quickstart", steps=-1, condition="concat")
    cfg = video_config(arg.variant, condition=arg.condition, i2v_fraction=0.4)
    if arg.steps > 0:
        cfg.total_steps = arg.steps
    return cfg
