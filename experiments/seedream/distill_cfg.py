"""Seedream (digit_scenes) CFG distillation: the quickstart recipe on the scenes teacher.

    python -m seedjax.main --config=experiments/seedream/distill_cfg.py --workdir=runs/scenes_distill/cfg \
        --config.init_from=runs/scenes

The whole chain: experiments/seedream/distill_pipeline.py.
"""

from experiments.quickstart import distill_cfg, _distill_common
from experiments.seedream.scenes_pretrain import scenes_config


def get_config(arg=None):
    arg = _distill_common.parse(arg)
    return distill_cfg.configure(_distill_common.base("distill_cfg", arg, teacher=scenes_config()), arg)
