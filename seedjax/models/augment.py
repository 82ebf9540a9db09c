"""On-device image augmentations: for training the frozen judge networks and the reward model.

Generated images are imperfect: digits come out shifted, scaled, rotated, thicker or thinner,
blurry, low-contrast and noisy. The digit CNN and the stamp detector are trained on real data
pushed through these distortions so that they judge *content*, not rendering quality; the reward
stage jitters and degrades its images with the same functions. Every `random_*` function
takes one image [H, W, C] (float, [0, 1]) and a PRNG key; `pipeline` applies a list of them to a
batch.

CPU performance note: XLA fuses cheap scalar computations (random draws, a 2x2 inverse) into
their per-pixel consumers and then recomputes them for every pixel, which made these functions
~100x slower. `materialize` (an optimization barrier) computes each image's random parameters
once; `pipeline` puts the same barrier between stages.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp


def materialize(*params):
    return jax.lax.optimization_barrier(params)


def pipeline(stages: Sequence[Callable], images: jax.Array, key: jax.Array) -> jax.Array:
    """Apply per-image random stages to a batch [N, H, W, C], each stage with its own keys."""
    for i, stage in enumerate(stages):
        keys = jax.random.split(jax.random.fold_in(key, i), images.shape[0])
        images = jax.lax.optimization_barrier(jax.vmap(stage)(images, keys))
    return images


def _uniform(key, lo, hi, shape=()):
    return jax.random.uniform(key, shape, minval=lo, maxval=hi)


def random_affine(image: jax.Array, key: jax.Array, *, max_rotation_deg: float = 15.0,
                  scale_range: tuple[float, float] = (0.75, 1.1), max_aspect: float = 0.12,
                  max_shear: float = 0.15, max_shift: float = 0.12) -> jax.Array:
    """Rotate, scale (with an aspect change), shear and shift about the center; zeros outside."""
    size_y, size_x = image.shape[:2]
    k = jax.random.split(key, 5)
    angle = jnp.deg2rad(_uniform(k[0], -max_rotation_deg, max_rotation_deg))
    scale = jnp.exp(_uniform(k[1], jnp.log(scale_range[0]), jnp.log(scale_range[1])))
    aspect = jnp.exp(_uniform(k[2], -max_aspect, max_aspect))
    shear = _uniform(k[3], -max_shear, max_shear)
    shift = _uniform(k[4], -max_shift, max_shift, (2,)) * jnp.array([size_y, size_x])
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    forward = jnp.array([[cos, -sin], [sin, cos]]) @ jnp.array([[scale / aspect, 0.0], [shear, scale * aspect]])
    center = jnp.array([(size_y - 1) / 2, (size_x - 1) / 2])
    inverse, offset = materialize(jnp.linalg.inv(forward), center + shift)
    yy, xx = jnp.meshgrid(jnp.arange(size_y, dtype=jnp.float32), jnp.arange(size_x, dtype=jnp.float32), indexing="ij")
    src = inverse @ (jnp.stack([yy.ravel(), xx.ravel()]) - offset[:, None]) + center[:, None]
    return bilinear_sample(image, src[0], src[1]).reshape(image.shape)


def bilinear_sample(image: jax.Array, y: jax.Array, x: jax.Array) -> jax.Array:
    """image [H, W, C] sampled at float pixel coordinates (y, x) [P]; zeros outside -> [P, C]."""
    h, w, c = image.shape
    flat = jnp.pad(image, ((1, 1), (1, 1), (0, 0))).reshape(-1, c)
    y0, x0 = jnp.floor(y), jnp.floor(x)
    wy, wx = (y - y0)[:, None], (x - x0)[:, None]

    def corner(dy, dx):
        yi = jnp.clip(y0 + dy + 1, 0, h + 1).astype(jnp.int32)
        xi = jnp.clip(x0 + dx + 1, 0, w + 1).astype(jnp.int32)
        return jnp.take(flat, yi * (w + 2) + xi, axis=0)

    top = (1 - wx) * corner(0, 0) + wx * corner(0, 1)
    bottom = (1 - wx) * corner(1, 0) + wx * corner(1, 1)
    return (1 - wy) * top + wy * bottom


def _window(image: jax.Array, op) -> jax.Array:
    init = -jnp.inf if op is jax.lax.max else jnp.inf
    return jax.lax.reduce_window(image, init, op, (3, 3, 1), (1, 1, 1), "SAME")


def random_stroke(image: jax.Array, key: jax.Array, *, thin: float = 0.7, thick: float = 1.0) -> jax.Array:
    """Thicken (grey dilation) or thin (grey erosion) strokes by a random fraction of one pixel."""
    (t,) = materialize(_uniform(key, -thin, thick))
    dilated, eroded = _window(image, jax.lax.max), _window(image, jax.lax.min)
    return jnp.where(t >= 0, image + t * (dilated - image), image - t * (eroded - image))


def gaussian_blur(image: jax.Array, sigma: jax.Array, radius: int = 3) -> jax.Array:
    """Separable Gaussian blur of [H, W, C] with a (traced) sigma in pixels; zero padding."""
    taps = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
    kernel = jnp.exp(-0.5 * (taps / jnp.maximum(sigma, 1e-3)) ** 2)
    (kernel,) = materialize(kernel / kernel.sum())
    h, w = image.shape[:2]
    padded = jnp.pad(image, ((radius, radius), (0, 0), (0, 0)))
    image = sum(kernel[i] * padded[i : i + h] for i in range(2 * radius + 1))
    padded = jnp.pad(image, ((0, 0), (radius, radius), (0, 0)))
    return sum(kernel[i] * padded[:, i : i + w] for i in range(2 * radius + 1))


def random_blur(image: jax.Array, key: jax.Array, *, max_sigma: float = 1.2) -> jax.Array:
    return gaussian_blur(image, _uniform(key, 0.0, max_sigma), radius=max(1, math.ceil(2.5 * max_sigma)))


def random_photometric(image: jax.Array, key: jax.Array, *, max_black: float = 0.25, min_white: float = 0.55
                       ) -> jax.Array:
    """Random black level, white level and gamma; clipped to [0, 1]."""
    k = jax.random.split(key, 3)
    black, white, gamma = materialize(
        _uniform(k[0], 0.0, max_black), _uniform(k[1], min_white, 1.0), jnp.exp(_uniform(k[2], -0.4, 0.4)))
    return black + (white - black) * jnp.clip(image, 0.0, 1.0) ** gamma


def add_noise(images: jax.Array, key: jax.Array, *, max_sigma: float = 0.08) -> jax.Array:
    """Gaussian pixel noise with a random strength per image, clipped to [0, 1].

    One noise field of twice the image size is drawn per batch and each image takes a random crop
    of it: generating a fresh normal per pixel dominated the cost of the whole training step.
    """
    n, h, w, c = images.shape
    k_field, k_sigma, k_offset = jax.random.split(key, 3)
    field = jax.random.normal(k_field, (2 * h, 2 * w, c))
    sigma = jax.random.uniform(k_sigma, (n,), maxval=max_sigma)
    offsets = jax.random.randint(k_offset, (n, 2), 0, jnp.array([h, w]))
    crops = jax.vmap(lambda o: jax.lax.dynamic_slice(field, (o[0], o[1], 0), (h, w, c)))(offsets)
    return jnp.clip(images + sigma[:, None, None, None] * crops, 0.0, 1.0)
