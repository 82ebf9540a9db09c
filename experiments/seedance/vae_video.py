"""Seedance's causal video VAE, CPU-sized, on the bundled moving-digit clips.

    python -m seedjax.main --config=experiments/seedance/vae_video.py --workdir=runs/seedance/vae_video
    python -m seedjax.main --config=experiments/seedance/vae_video.py:tiny --workdir=/tmp/vae_video_tiny
    python -m data_pipelines.cli.prepare --source=moving_digits --vae=runs/seedance/vae_video \
        --data.image_size=16 --data.video.buckets=9x16x16 --data.video.max_shots=1 --out=runs/seedance/video_latents

Seedance 1.0 compresses 4x in time and 16x in space into 48 channels (`video_vae_config('t4s16c48')`);
`quickstart` uses 't2s4c8' on 16x16 clips of 9 = 1 + 2 * 4 frames: the first frame is encoded on its
own, then every 2 frames make one latent frame, so a clip is 5 latent frames of 4x4x8. Those latents
are what experiments/seedance/latent_t2v.py trains the video DiT on (1x1 patches: 16 tokens a frame,
as the pixel-space quickstart's 16x16 frames in 4x4 patches). `preset=t4s4c8` follows Seedance's
4x temporal compression (clips of 17 frames, still 5 latent frames); `tiny` is 't2s2c4' on 5-frame
clips (3 latent frames of 8x8x4), as few layers as CPU compilation allows.

L1 + KL (the perceptual loss is off: a VGG16 on CPU would dominate the step time and no trained
weights ship with the repo), with the hybrid frame/clip PatchGAN off in `quickstart` and on from
step 4 in `tiny` (so that a tiny run exercises the whole loss). The sample grid shows clips and their
reconstructions; training logs their PSNR (`psnr`). The `reconstruction` evaluator scores image
VAEs only, so there is no `config.evals` entry.

Variants: `quickstart` (default; 600 steps) and `tiny` (6 steps). Measured on 2 CPU cores shared
at load 9: the training loop's jitted initialisation and the 3D-conv train step compile in about
3.5 minutes, then quickstart trains at 0.47 steps/s (about 20 minutes; faster on an idle machine);
tiny is about 3 minutes in all, nearly all compilation, so tests/test_video_latent.py starts from a
random-initialised tiny VAE workdir instead of this stage.
"""

import re

import data_pipelines
from seedjax.config import base_config, parse_arg
from seedjax.schema.evals import evals_config
from seedjax.schema.stages import vae_config

SIZE = 16
PRESETS = {"quickstart": "t2s4c8", "tiny": "t2s2c4"}  # the VAE of each variant ('t{time}s{space}c{channels}')
LATENT_FRAMES = {"quickstart": 5, "tiny": 3}


def preset_factors(preset: str) -> tuple[int, int, int]:
    """'t2s4c8' -> (temporal factor, spatial factor, latent channels)."""
    m = re.fullmatch(r"t(\d+)s(\d+)c(\d+)", preset)
    if not m:
        raise ValueError(f"video VAE preset {preset!r} must look like 't2s4c8'")
    return int(m.group(1)), int(m.group(2)), int(m.group(3))


def clip_frames(preset: str, variant: str) -> int:
    """Pixel frames of the variant's clips: the causal VAE makes 1 + (F - 1) / t latent frames of them."""
    return 1 + preset_factors(preset)[0] * (LATENT_FRAMES[variant] - 1)


def get_config(arg=None):
    arg = parse_arg(arg, variant="quickstart", preset="", steps=-1)
    if arg.variant not in PRESETS:
        raise ValueError(f"unknown variant {arg.variant!r} (quickstart | tiny)")
    tiny = arg.variant == "tiny"
    preset = arg.preset or PRESETS[arg.variant]
    frames = clip_frames(preset, arg.variant)
    cfg = base_config(stage="vae")
    cfg.data = data_pipelines.default_config()
    cfg.data.update(source="moving_digits", image_size=SIZE, max_text_len=48)
    # One bucket of 1 + k * t frames (the causal VAE's clip lengths); single-shot clips.
    cfg.data.video.update(num_frames=frames, buckets=f"{frames}x{SIZE}x{SIZE}", max_shots=1, multishot_prob=0.0)
    # Narrow: XLA's 3D convolutions run at a few percent of a CPU's peak (16-64 wide: 0.1 steps/s).
    cfg.vae = vae_config("video", preset, in_channels=3, base_channels=8, layers_per_block=1, norm_groups=4,
                         mid_attention=False)
    cfg.vae.model.channel_mult = tuple(min(m, 2) for m in cfg.vae.model.channel_mult)
    cfg.vae.loss.perceptual_weight = 0.0
    cfg.vae.loss.adversarial_start = 10**9  # GAN off: the latent DiT needs faithful clips more than texture
    cfg.vae.discriminator.update(channels=8, num_layers=1, norm_groups=4)
    cfg.vae.eval_images = 0
    cfg.evals = evals_config()
    cfg.optimizer.update(lr=2e-3, warmup_steps=50, end_lr_factor=0.05)
    cfg.ema_decay = 0.99
    cfg.batch_size = 8
    cfg.total_steps = 600
    cfg.log_every = 50
    cfg.checkpoint_every = 600
    cfg.sample_every = 600
    cfg.num_samples = 4

    if tiny:
        cfg.vae.loss.adversarial_start = 4
        cfg.batch_size = 4
        cfg.total_steps = 6
        cfg.log_every = 2
        cfg.checkpoint_every = 6
        cfg.sample_every = 0  # CI: the latent DiT's samples decode through this VAE; no grid of its own
        cfg.optimizer.warmup_steps = 2
    if arg.steps > 0:
        cfg.total_steps = arg.steps
    return cfg
