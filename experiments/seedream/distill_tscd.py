"""Seedream (digit_scenes) TSCD, 3 segments toward 6 NFE (args as experiments/quickstart/distill_tscd.py)."""

from experiments.quickstart import distill_tscd, _distill_common
from experiments.seedream.scenes_pretrain import scenes_config


def get_config(arg=None):
    arg = _distill_common.parse(arg, loss="mse")
    return distill_tscd.configure(_distill_common.base("distill_tscd", arg, teacher=scenes_config()), arg)
