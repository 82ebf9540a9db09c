"""The Seedance 1.0 recipe on moving digits, as one chain of stages.

    python -m seedjax.pipeline --pipeline=experiments/seedance/pipeline.py[:tiny] --workdir=runs/seedance
    python -m seedjax.pipeline --pipeline=experiments/seedance/pipeline.py --only=vae_video,latents,latent_t2v \
        --workdir=runs/seedance

Latent space: vae_video (the causal video VAE, experiments/seedance/vae_video.py) -> latents
(`python -m data_pipelines.cli.prepare --vae=<root>/vae_video`: moving-digit clips as video latent
shards) -> latent_t2v (the video DiT on those latents; samples and judges decoded by the frozen VAE).

Pixel space: t2v (T2I + T2V) -> i2v (init_from t2v: Seedance adds image-to-video after text-to-video
pretraining) -> multishot (init_from i2v: multi-shot captions). Each stage's config is its own
experiment file at the same variant; `init_from` carries the parameters (the optimizer starts fresh).

Args: `variant` quickstart | tiny (CI-sized stages).
"""

from experiments.seedance import vae_video
from seedjax.config import parse_arg


def get_pipeline(arg=None):
    arg = parse_arg(arg, variant="quickstart")
    v = arg.variant
    if v not in vae_video.PRESETS:
        raise ValueError(f"unknown variant {v!r} (quickstart | tiny)")
    s = "experiments/seedance"
    frames, size = vae_video.clip_frames(vae_video.PRESETS[v], v), vae_video.SIZE
    return [
        dict(name="vae_video", config=f"{s}/vae_video.py:variant={v}"),
        # The clips of latent_t2v's data config: one bucket of the VAE's clip length, single shots.
        dict(name="latents", module="data_pipelines.cli.prepare", init_from="vae_video",
             args={"source": "moving_digits", "split": "train", "num_shards": 2, "limit": 16 if v == "tiny" else 10_000,
                   "data.image_size": size, "data.max_text_len": 48, "data.video.buckets": f"{frames}x{size}x{size}",
                   "data.video.max_shots": 1}),
        dict(name="latent_t2v", config=f"{s}/latent_t2v.py:variant={v}",
             overrides={"data.path": "{root}/latents", "input.vae_workdir": "{root}/vae_video"}),
        dict(name="t2v", config=f"{s}/t2v.py:variant={v}"),
        dict(name="i2v", config=f"{s}/i2v.py:variant={v}", init_from="t2v"),
        dict(name="multishot", config=f"{s}/multishot.py:variant={v}", init_from="i2v"),
    ]
