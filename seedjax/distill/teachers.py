"""The frozen teacher of a distillation stage: its velocity, its ODE pairs, the students' timesteps.

Conventions (seedjax/diffusion/flow.py): t = 0 data, t = 1 noise, x_t = (1 - t) x0 + t eps,
v = eps - x0. After CFG distillation every model takes the guidance scale through the MMDiT's
guidance embedder, so one evaluation gives the guided velocity; a teacher that was not
CFG-distilled runs true CFG (two evaluations).
"""

from __future__ import annotations

import jax

from seedjax.diffusion import guidance as guidance_lib
from seedjax.diffusion.guidance import VelocityFn
from seedjax.models.generator import DiffusionModel
from seedjax.models.geometry import Geometry


def teacher_velocity(teacher: DiffusionModel, batch: dict, geometry: Geometry, scale) -> VelocityFn:
    """The teacher's guided velocity at guidance `scale`: one embedded evaluation, or true CFG."""
    if teacher.guidance_embedded:
        return guidance_lib.bind(teacher, batch, geometry, guidance=scale)
    return guidance_lib.bind(teacher, batch, geometry, cfg_scale=scale)


def teacher_nfe_per_call(teacher: DiffusionModel, scale: float) -> int:
    return 1 if teacher.guidance_embedded or scale == 1.0 else 2


def high_noise_t(rng: jax.Array, n: int) -> jax.Array:
    """ADP's generator timesteps [1 - (u)^3] with u ~ U[0, 1]: biased toward t = 1 (noise).

    (The recipe writes it as [1 - (t/T)^3] T with t uniform; t = 1 is noise here.)
    """
    u = jax.random.uniform(rng, (n,))
    return 1.0 - u**3


def split_pairs(batch: dict, channels: int) -> tuple[jax.Array, jax.Array]:
    """A batch of ODE-pair records -> (x0 [B, H, W, C], noise [B, H, W, C])."""
    if "latent" not in batch or batch["latent"].shape[-1] != 2 * channels:
        got = batch["latent"].shape if "latent" in batch else f"no 'latent' (keys {sorted(batch)})"
        raise ValueError(f"expected ODE pairs 'latent' [B, H, W, {2 * channels}] = concat([x0, noise]) from "
                         f"`python -m seedjax.tools.ode_pairs` (config.data.source='shards'); got {got}")
    pairs = batch["latent"]
    return pairs[..., :channels], pairs[..., channels:]
