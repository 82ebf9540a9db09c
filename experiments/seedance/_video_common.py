"""The video quickstart's config, shared by the Seedance experiments (t2v, i2v, multishot).

A pixel-space video DiT (`seedjax.models.video_dit`) trained by the pretraining stage on the
bundled moving-digit clips (`data.source = 'moving_digits'`): 16x16 RGB frames in 4x4 patches
(16 tokens a frame), 8 frames a clip, joint T2I + T2V (+ I2V) through the data's
(frames, height, width) buckets, and the video judges on held-out prompts (`video_prompts`).
"""

from __future__ import annotations

from experiments.common import diffusion_model_config, link_widths
from seedjax.schema.evals import evals_config, generator_entry
from seedjax.schema.models import video_dit_config

FRAMES, SIZE = 8, 16


def video_config(variant: str, *, condition: str = "concat", i2v_fraction: float = 0.0, multishot: bool = False,
                 image_share: float = 0.2) -> "ml_collections.ConfigDict":  # noqa: F821
    """`variant`: 'quickstart' (CPU minutes) or 'tiny' (seconds; CI)."""
    if variant not in ("quickstart", "tiny"):
        raise ValueError(f"unknown variant {variant!r} (quickstart | tiny)")
    cfg = diffusion_model_config("pretrain")
    cfg.model = video_dit_config("tiny", num_heads=3, head_dim=32, axes_dims_rope=(8, 12, 12), depth=3,
                                 condition=condition)
    cfg.input.update(key="video", patch_size=4)
    cfg.text.update(width=96, depth=2, num_heads=3)
    cfg.data.update(source="moving_digits", image_size=SIZE, max_text_len=48)
    cfg.data.video.update(num_frames=FRAMES, max_shots=3 if multishot else 1,
                          multishot_prob=0.5 if multishot else 0.0,
                          # Text-to-image is the one-frame bucket: one batch in five is still images.
                          buckets=f"1x{SIZE}x{SIZE},{FRAMES}x{SIZE}x{SIZE}",
                          bucket_weights=f"{image_share},{1 - image_share}")
    cfg.diffusion.update(i2v_fraction=i2v_fraction, cfg_dropout=0.1, shift_mode="resolution", shift=1.0,
                         base_tokens=SIZE * SIZE // 16)
    cfg.sampling.update(num_steps=20, guidance_scale=3.0, i2v=i2v_fraction > 0)
    cfg.optimizer.update(lr=2e-3, warmup_steps=100, schedule="cosine", end_lr_factor=0.1, weight_decay=0.0)
    cfg.ema_decay = 0.99
    cfg.batch_size = 32
    cfg.total_steps = 1500
    cfg.log_every = 50
    cfg.checkpoint_every = 500
    cfg.sample_every = 1500
    cfg.eval_every = 1500
    cfg.num_samples = 8
    cfg.eval.update(num_prompts=128, batch_size=64)
    cfg.evals = evals_config(video=generator_entry("video_prompts", multishot=multishot, i2v=i2v_fraction > 0))
    if variant == "tiny":
        cfg.model.depth = 1
        cfg.text.depth = 1
        cfg.data.video.buckets = f"1x{SIZE}x{SIZE},4x{SIZE}x{SIZE}"
        cfg.data.video.num_frames = 4
        cfg.batch_size = 8
        cfg.total_steps = 12
        cfg.log_every = 2
        cfg.checkpoint_every = 6
        cfg.sample_every = 12
        cfg.eval_every = 12
        cfg.num_samples = 2
        cfg.sampling.num_steps = 2
        cfg.eval.update(num_prompts=4, batch_size=4)
        cfg.optimizer.warmup_steps = 2
    link_widths(cfg)
    return cfg


def causal_video_config(variant: str, window: int = 0) -> "ml_collections.ConfigDict":  # noqa: F821
    """The video quickstart's model made block-causal for AAPT (experiments/seedance/aapt_*.py):
    `model.causal` (a latent frame attends to the text, itself and earlier frames; `window` = W > 0:
    the W - 1 frames before it and always the first), `model.recycle` (the previous clean frame
    concatenated to the input) and `diffusion.per_frame_t` (every frame at its own noise level);
    sampled frame after frame with the KV cache, without classifier-free guidance (one cache)."""
    cfg = video_config(variant)
    cfg.model.update(causal=True, causal_window=window, recycle=True)
    cfg.diffusion.per_frame_t = True
    cfg.sampling.guidance_scale = 1.0
    return cfg


def clips_only(cfg) -> None:
    """Train on the clips alone (no one-frame image bucket): AAPT's later stages are about video."""
    frames = cfg.data.video.num_frames
    cfg.data.video.update(buckets=f"{frames}x{SIZE}x{SIZE}", bucket_weights="1")
