"""The tasks of a video training batch, unified as Seedance does: T2I, T2V and I2V; and restoration.

Text-to-image batches are one-frame videos (the data's '1xHxW' buckets, mixed by bucket
weights); in a video batch a fraction `diffusion.i2v_fraction` of the examples becomes
image-to-video: their clean first frame is handed to the model as a conditioning frame
(`cond_frames` [B, F, H, W, C], zeros elsewhere, and `cond_mask` [B, F]). With probability
`diffusion.cond_frame_dropout` an I2V example's frame is blanked while its mask stays on: the
"no image" branch that classifier-free guidance on the image needs.

How the model takes the frame is its config (`model.condition`, seedjax/models/video_dit.py):
channel concat keeps every frame noisy and trained; per-frame timesteps keep the
conditioning frames clean, so `noisy_token_weights` leaves them out of the loss.

Editing (Seedream 4.0 / SeedEdit 3.0, data.source=edit_triples): the target is what is denoised
and the source images are clean references packed after it in the MMDiT's sequence
(`edit_task`; `seedjax.models.generator.pack_references`), so the loss and the sampler see the
target's tokens alone.

Restoration (SeedVR, `diffusion.restore`): every frame is conditioned on its degraded copy
(`degraded_video`, made by data.degradations), which 'concat' puts beside the noisy tokens with
an all-ones mask channel: the same inputs as SeedVR's (noise + low-quality latent + mask).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def video_task(batch: dict, clean: jax.Array, rng: jax.Array, diffusion_cfg) -> dict:
    """The batch with I2V conditioning for a random fraction of its examples; `clean` is the
    batch's clean input [B, F, H, W, C] (pixels or latents). Unchanged for one-frame batches."""
    b, frames = clean.shape[:2]
    fraction = float(diffusion_cfg.get("i2v_fraction", 0.0))
    if frames == 1 or fraction <= 0:
        return batch
    rng_pick, rng_drop = jax.random.split(rng)
    i2v = jax.random.bernoulli(rng_pick, fraction, (b,))
    shown = i2v & ~jax.random.bernoulli(rng_drop, float(diffusion_cfg.get("cond_frame_dropout", 0.0)), (b,))
    cond_mask = jnp.zeros((b, frames), jnp.float32).at[:, 0].set(i2v.astype(jnp.float32))
    first = jnp.where(shown[:, None, None, None], clean[:, 0], 0.0)
    return batch | {"cond_frames": jnp.zeros_like(clean).at[:, 0].set(first), "cond_mask": cond_mask}


def noisy_token_weights(model_cfg, batch: dict, num_tokens: int) -> jax.Array | None:
    """[B, N] 1.0 on the tokens the loss trains: with per-frame timesteps, not the clean
    conditioning frames (they are inputs, and the model returns velocity 0 there); None = all."""
    if model_cfg.get("condition", "") != "timestep" or "cond_mask" not in batch:
        return None
    mask = batch["cond_mask"]
    return jnp.repeat(1.0 - mask, num_tokens // mask.shape[1], axis=1)


def edit_task(batch: dict, rng: jax.Array | None = None, reference_dropout: float = 0.0) -> dict:
    """An edit batch (`source` [B, R, H, W, C], `num_sources` [B], `target` [B, H, W, C]) in the
    generator's terms: the target as the `image` to denoise, the sources as its references
    (`generator.REFERENCE_KEYS`); with `rng`, a fraction `reference_dropout` of the examples
    without references (the branch reference guidance needs). Other batches pass unchanged."""
    if "source" not in batch:
        return batch
    count = batch["num_sources"]
    if rng is not None and reference_dropout > 0:
        count = jnp.where(jax.random.bernoulli(rng, reference_dropout, count.shape), 0, count)
    out = batch | {"references": batch["source"], "num_references": count}
    return out | ({"image": batch["target"]} if "target" in batch else {})


DEGRADED = "degraded_video"  # the batch key of the degraded clips [B, F, H, W, C] (data.degradations)


def validate_restore(config) -> None:
    """diffusion.restore's requirements (one-line ValueErrors): a pixel video DiT with channel concat
    and degradations in the data, and no image-to-video on top."""
    if not config.diffusion.get("restore", False):
        return
    model = config.model
    if model.get("kind") != "video_dit" or model.condition != "concat" or config.input.key != "video":
        raise ValueError("config.diffusion.restore conditions the video DiT on degraded pixels: it needs "
                         "config.model = video_dit_config(condition='concat') and config.input.key='video'")
    if not config.data.get("degradations", {}).get("enabled", False):
        raise ValueError("config.diffusion.restore needs (degraded, clean) pairs: set config.data.degradations.enabled")
    if float(config.diffusion.i2v_fraction) > 0 or config.sampling.get("i2v", False):
        raise ValueError("config.diffusion.restore conditions every frame on the degraded clip: leave "
                         "config.diffusion.i2v_fraction at 0 and config.sampling.i2v off")


def restoration_task(batch: dict, degraded: jax.Array | None = None) -> dict:
    """The batch conditioned on degraded clips [B, F, H, W, C] (default: the batch's own
    `degraded_video`) on every frame: cond_frames = the degraded clip, cond_mask = 1."""
    degraded = batch[DEGRADED] if degraded is None else degraded
    mask = jnp.ones(degraded.shape[:2], jnp.float32)
    return batch | {"cond_frames": jnp.asarray(degraded, jnp.float32), "cond_mask": mask}
