"""Classifier-free guidance, once: a generator and a batch of captions as a velocity field.

`Conditioning` holds a batch's encoded captions (and the empty caption's, when guiding) and
the model's extra inputs, computed once per batch, not once per sampler step. `velocity`
evaluates a model under that conditioning:

    v = v(x, t | empty) + s * (v(x, t | caption) - v(x, t | empty))      (s = cfg_scale != 1)

with both halves in one call (the batch concatenated), so true CFG costs two evaluations per
step. A guidance-embedded (CFG-distilled) model takes the scale as an input instead: one
evaluation, `guidance=s`.

An edit batch (reference images, `generator.REFERENCE_KEYS`) keeps its references in the empty
caption's branch, so `s` guides the instruction. With a reference scale r != 1, a third branch
has neither (InstructPix2Pix's two scales; train with diffusion.reference_dropout):

    v = v(x | none) + r * (v(x | images) - v(x | none)) + s * (v(x | images, caption) - v(x | images))
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
    bare: dict | None = None  # neither caption nor reference images; only with reference guidance
    reference_scale: jax.Array | None = None  # [B, 1, 1] with `bare`

    @property
    def guided(self) -> bool:
        return self.uncond is not None


def is_unguided(cfg_scale) -> bool:
    return isinstance(cfg_scale, (int, float)) and cfg_scale == 1.0


def condition(model: generator.DiffusionModel, batch: dict, *, guidance=None, cfg_scale=1.0,
              reference_scale=1.0, geometry: Geometry | None = None) -> Conditioning:
    """Encode the batch's captions (and, for CFG, the empty caption) with `model`'s text encoder.

    `guidance` (scalar or [B]) feeds a guidance-embedded model; `cfg_scale` (scalar or [B]) != 1
    runs classifier-free guidance with the empty caption; `reference_scale` != 1 (edit batches)
    adds the branch without reference images. With the target's `geometry`, a model that caches
    reference images (model.reference_attention='cached') encodes them here, once per branch.
    """
    n = generator.batch_size(batch)

    def encode(b):
        c = model.condition(b)
        return c if geometry is None else model.cache_references(c, geometry)

    cond = encode(batch)
    extras = generator.extras(model.dit.cfg, batch, n, guidance)
    scale = lambda s: jnp.broadcast_to(jnp.asarray(s, jnp.float32), (n,))[:, None, None]
    if not is_unguided(reference_scale):
        if "references" not in batch:
            raise ValueError("sampling.reference_scale guides on reference images; this batch has none (an edit "
                             "batch has them)")
        empty = generator.empty_captions(batch)
        bare = encode(empty | {"num_references": jnp.zeros_like(empty["num_references"])})
        return Conditioning(cond, encode(empty), extras, scale(cfg_scale), bare, scale(reference_scale))
    if is_unguided(cfg_scale):
        return Conditioning(cond, None, extras, None)
    return Conditioning(cond, encode(generator.empty_captions(batch)), extras, scale(cfg_scale))


def velocity(model: generator.DiffusionModel, c: Conditioning, x: jax.Array, t: jax.Array, geometry: Geometry,
             attention: Callable[[jax.Array], dict | None] | None = None) -> jax.Array:
    """The (guided) velocity of `model` at (x, t) under conditioning `c`; `attention(t)` gives the
    attention backend's per-call arguments (PARO's plan and timestep)."""
    if not c.guided:
        return model(x, t, c.cond, geometry, attention_kwargs=attention(t) if attention else None, **c.extras)
    branches = [c.cond, c.uncond] + ([c.bare] if c.bare is not None else [])
    k, n = len(branches), x.shape[0]
    every = jax.tree.map(lambda *a: jnp.concatenate(a), *branches)
    ex = {key: jnp.concatenate([v] * k) for key, v in c.extras.items()}
    tt = jnp.concatenate([t] * k)
    v = model(jnp.concatenate([x] * k), tt, every, geometry, attention_kwargs=attention(tt) if attention else None, **ex)
    full, uncond = v[:n], v[n:2 * n]
    if c.bare is None:
        return uncond + c.cfg_scale * (full - uncond)
    bare = v[2 * n:]
    return bare + c.reference_scale * (uncond - bare) + c.cfg_scale * (full - uncond)


def bind(model: generator.DiffusionModel, batch: dict, geometry: Geometry, *, guidance=None, cfg_scale=1.0,
         reference_scale=1.0, attention=None) -> VelocityFn:
    """The model's (guided) velocity for this batch's captions, as a function of (x, t)."""
    c = condition(model, batch, guidance=guidance, cfg_scale=cfg_scale, reference_scale=reference_scale,
                  geometry=geometry)
    return lambda x, t: velocity(model, c, x, t, geometry, attention)
