"""AAPT stage 2: consistency distillation of the block-causal video DiT to 1 NFE a latent frame.

The TSCD recipe (seedjax/stages/distill_tscd.py) with one segment, per latent frame and with
teacher forcing. The teacher is the adapted diffusion model (frozen); the student starts as a
copy of it. A real clip x0 is noised frame by frame on a grid of `config.aapt.grid_steps` teacher
steps, t_f = sigma_i (i drawn per frame with config.diffusion.per_frame_t, else once per clip);
every frame is given its real previous frame as the recycled input. One teacher Euler step
moves each frame to t'_f = sigma_(i+1), and the student is made consistent along that step:

    f_theta(x_t, t) = x_t - t v_theta(x_t, t)         (the clean frames it predicts; f(x_0, 0) = x_0)
    loss = || f_theta(x_t, t) - sg[f_theta(x_t', t')] ||^2

At t = 1, f_theta is the 1-NFE generator: frame f = noise_f - v_theta(noise_f, 1), what
`seedjax.tools.stream --steps=1` and the stage's samples (config.sampling.num_steps = 1) run.

    python -m seedjax.main --config=experiments/seedance/aapt_consistency.py --workdir=runs/seedance/aapt_consistency \\
        --config.init_from=runs/seedance/aapt_adapt
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from seedjax.diffusion import flow
from seedjax.diffusion.sampling import uniform_sigmas
from seedjax.distill import causal, student
from seedjax.train import updates
from seedjax.train.stage import Stage


def validate_config(config) -> None:
    causal.validate_config(config)
    if config.aapt.grid_steps < 1:
        raise ValueError(f"config.aapt.grid_steps={config.aapt.grid_steps} must be >= 1")


def init(config, rngs) -> student.StudentState:
    return student.StudentState(config, rngs, guidance_embed=False)


def _per_token(per_frame: jax.Array, tokens: int) -> jax.Array:
    """[B, F] -> [B, F * P, 1] (P = tokens // F)."""
    return jnp.repeat(per_frame, tokens // per_frame.shape[1], axis=1)[..., None]


def consistency_pairs(model, teacher, batch: dict, rng: jax.Array, config) -> dict:
    """x_t, the per-frame times t [B, F] and the target sg[f_theta(x_t', t')] of each clip."""
    rng_i, rng_noise = jax.random.split(rng)
    x0, geometry = causal.clean_clip(batch, config)
    n, frames = x0.shape[0], geometry.grid[0]
    sigmas = jnp.asarray(uniform_sigmas(config.aapt.grid_steps, config.sampling.shift))
    per_frame = config.diffusion.get("per_frame_t", False)
    i = jax.random.randint(rng_i, (n, frames if per_frame else 1), 0, config.aapt.grid_steps)
    i = jnp.broadcast_to(i, (n, frames))
    t, t_next = sigmas[i], sigmas[i + 1]
    x_t = flow.interpolate(x0, jax.random.normal(rng_noise, x0.shape), _per_token(t, x0.shape[1]))
    x_next = x_t + _per_token(t_next - t, x0.shape[1]) * causal.teacher_forced(teacher, batch, x_t, t, x0, geometry)
    target = x_next - _per_token(t_next, x0.shape[1]) * causal.teacher_forced(model, batch, x_next, t_next, x0, geometry)
    return jax.lax.stop_gradient({"x_t": x_t, "t": t, "target": target})


def student_loss(model, batch: dict, config):
    x0, geometry = causal.clean_clip(batch, config)
    v = causal.teacher_forced(model, batch, batch["x_t"], batch["t"], x0, geometry)
    pred = flow.x0_from_velocity(batch["x_t"], v, _per_token(batch["t"], v.shape[1]))
    mse = flow.masked_mse(pred, batch["target"])
    return mse, {"consistency_mse": mse}


def train_step(state: student.StudentState, batch: dict, rng: jax.Array, config) -> dict:
    # The pairs are made once on the whole batch and travel with it (gradient accumulation splits them).
    work = dict(batch, **consistency_pairs(state.model, state.teacher, batch, rng, config))
    loss, aux, grad_norm = updates.optimize(state.model, state.optimizer, lambda m, b: student_loss(m, b, config),
                                            work, config.optimizer.grad_accum_steps)
    updates.update_ema(state)
    return {"loss": loss, **aux, "grad_norm": grad_norm, **updates.guard_metrics(state.optimizer)}


STAGE = Stage(init=init, train_step=train_step, sample=student.sample, load_pretrained=student.load_pretrained,
              nfe=student.nfe, validate_config=validate_config)
