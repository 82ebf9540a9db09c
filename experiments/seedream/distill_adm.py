"""Seedream (digit_scenes) ADM for 1 NFE, from ADP (Seedream 4.0's ADP -> ADM)."""

from experiments.quickstart import distill_adm, _distill_common
from experiments.seedream.scenes_pretrain import scenes_config


def get_config(arg=None):
    arg = _distill_common.parse(arg)
    return distill_adm.configure(_distill_common.base("distill_adm", arg, teacher=scenes_config()), arg)
