"""The one sampler: probability-flow ODE steps, rollouts and ReFL's differentiable unroll.

A sampler integrates dx/dt = v(x, t) from t = 1 (noise) to t = 0 (data) over a decreasing
list of sigmas. The velocity comes from `seedjax.diffusion.guidance` (CFG, once). `nfe`
counts network evaluations per sample, with CFG's conditional + unconditional pass as two.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from seedjax.diffusion import flow
from seedjax.diffusion import guidance as guidance_lib
from seedjax.diffusion.flow import shift_time
from seedjax.diffusion.guidance import VelocityFn
from seedjax.models import generator
from seedjax.models.geometry import Geometry

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


@dataclasses.dataclass(frozen=True)
class Sampler:
    """Euler steps of the probability-flow ODE over `sigmas`, with the guidance it samples at.

    `cfg_scale` != 1 runs true classifier-free guidance (two evaluations a step); `guidance`
    feeds a guidance-embedded (CFG-distilled) model its scale (one evaluation a step). Every
    sampler in seedjax is one of these: pretraining's 30-step grid, a student's 6 or 1 steps,
    RLHF's unrolled sampler, PARO's calibration runs.
    """

    sigmas: tuple[float, ...]
    cfg_scale: float = 1.0
    guidance: float | None = None
    reference_scale: float = 1.0  # edit batches: guidance on the reference images (a third evaluation a step)

    @classmethod
    def make(cls, num_steps: int, shift: float = 1.0, cfg_scale: float = 1.0, schedule: str = "flow",
             guidance: float | None = None, reference_scale: float = 1.0) -> "Sampler":
        if schedule == "flow":
            sig = flow_sigmas(num_steps, shift)
        elif schedule == "uniform":
            sig = uniform_sigmas(num_steps, shift)
        else:
            raise ValueError(f"config.sampling.schedule: unknown schedule {schedule!r} (uniform | flow)")
        return cls(tuple(float(s) for s in sig), float(cfg_scale), None if guidance is None else float(guidance),
                   float(reference_scale))

    @classmethod
    def from_config(cls, sampling, guidance: float | None = None) -> "Sampler":
        """The sampler of a `config.sampling` group (`schedule` defaults to the flow grid)."""
        return cls.make(sampling.num_steps, sampling.shift, sampling.guidance_scale, sampling.get("schedule", "flow"),
                        guidance, sampling.get("reference_scale", 1.0))

    @property
    def num_steps(self) -> int:
        return len(self.sigmas) - 1

    @property
    def guided(self) -> bool:
        return self.cfg_scale != 1.0

    @property
    def nfe(self) -> int:
        """Network evaluations per sample (a true-CFG step counts twice; with reference guidance,
        which only edit batches take, three times)."""
        return self.num_steps * (3 if self.reference_scale != 1.0 else 2 if self.guided else 1)

    def velocity(self, model, batch: dict, geometry: Geometry, attention=None) -> VelocityFn:
        """`model`'s velocity for the batch's captions at this sampler's guidance."""
        return guidance_lib.bind(model, batch, geometry, guidance=self.guidance, cfg_scale=self.cfg_scale,
                                 reference_scale=self.reference_scale, attention=attention)

    def __call__(self, velocity: VelocityFn, noise: jax.Array) -> jax.Array:
        return integrate(velocity, noise, self.sigmas)

    def generate(self, model, batch: dict, geometry: Geometry, rng: jax.Array, attention=None) -> jax.Array:
        """Samples [N, F, H, W, C] (pixels or latents) for the captions in `batch`."""
        noise = model.start(geometry.noise(rng, generator.batch_size(batch)), batch, geometry)
        return geometry.frames_of(self(self.velocity(model, batch, geometry, attention), noise))


def full(value, n: int) -> jax.Array:
    return jnp.full((n,), value, jnp.float32)


def integrate(velocity: VelocityFn, noise: jax.Array, sigmas) -> jax.Array:
    """Euler steps over the decreasing `sigmas` (noise at sigmas[0]); returns the final state."""
    sigmas = jnp.asarray(sigmas, jnp.float32)
    n = noise.shape[0]

    def step(x, i):
        return x + (sigmas[i + 1] - sigmas[i]) * velocity(x, full(sigmas[i], n)), None

    return jax.lax.scan(step, noise, jnp.arange(len(sigmas) - 1))[0]


def rollout(velocity: VelocityFn, noise: jax.Array, sigmas) -> jax.Array:
    """Euler steps over the decreasing `sigmas`; returns every state [len(sigmas), B, N, D]
    (states[0] = noise, states[-1] = the sample)."""
    sigmas = jnp.asarray(sigmas, jnp.float32)
    n = noise.shape[0]

    def step(x, i):
        v = velocity(x, full(sigmas[i], n))
        return x + (sigmas[i + 1] - sigmas[i]) * v, x

    last, states = jax.lax.scan(step, noise, jnp.arange(len(sigmas) - 1))
    return jnp.concatenate([states, last[None]])


def x0_prediction(velocity: VelocityFn, x: jax.Array, t: jax.Array) -> jax.Array:
    """One step from (x, t) straight to t = 0: x0 = x - t v(x, t)."""
    return flow.x0_from_velocity(x, velocity(x, t), t)


def refl_x0(model: nnx.Module, velocity, noise: jax.Array, sigmas: jax.Array, stop: jax.Array, grad_steps: int,
            remat: bool = True) -> jax.Array:
    """ReFL's unroll: the clean tokens predicted at sampler step `stop` (traced), differentiable
    only through the last `grad_steps` Euler steps before it and the x0 prediction at it.

    `velocity(m, x, sigma, frozen)` is the (guided) velocity of module `m`; `frozen=True` asks
    for it on stop-gradient conditioning. Steps 0 .. stop - K - 1 run on stop-gradient
    parameters; the K steps stop - K .. stop - 1 run on the live model, each under
    jax.checkpoint when `remat` (memory: K latents, not K activations).
    """
    graphdef, params = nnx.split(model)
    frozen = nnx.merge(graphdef, jax.lax.stop_gradient(params))

    def frozen_step(i, x):
        return x + (sigmas[i + 1] - sigmas[i]) * velocity(frozen, x, sigmas[i], frozen=True)

    x = jax.lax.stop_gradient(jax.lax.fori_loop(0, stop - grad_steps, frozen_step, noise))

    def live_step(params, x, i):
        return x + (sigmas[i + 1] - sigmas[i]) * velocity(nnx.merge(graphdef, params), x, sigmas[i])

    live_step = jax.checkpoint(live_step) if remat else live_step
    x, _ = jax.lax.scan(lambda x, j: (live_step(params, x, stop - grad_steps + j), None), x, jnp.arange(grad_steps))
    return x - sigmas[stop] * velocity(model, x, sigmas[stop])
