"""Pixel-space pretraining on `digit_scenes` at 32x32 (RGB): the base of the data-technique studies.

    python -m seedjax.main --config=experiments/seedream/scenes_pretrain.py --workdir=runs/scenes

The quickstart's small MMDiT and text encoder (4x4 patches -> 64 image tokens), trained on
generated colored digit scenes. `defect_aware.py` changes only the data; `dual_axis.py` also
makes the model predict the clean image and uses 24x24 scenes with large digits.
"""

from experiments.common import link_widths, make_tiny, small_text_to_image
from seedjax.config import parse_arg


def scenes_config(steps: int = 4000, variant: str = "default", image_size: int = 32, patch: int = 4):
    cfg = small_text_to_image(num_heads=4)
    cfg.input.patch_size = patch
    cfg.data.source = "digit_scenes"
    cfg.data.image_size = image_size
    cfg.data.channels = 3
    cfg.data.max_text_len = 48
    cfg.data.scenes.num_samples = 20_000
    cfg.total_steps = steps
    cfg.checkpoint_every = 1000
    cfg.sample_every = steps
    cfg.eval_every = 0
    cfg.num_samples = 16
    if variant == "tiny":
        make_tiny(cfg)
        cfg.data.scenes.num_samples = 256
    elif variant != "default":
        raise ValueError(f"unknown variant {variant!r} (default | tiny)")
    link_widths(cfg)
    return cfg


def get_config(arg=None):
    arg = parse_arg(arg, variant="default", steps=4000)
    return scenes_config(arg.steps, arg.variant)
