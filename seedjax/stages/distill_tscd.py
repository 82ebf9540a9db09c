"""Trajectory-segmented consistency distillation, TSCD (Hyper-SD; Hyper-Bagel step 2): toward 6 NFE.

The time axis [0, 1] is cut into `segments` equal pieces (on the shifted grid the student
samples on). Inside the segment that holds t, the student's consistency function maps x_t to
the segment's lower end e:

    f_theta(x_t, t) = x_t + (e - t) v_theta(x_t, t)      (so f(x_e, e) = x_e by construction)

A training pair is two neighbours (t, t') of a fine grid of `grid_steps` points inside one
segment: x_t lies on the flow path of a real image, x_t' comes from one teacher ODE step
(the CFG-distilled teacher at the student's guidance scale), and the student is made
consistent: f_theta(x_t, t) should equal sg[f_theta(x_t', t')]. The loss is the MSE between
the two, an adversarial loss (a discriminator on the teacher backbone with multi-level heads
tells the target, "real", from the prediction, "fake", both at time e; hinge), or both.
Sampling with 2 Euler steps per segment (6 for 3 segments) lands on the segment ends.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from seedjax.diffusion import flow
from seedjax.diffusion.sampling import uniform_sigmas
from seedjax.diffusion import guidance as guidance_lib
from seedjax.diffusion import objectives
from seedjax.distill import student, teachers
from seedjax.distill.discriminator import Discriminator
from seedjax.distill.losses import discriminator_loss, generator_loss
from seedjax.distill.student import StudentState, load_pretrained as _load_student, nfe, sample
from seedjax.models.geometry import Geometry
from seedjax.train import updates
from seedjax.train.params import load_params, pick_params
from seedjax.train.state import make_optimizer
from seedjax.train.stage import Stage


def validate_config(config) -> None:
    student.validate_config(config)
    c = config.tscd
    if c.segments < 1 or c.grid_steps % c.segments:
        raise ValueError(f"config.tscd.grid_steps={c.grid_steps} must be a multiple of segments={c.segments} (>= 1)")
    if c.mse_weight <= 0 and c.adversarial_weight <= 0:
        raise ValueError("config.tscd: mse_weight and adversarial_weight are both 0; nothing to train")


class TscdState(StudentState):
    def __init__(self, config, rngs: nnx.Rngs):
        super().__init__(config, rngs)
        c = config.tscd
        adversarial = c.adversarial_weight > 0
        self.disc = Discriminator(config, config.disc, rngs, guidance_embed=config.distill.teacher_guidance_embed) \
            if adversarial else None
        self.disc_optimizer = make_optimizer(self.disc, config.disc_optimizer, config.total_steps) if adversarial else None


def init(config, rngs) -> TscdState:
    return TscdState(config, rngs)


def load_pretrained(state: TscdState, source: dict, config) -> None:
    _load_student(state, source, config)
    if state.disc is not None:  # the discriminator's backbone starts as the teacher
        what = f"config.init_from={config.init_from} ({config.distill.teacher_from} -> discriminator backbone)"
        load_params(state.disc.backbone, pick_params(source, config.distill.teacher_from, what), what)


# --------------------------------------------------------------------------- consistency pairs


def segment_grid(config) -> tuple[np.ndarray, np.ndarray]:
    """(sigmas [grid_steps + 1] decreasing, segment end of each grid step [grid_steps])."""
    c = config.tscd
    sigmas = uniform_sigmas(c.grid_steps, config.sampling.shift)
    per = c.grid_steps // c.segments
    ends = sigmas[(np.arange(c.grid_steps) // per + 1) * per]
    return sigmas, ends


def consistency_pairs(model, teacher, batch: dict, rng: jax.Array, config) -> dict:
    """x_t, t, the segment end e, and the consistency target sg[f(x_t', t')] for each example."""
    rng_i, rng_noise = jax.random.split(rng)
    geo = Geometry.of(config)
    x0 = objectives.clean_tokens(batch, config)
    n = x0.shape[0]
    sigmas, ends = segment_grid(config)
    i = jax.random.randint(rng_i, (n,), 0, config.tscd.grid_steps)
    t, t_next, end = (jnp.asarray(a, jnp.float32)[i] for a in (sigmas[:-1], sigmas[1:], ends))
    x_t = flow.interpolate(x0, jax.random.normal(rng_noise, x0.shape), t)
    v_teacher = teachers.teacher_velocity(teacher, batch, geo, config.distill.teacher_guidance)(x_t, t)
    x_next = x_t + (t_next - t)[:, None, None] * v_teacher
    v_next = guidance_lib.bind(model, batch, geo, guidance=config.distill.guidance)(x_next, t_next)
    target = x_next + (end - t_next)[:, None, None] * v_next
    return jax.lax.stop_gradient({"x_t": x_t, "t": t, "end": end, "target": target})


def consistency_fn(model, batch: dict, config) -> jax.Array:
    """f_theta(x_t, t) for the pairs in `batch` (keys from `consistency_pairs`)."""
    geo = Geometry.of(config)
    v = guidance_lib.bind(model, batch, geo, guidance=config.distill.guidance)(batch["x_t"], batch["t"])
    return batch["x_t"] + (batch["end"] - batch["t"])[:, None, None] * v


def _disc_logits(disc, x, batch, config):
    return disc(x, batch["end"], batch, Geometry.of(config), guidance=config.distill.teacher_guidance)


def student_loss(model, disc, batch: dict, config):
    c = config.tscd
    pred = consistency_fn(model, batch, config)
    mse = flow.masked_mse(pred, batch["target"])
    loss, aux = c.mse_weight * mse, {"consistency_mse": mse}
    if disc is not None:
        adv = generator_loss(_disc_logits(disc, pred, batch, config), config.disc.loss)
        loss = loss + c.adversarial_weight * adv
        aux["generator_adv"] = adv
    return loss, aux


def disc_loss(disc, batch: dict, config):
    real = _disc_logits(disc, batch["target"], batch, config)
    fake = _disc_logits(disc, batch["pred"], batch, config)
    loss = discriminator_loss(real, fake, config.disc.loss)
    return loss, {"disc_loss": loss, "disc_real": jnp.mean(real), "disc_fake": jnp.mean(fake)}


# --------------------------------------------------------------------------- step


def train_step(state: TscdState, batch: dict, rng: jax.Array, config) -> dict:
    accum = config.optimizer.grad_accum_steps
    # Pairs are computed once on the whole batch and travel with it, so gradient
    # accumulation splits them with the captions.
    work = dict(batch, **consistency_pairs(state.model, state.teacher, batch, rng, config))
    metrics = {}
    optimizers = [state.optimizer]
    if state.disc is not None:
        work["pred"] = jax.lax.stop_gradient(consistency_fn(state.model, work, config))
        _, d_aux, d_norm = updates.optimize(state.disc, state.disc_optimizer, lambda d, b: disc_loss(d, b, config),
                                            work, accum)
        metrics.update(d_aux, disc_grad_norm=d_norm)
        optimizers.append(state.disc_optimizer)
    loss, aux, grad_norm = updates.optimize(state.model, state.optimizer,
                                            lambda m, b: student_loss(m, state.disc, b, config), work, accum)
    updates.update_ema(state)
    return {"loss": loss, **aux, **metrics, "grad_norm": grad_norm, **updates.guard_metrics(*optimizers)}


STAGE = Stage(init=init, train_step=train_step, sample=sample, load_pretrained=load_pretrained, nfe=nfe,
              validate_config=validate_config)
