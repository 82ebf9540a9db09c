"""The restoration quickstart's config, shared by the SeedVR experiments (restore, restore_adversarial).

A pixel-space video DiT with SeedVR's window attention (`model.attention='window'`, SeedVR2's
adaptive rule) learns to restore bundled moving-digit clips (and one-frame stills: images are
one-frame videos) from copies that `data.degradations` blurs, downscales, adds noise to and
re-encodes (JPEG, H.264 / MPEG-4 through PyAV), drawn per clip. The degraded clip enters beside
the noisy one along channels with a mask channel (`diffusion.restore`). Captions are optional:
half of the training examples see the empty caption, which is what the restore tool gives files.

32x32 RGB frames in 4x4 patches: an 8x8 token grid, 4 frames a clip, windows of (2, 4, 4) tokens
(counts (2, 2, 2) over the 8x8 reference): 8 windows a clip, shifted on every other sublayer.
"""

from __future__ import annotations

from experiments.seedance._video_common import video_config
from seedjax.schema.evals import eval_entry, evals_config

FRAMES, SIZE, PATCH = 4, 32, 4


def restore_config(variant: str) -> "ml_collections.ConfigDict":  # noqa: F821
    """`variant`: 'quickstart' (CPU minutes) or 'tiny' (seconds; CI)."""
    cfg = video_config(variant)
    size = SIZE if variant == "quickstart" else 16
    frames = FRAMES if variant == "quickstart" else 2
    grid = size // PATCH
    cfg.data.image_size = size
    cfg.data.video.update(num_frames=frames, buckets=f"1x{size}x{size},{frames}x{size}x{size}",
                          bucket_weights="0.2,0.8")
    # The network predicts the clean clip as the degraded one plus a correction (an x0 prediction with a skip):
    # a velocity model of this size had not learnt, in 2,000 steps, to restore even to the degraded input's PSNR.
    cfg.model.update(attention="window", prediction="x0", residual=True)
    cfg.model.window.update(counts=(2, 2, 2), reference=(grid, grid), rule="adaptive")
    cfg.data.degradations.update(enabled=True, blur_sigma=(0.2, 1.5), downscale_factor=(1.0, 3.0),
                                 noise_sigma=(1.0, 12.0), jpeg_quality=(40, 95), video_bits_per_pixel=(0.05, 0.4))
    cfg.diffusion.update(restore=True, cfg_dropout=0.5, base_tokens=grid * grid)
    cfg.sampling.update(num_steps=25, guidance_scale=1.0)  # no CFG: the degraded clip is the condition
    cfg.evals = evals_config(restoration=eval_entry("restoration", num_clips=0, batch_size=0))
    if variant == "quickstart":
        cfg.batch_size = 16
        cfg.total_steps = 2000
        cfg.checkpoint_every = 500
        cfg.sample_every = cfg.eval_every = 2000
        cfg.eval.update(num_prompts=64, batch_size=32)
    else:
        cfg.sampling.num_steps = 2
    return cfg
