"""The causal video VAE of a VAE stage workdir, for callers of the former video-only loader.

One loader serves image and video VAEs: `seedjax.train.params.load_codec` (prepare uses it).
`load_video_codec(workdir)` is that loader, refusing a workdir whose VAE is not a video VAE.
"""

from __future__ import annotations

from seedjax.models.codec import LatentCodec
from seedjax.train.params import load_codec


def load_video_codec(workdir: str, use_ema: bool = True, calibration_clips: int = 16) -> LatentCodec:
    """The video VAE trained in `workdir` (latest checkpoint; EMA weights when kept)."""
    codec = load_codec(workdir, use_ema=use_ema, calibration_clips=calibration_clips)
    if not codec.is_video:
        raise ValueError(f"{workdir} is an image VAE stage run, not a video VAE stage run")
    return codec
