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

from seedjax.diffusion import autoregressive, tasks
from seedjax.diffusion.sampling import Sampler
from seedjax.models import generator
from seedjax.models.geometry import Geometry
from seedjax.train.params import latent_codec, to_pixels


def sampler_of(config) -> Sampler:
    """The sampler a run samples with. Distillation configs (a `distill` group) train a
    guidance-embedded student and sample it at `config.distill.guidance`."""
    embedded = config.distill.guidance if "distill" in config else None
    return Sampler.from_config(config.sampling, guidance=embedded)


def with_first_frame(batch: dict, config, geometry: Geometry) -> dict:
    """Image-to-video: a prompt batch's `first_frame` [N, H, W, C] (pixels in [-1, 1]) as the video
    model's conditioning frame 0; with config.sampling.i2v, the first frame of the batch's own
    clips (`video`, or a latent run's `latent`: e.g. the held-out data of the sample grid).
    A latent run (video VAE) conditions on latent frame 0, which the causal VAE encodes from pixel
    frame 0 alone: the frozen VAE encodes `first_frame` as a one-frame clip. Other batches pass unchanged."""
    first, latent = batch.get("first_frame"), config.input.key == "latent"
    if first is not None and latent:
        codec = latent_codec(config)
        if not codec.is_video:
            raise ValueError("image-to-video from a first frame needs a video run: pixels (config.input.key=video) "
                             "or latents of a video VAE; config.input.vae_workdir is an image VAE")
        first = codec.encode_jax(jnp.asarray(first, jnp.float32)[:, None])[:, 0]
    if first is None and config.sampling.get("i2v", False):
        own = "latent" if latent else "video"
        first = batch[own][:, 0] if own in batch and batch[own].ndim == 5 else None
    if first is None:
        return batch
    if config.input.key == "image":
        raise ValueError(f"image-to-video from a first frame needs a video run (config.input.key=video, or latent with "
                         f"a video VAE); this run has input.key={config.input.key!r}")
    n = first.shape[0]
    frames = jnp.zeros((n, *geometry.shape), jnp.float32).at[:, 0].set(jnp.asarray(first, jnp.float32))
    mask = jnp.zeros((n, geometry.frames), jnp.float32).at[:, 0].set(1.0)
    return batch | {"cond_frames": frames, "cond_mask": mask}


def generate(model: generator.DiffusionModel, config, rng: jax.Array, batch: dict,
             sampler: Sampler | None = None) -> jax.Array:
    """What the DiT generates for the captions in `batch`: [N, F, H, W, C] pixels or latents."""
    sampler = sampler or sampler_of(config)
    attention = functools.partial(generator.attention_kwargs, config)
    geometry = Geometry.of(config)
    if model.is_causal:
        return generate_causal(model, config, rng, batch, sampler, geometry)
    if config.diffusion.get("restore", False):  # a restoration model restores the batch's degraded clips
        batch = tasks.restoration_task(batch)
    elif model.is_video:
        batch = with_first_frame(batch, config, geometry)
    else:
        batch = tasks.edit_task(batch)
    return sampler.generate(model, batch, geometry, rng, attention=attention)


def generate_causal(model, config, rng, batch, sampler: Sampler, geometry: Geometry) -> jax.Array:
    """A block-causal video DiT generates frame after frame with its KV cache and the previous
    frame recycled (`autoregressive.rollout`: what `seedjax.tools.stream` streams), the sampler's
    steps for every frame. One cache: no true CFG (a guidance-embedded model takes its scale)."""
    if sampler.guided:
        raise ValueError(f"a block-causal video model samples without classifier-free guidance (one KV cache); "
                         f"set config.sampling.guidance_scale=1 (or --guidance=1), got {sampler.cfg_scale:g}")
    if "first_frame" in batch or config.sampling.get("i2v", False):
        raise ValueError("image-to-video is not supported by block-causal generation yet")
    guidance = sampler.guidance if model.guidance_embedded else None
    tokens = autoregressive.rollout(model, batch, geometry, sampler.sigmas, rng, guidance=guidance)
    return geometry.frames_of(tokens)


def generate_pixels(model: generator.DiffusionModel, config, rng: jax.Array, batch: dict,
                    sampler: Sampler | None = None) -> jax.Array:
    """Images [N, F, H, W, C] in [-1, 1] (latent runs: decoded by the frozen VAE)."""
    return jnp.clip(to_pixels(generate(model, config, rng, batch, sampler), config), -1.0, 1.0)
