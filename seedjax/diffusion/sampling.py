"""Probability-flow ODE sampling with classifier-free guidance and NFE accounting.

A sampler integrates dx/dt = v(x, t) from t = 1 (noise) to t = 0 (data) over a
decreasing list of sigmas. `nfe` counts network evaluations per sample, with CFG's
conditional + unconditional pass counted as two.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from seedjax.diffusion.flow import shift_time

NUM_TRAIN_TIMESTEPS = 1000


def flow_sigmas(num_steps: int, shift: float = 1.0, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> np.ndarray:
    """Decreasing sigmas [num_steps + 1] ending in 0, as diffusers' FlowMatchEulerDiscreteScheduler.

    Like diffusers: a linear grid from 1 to the scheduler's smallest training sigma
    (itself shifted), then shifted by `shift`, then a terminal 0.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    sigma_min = float(shift_time(1.0 / num_train_timesteps, shift))
    grid = np.linspace(1.0, sigma_min, num_steps, dtype=np.float64)
    sigmas = shift_time(grid, shift)
    return np.append(sigmas, 0.0).astype(np.float32)


def uniform_sigmas(num_steps: int, shift: float = 1.0) -> np.ndarray:
    """Evenly spaced sigmas from 1 to 0 (then shifted): the grid few-step students are trained on."""
    return shift_time(np.linspace(1.0, 0.0, num_steps + 1), shift).astype(np.float32)


VelocityFn = Callable[[jax.Array, jax.Array, object], jax.Array]  # (x, t [B], cond) -> v


@dataclasses.dataclass(frozen=True)
class EulerSampler:
    """Euler steps over `sigmas`; `guidance_scale` != 1 runs CFG (two evaluations a step).

    `velocity_fn(x, t, cond)` is called with cond and uncond concatenated along the batch
    axis when guiding, so one call serves both halves.
    """

    sigmas: tuple[float, ...]
    guidance_scale: float = 1.0

    @classmethod
    def make(cls, num_steps: int, shift: float = 1.0, guidance_scale: float = 1.0, schedule: str = "flow"):
        sig = flow_sigmas(num_steps, shift) if schedule == "flow" else uniform_sigmas(num_steps, shift)
        return cls(tuple(float(s) for s in sig), float(guidance_scale))

    @property
    def num_steps(self) -> int:
        return len(self.sigmas) - 1

    @property
    def guided(self) -> bool:
        return self.guidance_scale != 1.0

    @property
    def nfe(self) -> int:
        return self.num_steps * (2 if self.guided else 1)

    def __call__(self, velocity_fn: VelocityFn, noise: jax.Array, cond, uncond=None) -> jax.Array:
        if self.guided and uncond is None:
            raise ValueError("guidance_scale != 1 needs an unconditional input (uncond)")
        sigmas = jnp.asarray(self.sigmas, jnp.float32)
        batch = noise.shape[0]
        both = jax.tree.map(lambda c, u: jnp.concatenate([c, u]), cond, uncond) if self.guided else None

        def velocity(x, sigma):
            t = jnp.full((batch,), sigma, jnp.float32)
            if not self.guided:
                return velocity_fn(x, t, cond)
            v = velocity_fn(jnp.concatenate([x, x]), jnp.concatenate([t, t]), both)
            v_cond, v_uncond = v[:batch], v[batch:]
            return v_uncond + self.guidance_scale * (v_cond - v_uncond)

        def step(x, i):
            v = velocity(x, sigmas[i])
            return x + (sigmas[i + 1] - sigmas[i]) * v.astype(x.dtype), None

        x, _ = jax.lax.scan(step, noise, jnp.arange(self.num_steps))
        return x
