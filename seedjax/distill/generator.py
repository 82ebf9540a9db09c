"""Students and teachers as velocity fields and few-step generators.

Conventions (seedjax/diffusion/flow.py): t = 0 data, t = 1 noise, x_t = (1 - t) x0 + t eps,
v = eps - x0. Models are `seedjax.stages.pretrain.DiffusionModel` (text encoder + MMDiT) and
work on patch tokens [B, N, C]. After CFG distillation every model takes the guidance scale
through the MMDiT's guidance embedder, so one evaluation gives the guided velocity.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from seedjax.diffusion import flow
from seedjax.diffusion.sampling import flow_sigmas, uniform_sigmas
from seedjax.models import mmdit
from seedjax.stages.pretrain import DiffusionModel, drop_captions

VelocityFn = Callable[[jax.Array, jax.Array], jax.Array]  # (x [B, N, C], t [B]) -> v [B, N, C]


# --------------------------------------------------------------------------- models


def model_config(config, guidance_embed: bool):
    """A copy of `config` whose MMDiT has (or lacks) the guidance-scale embedder."""
    out = copy.deepcopy(config)
    with out.unlocked():
        out.model.guidance_embed = bool(guidance_embed)
    return out


def build_model(config, rngs: nnx.Rngs, guidance_embed: bool) -> DiffusionModel:
    return DiffusionModel(model_config(config, guidance_embed), rngs)


def has_guidance_embed(model: DiffusionModel) -> bool:
    return model.dit.guidance_embedder is not None


@dataclasses.dataclass(frozen=True)
class Geometry:
    """How images map to the patch tokens the MMDiT sees."""

    patch: int
    image_shape: tuple[int, int, int]  # (H, W, C) of the input the model denoises

    @classmethod
    def of(cls, config) -> "Geometry":
        import data_pipelines

        c = config.model.in_channels // config.input.patch_size**2
        if config.input.key == "image" and c != data_pipelines.channels(config.data):
            raise ValueError(f"config.model.in_channels={config.model.in_channels} does not match "
                             f"{data_pipelines.channels(config.data)}-channel images in {config.input.patch_size}^2 patches")
        return cls(config.input.patch_size, (config.data.image_size, config.data.image_size, c))

    @property
    def grid(self) -> tuple[int, int]:
        return self.image_shape[0] // self.patch, self.image_shape[1] // self.patch

    @property
    def token_shape(self) -> tuple[int, int]:
        return self.grid[0] * self.grid[1], self.patch**2 * self.image_shape[2]

    def tokens(self, images: jax.Array) -> jax.Array:
        return mmdit.patchify(images, self.patch)

    def images(self, tokens: jax.Array) -> jax.Array:
        return mmdit.unpatchify(tokens, self.patch, *self.image_shape)


# --------------------------------------------------------------------------- velocity


def extras_for(model: DiffusionModel, batch: dict, n: int, guidance) -> dict:
    cfg = model.dit.cfg
    extras = {}
    if cfg.size_embed:
        extras["target_size"] = batch["target_size"] if "target_size" in batch else jnp.zeros((n, 2), jnp.int32)
    if cfg.guidance_embed:
        g = 1.0 if guidance is None else guidance
        extras["guidance"] = jnp.broadcast_to(jnp.asarray(g, jnp.float32), (n,))
    return extras


def batch_size(batch: dict) -> int:
    return (batch["tokens"] if "tokens" in batch else batch["text_embeddings"]).shape[0]


def bind(model: DiffusionModel, batch: dict, geometry: Geometry, *, guidance=None, cfg_scale=1.0) -> VelocityFn:
    """The model's velocity for this batch's captions, as a function of (x, t).

    `guidance` (scalar or [B]) feeds a guidance-embedded model; `cfg_scale` (scalar or [B])
    != 1 runs classifier-free guidance with the empty caption: two evaluations per call.
    The text is encoded once here, not at every call.
    """
    n = batch_size(batch)
    cond = model.condition(batch)
    extras = extras_for(model, batch, n, guidance)
    if isinstance(cfg_scale, (int, float)) and cfg_scale == 1.0:
        return lambda x, t: model(x, t, cond, geometry.grid, **extras)
    empty = {k: v for k, v in batch.items() if k in ("tokens", "text_mask")}
    uncond = model.condition(drop_captions(empty, jax.random.key(0), 1.0))
    both = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), cond, uncond)
    extras2 = {k: jnp.concatenate([v, v]) for k, v in extras.items()}
    scale = jnp.broadcast_to(jnp.asarray(cfg_scale, jnp.float32), (n,))[:, None, None]

    def guided(x, t):
        v = model(jnp.concatenate([x, x]), jnp.concatenate([t, t]), both, geometry.grid, **extras2)
        return v[n:] + scale * (v[:n] - v[n:])

    return guided


def teacher_velocity(teacher: DiffusionModel, batch: dict, geometry: Geometry, scale) -> VelocityFn:
    """The teacher's guided velocity at guidance `scale`: one embedded evaluation, or true CFG."""
    if has_guidance_embed(teacher):
        return bind(teacher, batch, geometry, guidance=scale)
    return bind(teacher, batch, geometry, cfg_scale=scale)


def teacher_nfe_per_call(teacher: DiffusionModel, scale: float) -> int:
    return 1 if has_guidance_embed(teacher) or scale == 1.0 else 2


def full(value, n: int) -> jax.Array:
    return jnp.full((n,), value, jnp.float32)


# --------------------------------------------------------------------------- trajectories


def integrate(velocity: VelocityFn, noise: jax.Array, sigmas) -> jax.Array:
    """Euler steps over the decreasing `sigmas` (noise at sigmas[0]); returns the final state."""
    sigmas = jnp.asarray(sigmas, jnp.float32)
    n = noise.shape[0]

    def step(x, i):
        return x + (sigmas[i + 1] - sigmas[i]) * velocity(x, full(sigmas[i], n)), None

    return jax.lax.scan(step, noise, jnp.arange(len(sigmas) - 1))[0]


def rollout(velocity: VelocityFn, noise: jax.Array, sigmas) -> jax.Array:
    """Euler steps over the decreasing `sigmas`; returns every state [len(sigmas), B, N, C]
    (states[0] = noise, states[-1] = the sample)."""
    sigmas = jnp.asarray(sigmas, jnp.float32)
    n = noise.shape[0]

    def step(x, i):
        v = velocity(x, full(sigmas[i], n))
        return x + (sigmas[i + 1] - sigmas[i]) * v, x

    last, states = jax.lax.scan(step, noise, jnp.arange(len(sigmas) - 1))
    return jnp.concatenate([states, last[None]])


def x0_prediction(velocity: VelocityFn, x: jax.Array, t: jax.Array) -> jax.Array:
    """One student step from (x, t) straight to t = 0: x0 = x - t v(x, t)."""
    return flow.x0_from_velocity(x, velocity(x, t), t)


def student_sigmas(sampling) -> np.ndarray:
    """The sigma grid a student samples on (`config.sampling`): its NFE is num_steps."""
    if sampling.schedule == "uniform":
        return uniform_sigmas(sampling.num_steps, sampling.shift)
    if sampling.schedule == "flow":
        return flow_sigmas(sampling.num_steps, sampling.shift)
    raise ValueError(f"config.sampling.schedule: unknown schedule {sampling.schedule!r} (uniform | flow)")


def high_noise_t(rng: jax.Array, n: int) -> jax.Array:
    """ADP's generator timesteps [1 - (u)^3] with u ~ U[0, 1]: biased toward t = 1 (noise).

    (The recipe writes it as [1 - (t/T)^3] T with t uniform; t = 1 is noise here.)
    """
    u = jax.random.uniform(rng, (n,))
    return 1.0 - u**3
