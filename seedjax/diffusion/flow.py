"""Rectified-flow training: interpolation, timestep sampling and shifts, the masked loss.

Convention (Seedream 3.0 / SD3 / Flux): t = 0 is data, t = 1 is noise,
x_t = (1 - t) x0 + t eps, and the model predicts the velocity v = eps - x0.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def shift_time(t: jax.Array, shift) -> jax.Array:
    """t' = s t / (1 + (s - 1) t): s > 1 moves timesteps toward noise."""
    return shift * t / (1.0 + (shift - 1.0) * t)


def resolution_shift(num_tokens: int, cfg) -> float:
    """The timestep shift for a sequence of `num_tokens` image tokens.

    Seedream 3.0 shifts toward noise at higher resolution; we grow s with the square root
    of the token count relative to `base_tokens` (more tokens = more redundancy = the
    signal survives more noise), starting from `cfg.shift` at the base resolution.
    """
    if cfg.shift_mode == "fixed":
        return float(cfg.shift)
    if cfg.shift_mode == "resolution":
        return float(cfg.shift) * math.sqrt(num_tokens / cfg.base_tokens)
    raise ValueError(f"config.diffusion.shift_mode: unknown mode {cfg.shift_mode!r} (fixed | resolution)")


def sample_t(rng: jax.Array, batch: int, cfg, shift: float = 1.0) -> jax.Array:
    """Training timesteps in (0, 1): logit-normal (SD3) or uniform, then shifted."""
    if cfg.timestep_sampling == "logit_normal":
        t = jax.nn.sigmoid(cfg.logit_mean + cfg.logit_std * jax.random.normal(rng, (batch,)))
    elif cfg.timestep_sampling == "uniform":
        t = jax.random.uniform(rng, (batch,), minval=1e-5, maxval=1.0 - 1e-5)
    else:
        raise ValueError(f"config.diffusion.timestep_sampling: unknown {cfg.timestep_sampling!r}")
    return shift_time(t, shift)


def _bcast(t: jax.Array, x: jax.Array) -> jax.Array:
    return t.reshape(t.shape + (1,) * (x.ndim - t.ndim))


def interpolate(x0: jax.Array, noise: jax.Array, t: jax.Array) -> jax.Array:
    t = _bcast(t, x0)
    return (1.0 - t) * x0 + t * noise


def velocity_target(x0: jax.Array, noise: jax.Array) -> jax.Array:
    return noise - x0


def x0_from_velocity(x_t: jax.Array, v: jax.Array, t: jax.Array) -> jax.Array:
    """The clean estimate implied by a velocity at time t: x0 = x_t - t v."""
    return x_t - _bcast(t, x_t) * v


def token_mask(pixel_mask: jax.Array, patch: int) -> jax.Array:
    """[B, H, W] pixel loss mask -> [B, (H/p)(W/p)] token weights, row-major like patchify.

    A token is trained only if every pixel under it is (min-pool): a defect box that
    touches a patch removes that whole patch from the loss.
    """
    b, h, w = pixel_mask.shape
    if h % patch or w % patch:
        raise ValueError(f"loss mask of shape {pixel_mask.shape} is not divisible by the patch size {patch}")
    m = pixel_mask.reshape(b, h // patch, patch, w // patch, patch)
    return m.min(axis=(2, 4)).reshape(b, -1)


def masked_mse(pred: jax.Array, target: jax.Array, weights: jax.Array | None = None) -> jax.Array:
    """Mean squared error over [B, N, C] tokens, weighted per token; mean over examples.

    Each example's loss is averaged over its kept tokens (so masking some tokens does not
    shrink the example's weight); an example with no kept token contributes 0.
    """
    err = jnp.mean(jnp.square(pred.astype(jnp.float32) - target.astype(jnp.float32)), axis=-1)
    if weights is None:
        return jnp.mean(err)
    weights = weights.astype(jnp.float32)
    per_example = jnp.sum(err * weights, axis=1) / jnp.maximum(jnp.sum(weights, axis=1), 1.0)
    return jnp.mean(per_example)
