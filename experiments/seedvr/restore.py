"""SeedVR restoration, multi-step: a flow-matching video DiT conditioned on degraded clips, on CPU.

    python -m seedjax.main --config=experiments/seedvr/restore.py --workdir=runs/seedvr/restore
    python -m seedjax.main --config=experiments/seedvr/restore.py:tiny --workdir=/tmp/restore_tiny
    python -m seedjax.tools.restore --workdir=runs/seedvr/restore --input=my_videos/ --out=restored/

The pretraining stage with `diffusion.restore` (seedjax/diffusion/tasks.py): x_t of the clean clip
beside its degraded copy and a mask channel; samples with 25 Euler steps from noise. Variants:
`quickstart` (default) and `tiny` (CI); `steps=N`; `rule=adaptive|fixed|grow` (model.window.rule).
See experiments/seedvr/_restore_common.py for the data, degradations and windows.
"""

from experiments.seedvr._restore_common import restore_config
from seedjax.config import parse_arg


def get_config(arg=None):
    arg = parse_arg(arg, variant="quickstart", steps=-1, rule="adaptive")
    cfg = restore_config(arg.variant)
    cfg.model.window.rule = arg.rule
    if arg.steps > 0:
        cfg.total_steps = arg.steps
    return cfg
