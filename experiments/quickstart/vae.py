"""Quickstart VAE: a small f4c4 KL autoencoder on the bundled digits (32x32 grayscale), on CPU.

    python -m seedjax.main --config=experiments/quickstart/vae.py --workdir=runs/qs/vae
    python -m seedjax.main --config=experiments/quickstart/vae.py:tiny --workdir=/tmp/vae_tiny

Its latents (8x8x4 per digit) are what the latent-space quickstart MMDiT trains on:
`seedjax.train.params.load_codec(workdir)`. L1 + KL only: the perceptual
loss is off (a VGG16 on CPU would dominate the step time and no trained weights ship with
the repo) and so is the GAN (the latent MMDiT needs faithful reconstructions more than texture).

Variants: `quickstart` (default; a few CPU minutes) and `tiny` (seconds; CI).
"""

import data_pipelines
from seedjax.config import base_config, parse_arg
from seedjax.schema.evals import eval_entry, evals_config
from seedjax.schema.stages import vae_config


def get_config(arg=None):
    arg = parse_arg(arg, variant="quickstart", steps=-1)
    cfg = base_config(stage="vae")
    cfg.data = data_pipelines.default_config()
    cfg.data.source = "digits"
    cfg.data.image_size = 32
    cfg.vae = vae_config(
        "image", "f4c4", in_channels=1, base_channels=16, channel_mult=(1, 2, 2), layers_per_block=1, norm_groups=8
    )
    cfg.vae.loss.perceptual_weight = 0.0
    # GAN off (`tiny` turns it on so that CI exercises the whole loss).
    cfg.vae.loss.adversarial_start = 10**9
    cfg.vae.discriminator.update(channels=32, num_layers=2, norm_groups=8)
    cfg.vae.eval_images = 300
    cfg.evals = evals_config(reconstruction=eval_entry("reconstruction", num_images=0))  # 0: vae.eval_images
    cfg.optimizer.update(lr=2e-3, warmup_steps=50, end_lr_factor=0.05)
    cfg.ema_decay = 0.99
    cfg.batch_size = 32
    cfg.total_steps = 600
    cfg.log_every = 50
    cfg.checkpoint_every = 600
    cfg.sample_every = 600
    cfg.eval_every = 600
    cfg.num_samples = 16

    if arg.variant == "tiny":
        cfg.vae.model.base_channels = 8
        cfg.vae.loss.adversarial_start = 10
        cfg.batch_size = 8
        cfg.total_steps = 20
        cfg.log_every = 5
        cfg.checkpoint_every = 10
        cfg.sample_every = 20
        cfg.eval_every = 20
        cfg.num_samples = 4
        cfg.vae.eval_images = 32
        cfg.optimizer.warmup_steps = 5
    elif arg.variant != "quickstart":
        raise ValueError(f"unknown variant {arg.variant!r} (quickstart | tiny)")
    if arg.steps > 0:
        cfg.total_steps = arg.steps
    return cfg
