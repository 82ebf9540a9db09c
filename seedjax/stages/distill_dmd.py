"""DMD2 and DMDO: distribution matching distillation (Hyper-Bagel step 3; the DMDX paper's baseline).

The generator's loss on its sample x̂0 (see `seedjax.distill.losses.dmd_loss`): re-noise x̂0 to
x_t, ask the real score (frozen, guided teacher) and the fake score (trained online on the
student's samples) for their clean-image predictions, and push x̂0 along their difference.
Optionally DMD2's GAN term: heads on the fake score's trunk classify real images against the
student's samples (both re-noised); the heads train with the fake score, the generator gets
-weight * log-sigmoid / hinge of their logits.

`config.dmd.variant`:
- `dmd2`: the fake score learns the student's samples with fresh noise; a K-step student is
  trained by backward simulation (x̂0 from the stored state at the start of a random step).
- `dmdo` (Hyper-Bagel): the student's full K-step rollout also gives the fake score its
  training pairs (x_t = (1 - t) x0 + t x_T, target velocity x_T - x0), and the generator
  takes one student step from the stored state at the start of a random segment.

    python -m seedjax.main --config=experiments/quickstart/distill_dmdo.py --workdir=runs/qs/dmdo \
        --config.init_from=runs/qs/tscd
"""

from __future__ import annotations

import jax
from flax import nnx

from seedjax.diffusion import sampling
from seedjax.distill import dmd, teachers
from seedjax.distill.dmd import load_with_fake_score
from seedjax.distill.losses import dmd_loss, generator_loss
from seedjax.distill.student import nfe, sample
from seedjax.models.geometry import Geometry
from seedjax.train import updates
from seedjax.train.stage import Stage


validate_config = dmd.validate_config


class DmdState(dmd.FakeScoreState):
    def __init__(self, config, rngs: nnx.Rngs):
        super().__init__(config, rngs, heads_cfg=config.disc if config.dmd.gan_weight > 0 else None)


def init(config, rngs) -> DmdState:
    return DmdState(config, rngs)


def dmd_generator_loss(model, teacher, fake: dmd.FakeScore, batch: dict, rng: jax.Array, config):
    c = config.dmd
    rng_step, rng_noise = jax.random.split(rng)
    geo = Geometry.of(config)
    guidance = config.distill.teacher_guidance
    x0 = dmd.generator_x0(model, batch, rng_step, config)
    x_t, t, _ = dmd.renoise(x0, rng_noise, c.t_min, c.t_max)
    x0_real = sampling.x0_prediction(teachers.teacher_velocity(teacher, batch, geo, guidance), x_t, t)
    x0_fake = sampling.x0_prediction(fake.velocity(batch, geo, guidance), x_t, t)
    loss = dmd_loss(x0, x0_real, x0_fake)
    aux = {"dmd_loss": loss}
    if fake.heads is not None:
        gan = generator_loss(fake.logits(x_t, t, batch, geo, guidance), config.disc.loss)
        loss = loss + c.gan_weight * gan
        aux["generator_gan"] = gan
    return loss, aux


def train_step(state: DmdState, batch: dict, rng: jax.Array, config) -> dict:
    rng_rollout, rng_fake, rng_gen = jax.random.split(rng, 3)
    accum = config.optimizer.grad_accum_steps
    work = dict(batch, **dmd.student_rollout(state.model, batch, rng_rollout, config))

    fake_metrics = dmd.update_fake_score(state, work, rng_fake, config)
    loss_fn = lambda m, b: dmd_generator_loss(m, state.teacher, state.fake_score, b, rng_gen, config)
    loss, aux, grad_norm = updates.optimize(state.model, state.optimizer, loss_fn, work, accum)
    updates.update_ema(state)
    return {"loss": loss, **aux, **fake_metrics, "grad_norm": grad_norm,
            **updates.guard_metrics(state.optimizer, state.fake_optimizer)}


STAGE = Stage(init=init, train_step=train_step, sample=sample, load_pretrained=load_with_fake_score, nfe=nfe,
              validate_config=validate_config)
