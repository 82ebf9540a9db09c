"""ADM: adversarial distribution matching (DMDX, arXiv 2507.18569; Seedream 4.0), for 1 NFE.

DMD's reverse-KL gradient is replaced by a learned discrepancy. The generator's sample x̂0 is
re-noised to x_t; one probability-flow ODE step of size dt (default T/64) is taken with the real
score (frozen guided teacher) and with the fake score (trained online on the student's samples,
as in DMD):

    x_real = x_t - dt v_real(x_t, t),      x_fake = x_t - dt v_fake(x_t, t)       (at t - dt)

A diffusion discriminator (frozen teacher backbone + trainable multi-level heads) learns to tell
them apart with a hinge loss, max(0, 1 - D(x_real)) + max(0, 1 + D(x_fake)); the generator
minimises -D(x_fake), with the gradient flowing through x_t into x̂0. Each step updates the
fake score `config.dmd.fake_updates_per_step` times, then the discriminator once, then the
generator once, each network with its own optimizer.

    python -m seedjax.main --config=experiments/quickstart/distill_adm.py --workdir=runs/qs/adm \
        --config.init_from=runs/qs/adp
"""

from __future__ import annotations

import jax
from flax import nnx

from seedjax.distill import dmd, teachers
from seedjax.distill.discriminator import Discriminator
from seedjax.distill.dmd import load_with_fake_score
from seedjax.distill.losses import discriminator_loss, generator_loss
from seedjax.distill.student import nfe, sample
from seedjax.diffusion.guidance import VelocityFn
from seedjax.models.geometry import Geometry
from seedjax.train import updates
from seedjax.train.params import load_params, pick_params
from seedjax.train.state import make_optimizer
from seedjax.train.stage import Stage


def validate_config(config) -> None:
    dmd.validate_config(config)
    if not 0 < config.adm.ode_dt < config.dmd.t_max:
        raise ValueError(f"config.adm.ode_dt={config.adm.ode_dt} must lie in (0, config.dmd.t_max)")


class AdmState(dmd.FakeScoreState):
    def __init__(self, config, rngs: nnx.Rngs):
        super().__init__(config, rngs)
        self.disc = Discriminator(config, config.disc, rngs, guidance_embed=config.distill.teacher_guidance_embed)
        self.disc_optimizer = make_optimizer(self.disc, config.disc_optimizer, config.total_steps)


def init(config, rngs) -> AdmState:
    return AdmState(config, rngs)


def load_pretrained(state: AdmState, source: dict, config) -> None:
    """Student, teacher and fake score as in DMD; the discriminator's backbone is the teacher."""
    load_with_fake_score(state, source, config)
    what = f"config.init_from={config.init_from} ({config.distill.teacher_from} -> discriminator backbone)"
    load_params(state.disc.backbone, pick_params(source, config.distill.teacher_from, what), what)


# --------------------------------------------------------------------------- losses


def noisy_points(x0: jax.Array, rng: jax.Array, config):
    """x0 re-noised to x_t at t ~ U[max(t_min, dt), t_max]: one ODE step of dt stays above t = 0."""
    return dmd.renoise(x0, rng, max(config.dmd.t_min, config.adm.ode_dt), config.dmd.t_max)


def ode_step(velocity: VelocityFn, x_t: jax.Array, t: jax.Array, dt: float) -> jax.Array:
    return x_t - dt * velocity(x_t, t)


def _logits(disc: Discriminator, x, t, batch, config):
    return disc(x, t, batch, Geometry.of(config), guidance=config.distill.teacher_guidance)


def adm_disc_loss(disc: Discriminator, teacher, fake: dmd.FakeScore, batch: dict, rng: jax.Array, config):
    geo, dt, guidance = Geometry.of(config), config.adm.ode_dt, config.distill.teacher_guidance
    x_t, t, _ = noisy_points(batch["states"][:, -1], rng, config)
    x_real = ode_step(teachers.teacher_velocity(teacher, batch, geo, guidance), x_t, t, dt)
    x_fake = ode_step(fake.velocity(batch, geo, guidance), x_t, t, dt)
    x_real, x_fake = jax.lax.stop_gradient((x_real, x_fake))
    real, fake_logits = _logits(disc, x_real, t - dt, batch, config), _logits(disc, x_fake, t - dt, batch, config)
    loss = discriminator_loss(real, fake_logits, config.disc.loss)
    return loss, {"disc_loss": loss, "disc_real": real.mean(), "disc_fake": fake_logits.mean()}


def adm_generator_loss(model, fake: dmd.FakeScore, disc: Discriminator, batch: dict, rng: jax.Array, config):
    rng_step, rng_noise = jax.random.split(rng)
    geo, dt = Geometry.of(config), config.adm.ode_dt
    x0 = dmd.generator_x0(model, batch, rng_step, config)
    x_t, t, _ = noisy_points(x0, rng_noise, config)
    x_fake = ode_step(fake.velocity(batch, geo, config.distill.teacher_guidance), x_t, t, dt)
    loss = generator_loss(_logits(disc, x_fake, t - dt, batch, config), config.disc.loss)
    return loss, {"adm_generator_loss": loss}


# --------------------------------------------------------------------------- step


def train_step(state: AdmState, batch: dict, rng: jax.Array, config) -> dict:
    rng_rollout, rng_fake, rng_disc, rng_gen = jax.random.split(rng, 4)
    accum = config.optimizer.grad_accum_steps
    work = dict(batch, **dmd.student_rollout(state.model, batch, rng_rollout, config))

    fake_metrics = dmd.update_fake_score(state, work, rng_fake, config)
    _, d_aux, d_norm = updates.optimize(
        state.disc, state.disc_optimizer,
        lambda d, b: adm_disc_loss(d, state.teacher, state.fake_score, b, rng_disc, config), work, accum)
    loss, aux, grad_norm = updates.optimize(
        state.model, state.optimizer, lambda m, b: adm_generator_loss(m, state.fake_score, state.disc, b, rng_gen, config),
        work, accum)
    updates.update_ema(state)
    return {"loss": loss, **aux, **fake_metrics, **d_aux, "grad_norm": grad_norm, "disc_grad_norm": d_norm,
            **updates.guard_metrics(state.optimizer, state.fake_optimizer, state.disc_optimizer)}


STAGE = Stage(init=init, train_step=train_step, sample=sample, load_pretrained=load_pretrained, nfe=nfe,
              validate_config=validate_config)
