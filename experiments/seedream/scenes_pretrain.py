"""Pixel-space pretraining on `digit_scenes` at 32x32 (RGB): the base of the data-technique studies.

    python -m seedjax.main --config=experiments/seedream/scenes_pretrain.py --workdir=runs/scenes

The quickstart's small MMDiT and text encoder (4x4 patches -> 64 image tokens), trained on
generated colored digit scenes. `defect_aware.py` and `dual_axis.py` change only the data.
"""

from experiments.common import diffusion_model_config, link_widths, make_tiny
from seedjax.config import parse_arg


def scenes_config(steps: int = 4000, variant: str = "default"):
    cfg = diffusion_model_config("pretrain", model_preset="tiny")
    cfg.data.source = "digit_scenes"
    cfg.data.image_size = 32
    cfg.data.channels = 3
    cfg.data.max_text_len = 48
    cfg.data.scenes.num_samples = 20_000
    cfg.input.patch_size = 4
    cfg.text.width = 128
    cfg.text.depth = 2
    cfg.text.num_heads = 4
    cfg.model.num_heads = 4
    cfg.model.head_dim = 32
    cfg.model.axes_dims_rope = (8, 12, 12)
    cfg.model.depth_double = 2
    cfg.model.depth_single = 2
    cfg.diffusion.cfg_dropout = 0.1
    cfg.sampling.num_steps = 30
    cfg.sampling.guidance_scale = 3.0
    cfg.optimizer.lr = 1e-3
    cfg.optimizer.warmup_steps = 100
    cfg.optimizer.schedule = "cosine"
    cfg.optimizer.end_lr_factor = 0.1
    cfg.optimizer.weight_decay = 0.0
    cfg.ema_decay = 0.995
    cfg.batch_size = 64
    cfg.total_steps = steps
    cfg.log_every = 100
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
