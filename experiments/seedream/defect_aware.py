"""Seedream 3.0 defect-aware training on `digit_scenes` with 30% of the images stamped.

    python -m seedjax.main --config=experiments/seedream/defect_aware.py:masking=on --workdir=runs/defects_on
    python -m seedjax.main --config=experiments/seedream/defect_aware.py:masking=off --workdir=runs/defects_off
    python -m data_pipelines.cli.measure defects --off=runs/defects_off --on=runs/defects_on

masking=on drops images whose stamps cover more than 20% of the image and masks the loss
inside the stamps of the others; masking=off trains on every image as it is.

Each run is 2000 steps by default (`steps=N` changes it): about 50 minutes for both runs side
by side on 2 CPU cores. Results in BENCHMARKS.md.
"""

from experiments.seedream.scenes_pretrain import scenes_config
from seedjax.config import parse_arg


def get_config(arg=None):
    arg = parse_arg(arg, masking="on", variant="default", steps=2000)
    if arg.masking not in ("on", "off"):
        raise ValueError(f"masking must be on or off, got {arg.masking!r}")
    cfg = scenes_config(arg.steps, arg.variant)
    cfg.data.scenes.defect_fraction = 0.3
    cfg.data.defects.enabled = arg.masking == "on"
    cfg.data.defects.max_area = 0.2
    return cfg
