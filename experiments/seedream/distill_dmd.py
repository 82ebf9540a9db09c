"""Seedream (digit_scenes) DMDO (6 NFE) or DMD2 (1 NFE) (args as experiments/quickstart/distill_dmd.py)."""

from experiments.quickstart import distill_dmd, _distill_common
from experiments.seedream.scenes_pretrain import scenes_config


def get_config(arg=None):
    arg = _distill_common.parse(arg, dmd="dmdo")
    return distill_dmd.configure(_distill_common.base("distill_dmd", arg, teacher=scenes_config()), arg)
