"""Seedream 4.0-style high-compression image VAE (f16c64 by default) at 256x256.

    python -m seedjax.main --config=experiments/seedream/vae.py:data_path=/data/shards,vgg=/weights/vgg16.safetensors \\
        --workdir=runs/seedream/vae

Args: `variant` (default | tiny), `preset` (f8c16 | f16c64 | f32c128 | any fNcM), `data_path` (ArrayRecord shards from
`python -m data_pipelines.cli.prepare`, or an image folder with `data_source=folder`), `vgg`
(a local torchvision VGG16 state dict for the perceptual loss; empty = the random-feature
fallback, logged), `lpips` (optional LPIPS heads), `diffusers` (optional local diffusers
AutoencoderKL directory to start from; its layout must match the preset).

The recipe is the LDM one: L1 + 1e-6 KL + perceptual, the PatchGAN from step 50k with the
adaptive weight, EMA. Images are split into bands along the `sequence` mesh axis when
`config.mesh.sequence` > 1 (`vae_height` rule).
"""

from seedjax.config import base_config, parse_arg
from seedjax.schema.evals import eval_entry, evals_config
from seedjax.schema.stages import vae_config


def get_config(arg=None):
    arg = parse_arg(arg, preset="f16c64", data_path="", data_source="shards", vgg="", lpips="", diffusers="",
                    steps=200_000, variant="default")
    import data_pipelines

    cfg = base_config(stage="vae")
    cfg.data = data_pipelines.default_config()
    cfg.data.source = arg.data_source
    cfg.data.path = arg.data_path
    cfg.data.image_size = 256
    cfg.data.channels = 3
    cfg.vae = vae_config("image", arg.preset, base_channels=128, layers_per_block=2)
    cfg.vae.diffusers_weights = arg.diffusers
    cfg.vae.perceptual.weights = arg.vgg
    cfg.vae.perceptual.lpips_weights = arg.lpips
    cfg.vae.loss.adversarial_start = 50_000
    cfg.vae.eval_images = 512
    cfg.evals = evals_config(reconstruction=eval_entry("reconstruction", num_images=0))  # 0: vae.eval_images
    cfg.optimizer.update(name="adam", lr=1e-4, b1=0.5, b2=0.9, schedule="constant", warmup_steps=1000, grad_clip=1.0)
    cfg.ema_decay = 0.999
    cfg.batch_size = 32
    cfg.total_steps = arg.steps
    cfg.log_every = 100
    cfg.checkpoint_every = 5000
    cfg.sample_every = 5000
    cfg.eval_every = 10_000
    cfg.num_samples = 8
    cfg.sharding.rules.vae_height = "sequence"
    if arg.variant == "tiny":  # the same recipe on bundled digits at 32x32 (seconds; CI)
        cfg.data.source = "digits"
        cfg.data.image_size = 32
        cfg.vae.model.update(base_channels=8, norm_groups=8)
        cfg.vae.discriminator.update(channels=16, norm_groups=8)
        cfg.vae.loss.adversarial_start = 10
        cfg.vae.eval_images = 32
        cfg.update(batch_size=8, total_steps=20, log_every=5, checkpoint_every=10, sample_every=20, eval_every=20,
                   num_samples=4)
        cfg.optimizer.warmup_steps = 5
    elif arg.variant != "default":
        raise ValueError(f"unknown variant {arg.variant!r} (default | tiny)")
    return cfg
