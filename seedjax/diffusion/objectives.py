"""Flow matching: the velocity loss every velocity-trained stage uses.

Pretraining and SFT minimise it; RLHF adds it as the regulariser on real data; distillation's
teachers were trained with it. Conventions are those of `seedjax.diffusion.flow`: t = 0 data,
t = 1 noise, x_t = (1 - t) x0 + t eps, target v = eps - x0.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from seedjax.diffusion import flow, tasks
from seedjax.models import generator, video_dit
from seedjax.models.geometry import Geometry


def clean_input(batch: dict, config) -> jax.Array:
    """The batch's clean input: pixels, clips or latents (`config.input.key`)."""
    key = config.input.key
    if key not in batch:
        raise ValueError(f"batch has no {key!r} (config.input.key); it has {sorted(batch)}")
    return batch[key]


def batch_geometry(batch: dict, config) -> Geometry:
    """The geometry of this batch: clips [B, F, H, W, C] are each bucket's own; images the config's."""
    x = clean_input(batch, config)
    return Geometry.of_array(x, config.input.patch_size) if x.ndim == 5 else Geometry.of(config)


def clean_tokens(batch: dict, config, geometry: Geometry | None = None) -> jax.Array:
    """The batch's clean input (pixels or latents, `config.input.key`) as patch tokens."""
    return (geometry or batch_geometry(batch, config)).tokens(clean_input(batch, config))


def loss_weights(batch: dict, config) -> jax.Array | None:
    """Per-token weights from the defect masks (pixel or latent), or None: every token counts."""
    if "loss_mask" in batch and config.input.key == "image":
        return flow.token_mask(batch["loss_mask"], config.input.patch_size)
    if "latent_loss_mask" in batch:
        return flow.token_mask(batch["latent_loss_mask"], config.input.patch_size)
    return None


def flow_matching_loss(model: generator.DiffusionModel, batch: dict, rng: jax.Array, config, repa_head=None):
    """Velocity MSE on x_t = (1 - t) x0 + t eps, with the defect mask and optional REPA.

    A block-causal video DiT (AAPT's adaptation) trains with teacher forcing: with model.recycle
    every frame gets the clean previous frame as input, and with config.diffusion.per_frame_t
    every latent frame its own t ([B, F]).

    Returns (loss, aux) with aux = {'fm_loss', 'repa_loss'}.
    """
    rng_drop, rng_t, rng_noise = jax.random.split(rng, 3)
    batch = tasks.edit_task(batch, jax.random.fold_in(rng, 2), config.diffusion.get("reference_dropout", 0.0))
    batch = generator.drop_captions(batch, rng_drop, config.diffusion.cfg_dropout)
    geometry = batch_geometry(batch, config)
    x0 = clean_tokens(batch, config, geometry)
    shift = flow.resolution_shift(x0.shape[1], config.diffusion)  # tokens count frames: duration-aware
    frames = geometry.grid[0]
    if model.is_causal and config.diffusion.get("per_frame_t", False):
        t = flow.sample_t(rng_t, x0.shape[0] * frames, config.diffusion, shift).reshape(x0.shape[0], frames)
        t_tokens = jnp.repeat(t, x0.shape[1] // frames, axis=1)
    else:
        t = t_tokens = flow.sample_t(rng_t, x0.shape[0], config.diffusion, shift)
    noise = jax.random.normal(rng_noise, x0.shape, x0.dtype)
    x_t = flow.interpolate(x0, noise, t_tokens)
    weights = loss_weights(batch, config)
    if model.is_video:
        if config.diffusion.get("restore", False):
            batch = tasks.restoration_task(batch)
        else:
            batch = tasks.video_task(batch, geometry.frames_of(x0), jax.random.fold_in(rng, 1), config.diffusion)
        noisy = tasks.noisy_token_weights(model.dit.cfg, batch, x0.shape[1])
        weights = noisy if weights is None else (weights if noisy is None else weights * noisy)
    cond = model.condition(batch)
    extra = generator.extras(model.dit.cfg, batch, x0.shape[0])
    extra["attention_kwargs"] = generator.attention_kwargs(config, t)
    if model.is_causal and video_dit.causal_settings(model.dit.cfg)[2]:
        extra["recycled"] = video_dit.recycled_tokens(x0, frames)
    if repa_head is None:
        v = model(x_t, t, cond, geometry, **extra)
        fm = flow.masked_mse(v, flow.velocity_target(x0, noise), weights)
        return fm, {"fm_loss": fm, "repa_loss": jnp.zeros(())}
    v, feats = model(x_t, t, cond, geometry, return_features=True, **extra)
    fm = flow.masked_mse(v, flow.velocity_target(x0, noise), weights)
    rl = repa_head.loss(feats, batch, geometry.grid_hw, config)
    return fm + config.repa.weight * rl, {"fm_loss": fm, "repa_loss": rl}
