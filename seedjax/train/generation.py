"""Sampling a generator as every stage's `sample` hook (sample grids, the evaluators) and the tools do it.

The sampler comes from `config.sampling` (steps, shift, CFG scale, schedule); a distilled
student, whose guidance embedder takes the scale as an input, samples at
`config.distill.guidance`. Outputs are pixels in [-1, 1] with a frame axis, [N, F, H, W, C]
(a still image is one frame); a latent-space run's latents are decoded by its frozen VAE.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from seedjax.diffusion.sampling import Sampler
from seedjax.models import generator
from seedjax.models.geometry import Geometry
from seedjax.train.params import to_pixels


def sampler_of(config) -> Sampler:
    """The sampler a run samples with. Distillation configs (a `distill` group) train a
    guidance-embedded student and sample it at `config.distill.guidance`."""
    embedded = config.distill.guidance if "distill" in config else None
    return Sampler.from_config(config.sampling, guidance=embedded)


def generate(model: generator.DiffusionModel, config, rng: jax.Array, batch: dict,
             sampler: Sampler | None = None) -> jax.Array:
    """What the DiT generates for the captions in `batch`: [N, F, H, W, C] pixels or latents."""
    sampler = sampler or sampler_of(config)
    attention = functools.partial(generator.attention_kwargs, config)
    return sampler.generate(model, batch, Geometry.of(config), rng, attention=attention)


def generate_pixels(model: generator.DiffusionModel, config, rng: jax.Array, batch: dict,
                    sampler: Sampler | None = None) -> jax.Array:
    """Images [N, F, H, W, C] in [-1, 1] (latent runs: decoded by the frozen VAE)."""
    return jnp.clip(to_pixels(generate(model, config, rng, batch, sampler), config), -1.0, 1.0)
