"""Text-to-video in latent space: the video DiT on the causal video VAE's latents of moving digits.

    python -m seedjax.main --config=experiments/seedance/vae_video.py --workdir=runs/seedance/vae_video
    python -m data_pipelines.cli.prepare --source=moving_digits --vae=runs/seedance/vae_video --data.image_size=16 \
        --data.video.buckets=9x16x16 --data.video.max_shots=1 --out=runs/seedance/video_latents
    python -m seedjax.main --config=experiments/seedance/latent_t2v.py --workdir=runs/seedance/latent_t2v \
        --config.data.path=runs/seedance/video_latents --config.input.vae_workdir=runs/seedance/vae_video

or all three at once: `python -m seedjax.pipeline --pipeline=experiments/seedance/pipeline.py --only=vae_video,
latents,latent_t2v --workdir=runs/seedance`. The model, text encoder, schedule and judges are the
pixel-space video quickstart's (experiments/seedance/_video_common.py); what changes is what the DiT
denoises: a 9-frame 16x16 clip is 5 latent frames of 4x4x8 ('t2s4c8'), in 1x1 patches 16 tokens a
frame (the `tiny` VAE 't2s2c4': 3 latent frames of 8x8x4 in 2x2 patches). The clip batches come from
the latent shards (one (frames, height, width) bucket: prepare writes every clip at its longest
bucket, so there is no one-frame T2I bucket here). Sample grids and the `video_prompts` judges
decode the generated latents with the frozen video VAE back to data.video.num_frames pixel frames;
the held-out prompts are rendered moving digits at the pixel size (`eval.data`).

Args: `variant` quickstart | tiny (seconds; CI), `preset` (the vae_video run's preset when it was
not the variant's), `steps`, `i2v` (also image-to-video, as experiments/seedance/i2v.py: 40% of
the clips condition on their clean first latent frame; the causal VAE encodes pixel frame 0 alone,
so a given first image is encoded as a one-frame clip, and the judges report first-frame PSNR).
"""

import copy

from experiments.seedance import vae_video
from experiments.seedance._video_common import video_config
from seedjax.config import parse_arg

TOKENS_PER_SIDE = 4  # 4x4 tokens a frame, as the pixel quickstart's 16x16 frames in 4x4 patches


def get_config(arg=None):
    arg = parse_arg(arg, variant="quickstart", preset="", steps=-1, i2v=False)
    cfg = video_config(arg.variant, i2v_fraction=0.4 if arg.i2v else 0.0)
    preset = arg.preset or vae_video.PRESETS[arg.variant]
    _, spatial, channels = vae_video.preset_factors(preset)
    frames = vae_video.clip_frames(preset, arg.variant)
    size = cfg.data.image_size
    if size % (spatial * TOKENS_PER_SIDE):
        raise ValueError(f"preset {preset!r}: {size}x{size} frames do not make {TOKENS_PER_SIDE}x{TOKENS_PER_SIDE} "
                         "latent patches")
    # Pixel clips as the VAE saw them: the held-out prompts of video_prompts and the latents' buckets.
    cfg.data.video.update(num_frames=frames, buckets=f"{frames}x{size}x{size}", bucket_weights="")
    cfg.eval.data = copy.deepcopy(cfg.data)
    cfg.data.source = "shards"  # data.path: the cached latents (the pipeline passes it)
    cfg.input.key = "latent"
    cfg.input.patch_size = size // spatial // TOKENS_PER_SIDE
    cfg.model.in_channels = cfg.input.patch_size**2 * channels
    if arg.variant == "tiny":
        cfg.total_steps = 8
        cfg.checkpoint_every = 8
        cfg.sample_every = 8
        cfg.eval_every = 8
    if arg.steps > 0:
        cfg.total_steps = arg.steps
    return cfg
