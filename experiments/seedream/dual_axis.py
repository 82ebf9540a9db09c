"""Seedream 3.0 dual-axis collaborative sampling on long-tailed `digit_scenes`.

    python -m seedjax.main --config=experiments/seedream/dual_axis.py:sampling=off --workdir=runs/dual_off
    python -m seedjax.main --config=experiments/seedream/dual_axis.py:sampling=on --workdir=runs/dual_on
    python -m data_pipelines.cli.measure dual_axis --off=runs/dual_off --on=runs/dual_on

Digits and colors follow a Zipf law (exponent 1.5: digit 0 and red are half of the data, 9 and
purple about 1.5%), one object per scene. sampling=on draws images with the dual-axis weights
(joint visual x TF-IDF cluster count ** -1); sampling=off draws them uniformly.

The study is sized so that a CPU-trained generator draws legible digits: 24x24 scenes whose one
digit fills 70-85% of the side, 4x4 patches (36 image tokens), and an MMDiT that predicts the
clean image (`model.prediction='x0'`; with velocity prediction the samples were still patchy
noise after 2000 steps, BENCHMARKS.md). `size=N,patch=P` change the resolution and patch size.

Each run is 3000 steps by default (`steps=N` changes it): about 55 minutes for both runs side by
side on 2 CPU cores. Results in BENCHMARKS.md.
"""

from experiments.seedream.scenes_pretrain import scenes_config
from seedjax.config import parse_arg


def get_config(arg=None):
    arg = parse_arg(arg, sampling="on", variant="default", steps=3000, size=24, patch=4)
    if arg.sampling not in ("on", "off"):
        raise ValueError(f"sampling must be on or off, got {arg.sampling!r}")
    cfg = scenes_config(arg.steps, arg.variant, arg.size, arg.patch)
    cfg.model.prediction = "x0"
    cfg.data.scenes.long_tail = 1.5
    cfg.data.scenes.max_objects = 1
    cfg.data.scenes.object_size_min = 0.7
    cfg.data.scenes.object_size_max = 0.85
    if arg.variant != "tiny":
        cfg.data.scenes.num_samples = 10_000
    cfg.data.dual_axis.enabled = arg.sampling == "on"
    cfg.data.dual_axis.alpha = 1.0
    return cfg
