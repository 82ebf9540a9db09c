"""Seedream (digit_scenes) ADP: the one-step generator on ODE pairs of the 6-NFE student.

    python -m seedjax.tools.ode_pairs --init_from=runs/scenes_distill/dmdo --workdir=runs/scenes_distill/ode_pairs
    python -m seedjax.main --config=experiments/seedream/distill_adp.py --workdir=runs/scenes_distill/adp \
        --config.init_from=runs/scenes_distill/dmdo --config.data.path=runs/scenes_distill/ode_pairs
"""

from experiments.quickstart import distill_adp, _distill_common
from experiments.seedream.scenes_pretrain import scenes_config


def get_config(arg=None):
    arg = _distill_common.parse(arg)
    return distill_adp.configure(_distill_common.base("distill_adp", arg, teacher=scenes_config()), arg)
