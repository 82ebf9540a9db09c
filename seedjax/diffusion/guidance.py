"""Classifier-free guidance, once: a generator and a batch of captions as a velocity field.

`Conditioning` holds a batch's encoded captions (and the empty caption's, when guiding) and
the model's extra inputs, computed once per batch, not once per sampler step. `velocity`
evaluates a model under that conditioning:

    v = v(x, t | empty) + s * (v(x, t | caption) - v(x, t | empty))      (s = cfg_scale != 1)

with both halves in one call (the batch concatenated), so true CFG costs two evaluations per
step. A guidance-embedded (CFG-distilled) model takes the scale as an input instead: one
evaluation, `guidance=s`.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

from seedjax.models import generator
from seedjax.models.geometry import Geometry

VelocityFn = Callable[[jax.Array, jax.Array], jax.Array]  # (x [B, N, D], t [B]) -> v [B, N, D]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Conditioning:
    cond: dict
    uncond: dict | None  # the empty caption's; None when not guiding
    extras: dict
    cfg_scale: jax.Array | None  # [B, 1, 1]; None when not guiding

    @property
    def guided(self) -> bool:
        return self.uncond is not None


def is_unguided(cfg_scale) -> bool:
    return isinstance(cfg_scale, (int, float)) and cfg_scale == 1.0


def condition(model: generator.DiffusionModel, batch: dict, *, guidance=None, cfg_scale=1.0) -> Conditioning:
    """Encode the batch's captions (and, for CFG, the empty caption) with `model`'s text encoder.

    `guidance` (scalar or [B]) feeds a guidance-embedded model; `cfg_scale` (scalar or [B]) != 1
    runs classifier-free guidance with the empty caption.
    """
    n = generator.batch_size(batch)
    cond = model.condition(batch)
    extras = generator.extras(model.dit.cfg, batch, n, guidance)
    if is_unguided(cfg_scale):
        return Conditioning(cond, None, extras, None)
    uncond = model.condition(generator.empty_captions(batch))
    scale = jnp.broadcast_to(jnp.asarray(cfg_scale, jnp.float32), (n,))[:, None, None]
    return Conditioning(cond, uncond, extras, scale)


def velocity(model: generator.DiffusionModel, c: Conditioning, x: jax.Array, t: jax.Array, geometry: Geometry,
             attention: Callable[[jax.Array], dict | None] | None = None) -> jax.Array:
    """The (guided) velocity of `model` at (x, t) under conditioning `c`; `attention(t)` gives the
    attention backend's per-call arguments (PARO's plan and timestep)."""
    if not c.guided:
        return model(x, t, c.cond, geometry, attention_kwargs=attention(t) if attention else None, **c.extras)
    n = x.shape[0]
    both = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), c.cond, c.uncond)
    ex = {k: jnp.concatenate([v, v]) for k, v in c.extras.items()}
    tt = jnp.concatenate([t, t])
    v = model(jnp.concatenate([x, x]), tt, both, geometry, attention_kwargs=attention(tt) if attention else None, **ex)
    return v[n:] + c.cfg_scale * (v[:n] - v[n:])


def bind(model: generator.DiffusionModel, batch: dict, geometry: Geometry, *, guidance=None, cfg_scale=1.0,
         attention=None) -> VelocityFn:
    """The model's (guided) velocity for this batch's captions, as a function of (x, t)."""
    c = condition(model, batch, guidance=guidance, cfg_scale=cfg_scale)
    return lambda x, t: velocity(model, c, x, t, geometry, attention)
