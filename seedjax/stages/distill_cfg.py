"""CFG distillation (Hyper-Bagel, step 1): one student evaluation = the teacher's guided velocity.

The student is the teacher plus a guidance-scale embedder (`config.model.guidance_embed`,
zero-initialised so the student starts as the teacher's conditional branch). Each step
draws a guidance scale g ~ U[guidance_min, guidance_max] per example and a point x_t on the
flow path of a real image, and regresses the student's v(x_t, t, c, g) on the teacher's
classifier-free-guided velocity v_u + g (v_c - v_u) (two teacher evaluations). Sampling at
scale g then costs one evaluation per step instead of two.

    python -m seedjax.main --config=experiments/quickstart/distill_cfg.py --workdir=runs/qs/cfg \
        --config.init_from=runs/qs/pretrain
"""

from __future__ import annotations

import jax

from seedjax.diffusion import flow
from seedjax.diffusion import guidance as guidance_lib
from seedjax.diffusion import objectives
from seedjax.distill import student, teachers
from seedjax.distill.student import StudentState, load_pretrained, nfe, sample
from seedjax.models import generator
from seedjax.models.geometry import Geometry
from seedjax.train import updates
from seedjax.train.stage import Stage


def validate_config(config) -> None:
    student.validate_config(config)
    if config.distill.teacher_guidance_embed:
        raise ValueError("distill_cfg: the teacher must be a plain CFG model (config.distill.teacher_guidance_embed=False)")
    c = config.cfg_distill
    if not 0 < c.guidance_min <= c.guidance_max:
        raise ValueError(f"config.cfg_distill: need 0 < guidance_min <= guidance_max, got {c.guidance_min}, {c.guidance_max}")


def init(config, rngs) -> StudentState:
    return StudentState(config, rngs)


def cfg_distill_loss(model, teacher, batch: dict, rng: jax.Array, config):
    """MSE between the student's velocity at guidance g and the teacher's CFG velocity at scale g."""
    rng_t, rng_noise, rng_g = jax.random.split(rng, 3)
    geo = Geometry.of(config)
    x0 = objectives.clean_tokens(batch, config)
    n = x0.shape[0]
    t = flow.sample_t(rng_t, n, config.diffusion, flow.resolution_shift(x0.shape[1], config.diffusion))
    x_t = flow.interpolate(x0, jax.random.normal(rng_noise, x0.shape), t)
    g = jax.random.uniform(rng_g, (n,), minval=config.cfg_distill.guidance_min, maxval=config.cfg_distill.guidance_max)
    v_teacher = jax.lax.stop_gradient(teachers.teacher_velocity(teacher, batch, geo, g)(x_t, t))
    v_student = guidance_lib.bind(model, batch, geo, guidance=g)(x_t, t)
    loss = flow.masked_mse(v_student, v_teacher)
    return loss, {"cfg_mse": loss}


def train_step(state: StudentState, batch: dict, rng: jax.Array, config) -> dict:
    loss_fn = lambda model, b: cfg_distill_loss(model, state.teacher, b, rng, config)
    loss, aux, grad_norm = updates.optimize(state.model, state.optimizer, loss_fn, batch,
                                            config.optimizer.grad_accum_steps)
    updates.update_ema(state)
    return {"loss": loss, **aux, "grad_norm": grad_norm, **updates.guard_metrics(state.optimizer)}


def flops_per_example(config) -> float:
    """Student forward + backward, teacher forward on the conditional and unconditional inputs."""
    return generator.train_flops_per_example(config, Geometry.of(config)) * (1.0 + 2.0 / 3.0)


STAGE = Stage(init=init, train_step=train_step, sample=sample, flops_per_example=flops_per_example,
              load_pretrained=load_pretrained, validate_config=validate_config, nfe=nfe)
