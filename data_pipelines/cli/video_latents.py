"""The causal video VAE of a VAE stage workdir (config.vae.kind = 'video'), for caching video latents.

`load_video_codec(workdir)` gives a `seedjax.models.codec.LatentCodec` over the video VAE:
`encode` maps clips [N, F, H, W, C] in [-1, 1] (F = 1 + k * temporal factor) to normalised
latents [N, f, h, w, c]. When the VAE config sets no scaling (1.0, shift 0), the scale is
1 / std of the latents of the VAE run's held-out clips, as for image VAEs.
"""

from __future__ import annotations

import logging

import numpy as np

import data_pipelines
from seedjax.config import workdir_config
from seedjax.models.codec import LatentCodec
from seedjax.train import checkpoint as ckpt_lib

log = logging.getLogger(__name__)


def video_vae_run_config(workdir: str):
    config = workdir_config(workdir)
    if config is None:
        raise ValueError(f"VAE workdir {workdir!r} has no config.json (is it a VAE stage workdir?)")
    if config.get("stage") != "vae" or config.vae.kind != "video":
        kind = config.vae.kind if "vae" in config else "no"
        raise ValueError(f"{workdir} is a {config.get('stage')!r} run with {kind!r} VAE, not a video VAE stage run")
    return config


def load_video_codec(workdir: str, use_ema: bool = True, calibration_clips: int = 16,
                     batch_size: int = 4) -> LatentCodec:
    """The video VAE trained in `workdir` (latest checkpoint; EMA weights when kept)."""
    config = video_vae_run_config(workdir)
    tree = ckpt_lib.load_state_tree(workdir)
    params = tree["ema"]["params"] if use_ema and tree.get("ema") else tree["vae"]
    codec = LatentCodec.from_params(config.vae, params)
    codec.batch_size = batch_size  # clips are large: a few per encoder call
    if codec.scaling_factor == 1.0 and codec.shift_factor == 0.0:
        clips = data_pipelines.make_eval_batch(config.data, num=calibration_clips, seed=int(config.seed),
                                               allow_fewer=True)
        if "video" not in clips:
            raise ValueError(f"{workdir}: its data config ({config.data.source}) gives no clips to calibrate the "
                             "latent scale on; set config.vae.model.scaling_factor")
        codec.scaling_factor = float(1.0 / max(np.std(codec.encode_raw(np.asarray(clips["video"], np.float32))), 1e-6))
        log.info("video VAE %s: latent scaling factor %.4f (1 / std over %d held-out clips)", workdir,
                 codec.scaling_factor, len(clips["video"]))
    return codec
