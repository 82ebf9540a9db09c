"""A KL autoencoder (VAE) on your own images: an image folder or a JSONL manifest.

    python -m seedjax.main --config=experiments/custom/folder_vae.py:path=/data/images --workdir=runs/mine_vae
    python -m seedjax.main --config=experiments/custom/folder_vae.py:tiny --workdir=/tmp/vae_tiny \
        --config.data.path=/data/images

The data is read as by `folder_pretrain.py` (same args `path`, `source`, `size`; captions are
required by the folder layout but unused here). Its evaluation reports the reconstruction PSNR
and SSIM of held-out images from the same data (`eval/psnr`, `eval/ssim` in metrics.jsonl),
which mean the same for any images; sample grids show originals above reconstructions.
Its latents are what `folder_latent_pretrain.py` trains on (`folder_latent_pipeline.py` runs
VAE -> cached latents -> latent MMDiT in one command).

Args: `variant`, `path`, `source`, `size` and `steps` as in folder_pretrain.py, plus `factor`
(spatial downsampling, a power of two; -1 = the variant's) and `latents` (latent channels;
-1 = the variant's):

* `default`: f8c4 on 64x64 (8x8x4 latents), a few CPU minutes per thousand steps.
* `tiny`: f4c4 on 32x32 (8x8x4 latents), seconds (CI).
* `base`: f8c16 on 256x256 (32x32x16 latents) for a cluster, GAN from step 50k.

L1 + KL, plus a PatchGAN from `vae.loss.adversarial_start`. The perceptual loss is off: no
VGG16 weights ship with the repo; give a local torchvision VGG16 state dict with
`--config.vae.perceptual.weights=FILE --config.vae.loss.perceptual_weight=1.0` to turn it on.
"""

import data_pipelines
from experiments.custom.folder_pretrain import VARIANTS, source_for
from seedjax.config import base_config, parse_arg
from seedjax.schema.evals import eval_entry, evals_config
from seedjax.schema.stages import vae_config

DEFAULT_SIZE = {"default": 64, "tiny": 32, "base": 256}
DEFAULT_FACTOR = {"default": 8, "tiny": 4, "base": 8}
DEFAULT_LATENTS = {"default": 4, "tiny": 4, "base": 16}


def vae_shape(variant: str, size: int, factor: int, latents: int) -> tuple[int, int, int]:
    """(size, factor, latent channels) with -1 replaced by the variant's default."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r} ({' | '.join(VARIANTS)})")
    size = size if size > 0 else DEFAULT_SIZE[variant]
    factor = factor if factor > 0 else DEFAULT_FACTOR[variant]
    latents = latents if latents > 0 else DEFAULT_LATENTS[variant]
    if factor < 2 or factor & (factor - 1) or size % factor:
        raise ValueError(f"factor {factor} must be a power of two >= 2 that divides size {size}")
    return size, factor, latents


def get_config(arg=None):
    arg = parse_arg(arg, variant="default", path="", source="", size=-1, factor=-1, latents=-1, steps=-1)
    size, factor, latents = vae_shape(arg.variant, arg.size, arg.factor, arg.latents)
    cfg = base_config(stage="vae")
    cfg.data = data_pipelines.default_config()
    cfg.data.source = source_for(arg.path, arg.source)
    cfg.data.path = arg.path
    cfg.data.image_size = size
    cfg.data.channels = 3
    levels = factor.bit_length() - 1  # factor = 2 ** levels
    cfg.vae = vae_config("image", f"f{factor}c{latents}", in_channels=3, base_channels=32,
                         channel_mult=(1, 2, 2, 4, 4, 4, 4)[: levels + 1], layers_per_block=1, norm_groups=8)
    cfg.vae.loss.perceptual_weight = 0.0
    cfg.vae.loss.adversarial_start = 10**9  # GAN off for the CPU-sized run
    cfg.vae.discriminator.update(channels=32, num_layers=2, norm_groups=8)
    cfg.vae.eval_images = 64
    cfg.evals = evals_config(reconstruction=eval_entry("reconstruction", num_images=0))  # 0: vae.eval_images
    cfg.optimizer.update(lr=1e-3, warmup_steps=100, end_lr_factor=0.05)
    cfg.ema_decay = 0.999
    cfg.batch_size = 16
    cfg.total_steps = 3000
    cfg.log_every = 50
    cfg.checkpoint_every = 1000
    cfg.sample_every = 1000
    cfg.eval_every = 1000
    cfg.num_samples = 8

    if arg.variant == "tiny":
        cfg.vae.model.base_channels = 8
        cfg.vae.eval_images = 8
        cfg.batch_size = 4
        cfg.total_steps = 10
        cfg.log_every = 5
        cfg.checkpoint_every = 10
        cfg.sample_every = 10
        cfg.eval_every = 10
        cfg.num_samples = 4
        cfg.optimizer.warmup_steps = 2
    elif arg.variant == "base":
        cfg.vae.model.update(base_channels=128, channel_mult=(1, 2, 4, 4, 4, 4, 4)[: levels + 1], layers_per_block=2,
                             norm_groups=32, dtype="bfloat16")
        cfg.vae.loss.adversarial_start = 50_000
        cfg.vae.discriminator.update(channels=64, num_layers=3, norm_groups=32)
        cfg.vae.eval_images = 256
        cfg.optimizer.update(lr=1e-4, warmup_steps=1000)
        cfg.batch_size = 64
        cfg.total_steps = 200_000
        cfg.log_every = 100
        cfg.checkpoint_every = 2000
        cfg.sample_every = 5000
        cfg.eval_every = 5000
        cfg.mesh.update(data=-1, fsdp=1)
    if arg.steps > 0:
        cfg.total_steps = arg.steps
    return cfg
