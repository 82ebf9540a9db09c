"""What AAPT's two distillation stages share: a block-causal student, teacher and student forcing.

The student is the adapted block-causal video DiT (`experiments/seedance/aapt_adapt.py`:
`model.causal`, `model.recycle`), sampled at one network evaluation a latent frame: frame f is
`noise_f - v(noise_f, t = 1)`, with the previous generated frame recycled as input and the
earlier frames' keys and values in the KV cache (`autoregressive.rollout` with sigmas (1, 0)).

Teacher forcing (`teacher_forced`): every frame of a real clip in one block-causal pass, each
frame given the real previous frame as its recycled input (training on data; stage 2).

Student forcing (`student_forcing`, `forced_frames`): the generator rolls out its own video with
the KV cache (no gradient), then ONE block-causal pass over the whole video with the same noise,
t = 1 everywhere and the rolled-out frames as the recycled inputs recomputes exactly those frames
(the cache holds the keys of each frame's own t = 1 evaluation, which is what the pass computes;
tests hold the two equal), now with gradients. The recycled inputs stay stop-gradient: a frame's
loss reaches the parameters through its own evaluation and the earlier frames' keys and values,
not back through the earlier frames' pixels (a truncated backpropagation through the recurrence).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from seedjax.diffusion import autoregressive, objectives
from seedjax.distill import student
from seedjax.models import generator, video_dit
from seedjax.models.geometry import Geometry

ONE_STEP = (1.0, 0.0)  # the 1-NFE student's per-frame sampler


def validate_config(config) -> None:
    """The checks both AAPT distillation stages share (exit 2 before anything runs)."""
    if not config.init_from:
        raise ValueError(f"stage {config.stage}: AAPT distillation starts from a trained block-causal model; set "
                         "config.init_from to the previous stage's workdir")
    causal, _, recycle = video_dit.causal_settings(config.model) if generator.is_video(config.model) else (0, 0, 0)
    if not (causal and recycle):
        raise ValueError(f"stage {config.stage} trains a block-causal, recycling video DiT: set model.causal=True and "
                         "model.recycle=True (experiments/seedance/aapt_adapt.py makes one)")
    d = config.distill
    if config.sampling.guidance_scale != 1.0 or d.guidance != 1.0 or d.teacher_guidance != 1.0 or config.model.guidance_embed:
        raise ValueError(f"stage {config.stage}: block-causal generation has one KV cache and no guidance: set "
                         "sampling.guidance_scale, distill.guidance and distill.teacher_guidance to 1 and "
                         "model.guidance_embed=False")
    student.check_entries(d)
    student.check_architecture(config)


def teacher_forced(model, batch: dict, x_t: jax.Array, t: jax.Array, x0: jax.Array, geometry: Geometry) -> jax.Array:
    """`model`'s velocity on the noisy clip x_t [B, N, C] at per-frame times t [B, F], every frame
    given its real previous frame (from the clean clip x0) as the recycled input."""
    recycled = video_dit.recycled_tokens(x0, geometry.grid[0])
    return model(x_t, t, model.condition(batch), geometry, recycled=recycled)


def captions(batch: dict, repeat: int = 1) -> dict:
    """The caption keys of `batch`, each row repeated `repeat` times (one per judged segment)."""
    return {k: jnp.repeat(batch[k], repeat, axis=0) for k in generator.CAPTION_KEYS if k in batch}


def long_geometry(geometry: Geometry, segments: int) -> Geometry:
    """`geometry` with `segments` times its frames: the videos student forcing rolls out."""
    return dataclasses.replace(geometry, frames=geometry.frames * segments)


def student_forcing(model, batch: dict, rng: jax.Array, geometry: Geometry) -> dict:
    """The generator's own video of `geometry`'s frames, one evaluation a frame with the KV cache:
    {'noise', 'rollout'} [B, N, C], both without gradient."""
    n = generator.batch_size(batch)
    noise = autoregressive.clip_noise(geometry, rng, n)
    frames = autoregressive.rollout(model, captions(batch), geometry, ONE_STEP, rng, noise=noise)
    return jax.lax.stop_gradient({"noise": noise, "rollout": frames})


def forced_frames(model, batch: dict, noise: jax.Array, rollout: jax.Array, geometry: Geometry) -> jax.Array:
    """The rollout's frames again, in one block-causal pass with gradients (see the module docstring)."""
    n, frames = noise.shape[0], geometry.grid[0]
    recycled = video_dit.recycled_tokens(jax.lax.stop_gradient(rollout), frames)
    t = jnp.ones((n, frames), jnp.float32)
    velocity = model(noise, t, model.condition(captions(batch)), geometry, recycled=recycled)
    return noise - velocity


def clean_clip(batch: dict, config) -> tuple[jax.Array, Geometry]:
    """The batch's real clips as tokens [B, N, C], and their geometry."""
    geometry = objectives.batch_geometry(batch, config)
    return objectives.clean_tokens(batch, config, geometry), geometry
