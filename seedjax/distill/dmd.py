"""Distribution matching: the fake score network and the generator side that DMD2, DMDO and ADM share.

The *real score* is the frozen teacher. The *fake score* starts as a copy of the teacher and
is trained online, by flow matching, on the student's own samples, so it tracks the
distribution the student currently produces. Each train step

1. rolls the student out over its sigma grid (no gradient) from fresh noise, keeping every
   intermediate state;
2. updates the fake score `fake_updates_per_step` times on those samples (DMD2's two-time-scale
   rule: several fake-score updates per generator update);
3. updates the generator once: from the stored state at the start of a random segment
   (`config.dmd.segments` of the K steps; for a one-step student: the noise) it takes one
   student step straight to x̂0, and the loss on x̂0 compares the real and fake scores at a
   re-noised copy of it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from seedjax.diffusion import flow
from seedjax.diffusion import guidance as guidance_lib
from seedjax.diffusion import sampling
from seedjax.diffusion.guidance import VelocityFn
from seedjax.diffusion.objectives import clean_tokens
from seedjax.diffusion.sampling import Sampler
from seedjax.distill.discriminator import MultiLevelHeads
from seedjax.distill.losses import discriminator_loss
from seedjax.distill.student import StudentState, load_pretrained as load_student, validate_config as validate_student
from seedjax.models import generator as models_generator
from seedjax.models.geometry import Geometry
from seedjax.train.params import load_params, pick_params
from seedjax.train.updates import optimize
from seedjax.train.state import make_optimizer


class FakeScore(nnx.Module):
    """The fake score network (a DiffusionModel, teacher-initialised) with optional GAN heads on its trunk."""

    def __init__(self, config, rngs: nnx.Rngs, *, guidance_embed: bool, heads_cfg=None):
        self.model = models_generator.build(config, rngs, guidance_embed)
        self.heads = MultiLevelHeads(self.model, heads_cfg, rngs) if heads_cfg is not None else None

    def velocity(self, batch: dict, geometry, guidance) -> VelocityFn:
        return guidance_lib.bind(self.model, batch, geometry, guidance=guidance)

    def logits(self, x, t, batch: dict, geometry, guidance) -> jax.Array:
        return self.heads(self.model, x, t, batch, geometry, guidance)


class FakeScoreState(StudentState):
    """Student + frozen teacher (real score) + trainable fake score with its own optimizer."""

    def __init__(self, config, rngs: nnx.Rngs, heads_cfg=None):
        super().__init__(config, rngs)
        self.fake_score = FakeScore(config, rngs, guidance_embed=config.distill.teacher_guidance_embed,
                                    heads_cfg=heads_cfg)
        self.fake_optimizer = make_optimizer(self.fake_score, config.fake_optimizer, config.total_steps)


# --------------------------------------------------------------------------- generator side


def student_rollout(model, batch: dict, rng: jax.Array, config) -> dict:
    """The student's trajectory from fresh noise, without gradient.

    Returns {'noise': [B, N, C], 'states': [B, K + 1, N, C] (states[:, 0] = noise,
    states[:, -1] = the sample)}, batch-major so gradient accumulation can split them.
    """
    geo = Geometry.of(config)
    n = models_generator.batch_size(batch)
    noise = jax.random.normal(rng, (n, *geo.token_shape), jnp.float32)
    velocity = guidance_lib.bind(model, batch, geo, guidance=config.distill.guidance)
    states = sampling.rollout(velocity, noise, Sampler.from_config(config.sampling).sigmas)
    return jax.lax.stop_gradient({"noise": noise, "states": jnp.moveaxis(states, 0, 1)})


def segment_starts(config) -> np.ndarray:
    """Indices into the student's sigma grid where its trajectory segments start."""
    k = config.sampling.num_steps
    segments = config.dmd.segments or k
    return np.arange(0, k, k // segments)


def generator_x0(model, batch: dict, rng: jax.Array, config) -> jax.Array:
    """x̂0 with gradient: one student step from the stored state at the start of a random segment."""
    sigmas = jnp.asarray(Sampler.from_config(config.sampling).sigmas, jnp.float32)
    states = batch["states"]
    n = states.shape[0]
    starts = jnp.asarray(segment_starts(config))
    step = starts[jax.random.randint(rng, (n,), 0, len(starts))]
    x, t = states[jnp.arange(n), step], sigmas[step]
    velocity = guidance_lib.bind(model, batch, Geometry.of(config), guidance=config.distill.guidance)
    return sampling.x0_prediction(velocity, x, t)


def renoise(x0: jax.Array, rng: jax.Array, t_min: float, t_max: float):
    """(x_t, t, noise) with t ~ U[t_min, t_max] per example."""
    rng_t, rng_noise = jax.random.split(rng)
    t = jax.random.uniform(rng_t, (x0.shape[0],), minval=t_min, maxval=t_max)
    noise = jax.random.normal(rng_noise, x0.shape, x0.dtype)
    return flow.interpolate(x0, noise, t), t, noise


# --------------------------------------------------------------------------- fake score side


def fake_score_loss(fake: FakeScore, batch: dict, rng: jax.Array, config):
    """Flow matching of the fake score on the student's samples (+ the GAN heads' loss, DMD2)."""
    c = config.dmd
    geo = Geometry.of(config)
    sample = batch["states"][:, -1]
    rng_t, rng_noise, rng_real = jax.random.split(rng, 3)
    t = jax.random.uniform(rng_t, (sample.shape[0],), minval=c.t_min, maxval=c.t_max)
    noise = batch["noise"] if c.variant == "dmdo" else jax.random.normal(rng_noise, sample.shape)
    x_t = flow.interpolate(sample, noise, t)
    guidance = config.distill.teacher_guidance
    fm = flow.masked_mse(fake.velocity(batch, geo, guidance)(x_t, t), flow.velocity_target(sample, noise))
    aux = {"fake_score_loss": fm}
    if fake.heads is None:
        return fm, aux
    real_t = flow.interpolate(clean_tokens(batch, config), jax.random.normal(rng_real, sample.shape), t)
    real_logits = fake.logits(real_t, t, batch, geo, guidance)
    fake_logits = fake.logits(x_t, t, batch, geo, guidance)
    d = discriminator_loss(real_logits, fake_logits, config.disc.loss)
    return fm + c.gan_disc_weight * d, {**aux, "gan_disc_loss": d}


def validate_config(config) -> None:
    validate_student(config)
    c = config.dmd
    if c.variant not in ("dmd2", "dmdo"):
        raise ValueError(f"config.dmd.variant={c.variant!r}: choose dmd2 or dmdo")
    if not 0 < c.t_min < c.t_max <= 1:
        raise ValueError(f"config.dmd: need 0 < t_min < t_max <= 1, got {c.t_min}, {c.t_max}")
    if c.segments < 0 or (c.segments and config.sampling.num_steps % c.segments):
        raise ValueError(f"config.dmd.segments={c.segments} must divide the student's {config.sampling.num_steps} steps")
    if c.fake_updates_per_step < 1:
        raise ValueError(f"config.dmd.fake_updates_per_step must be >= 1, got {c.fake_updates_per_step}")


def update_fake_score(state: FakeScoreState, work: dict, rng: jax.Array, config) -> dict:
    """`config.dmd.fake_updates_per_step` updates of the fake score on the rollout in `work`."""

    def one(fake, optimizer, i):
        loss_fn = lambda f, b: fake_score_loss(f, b, jax.random.fold_in(rng, i), config)
        _, aux, grad_norm = optimize(fake, optimizer, loss_fn, work, config.optimizer.grad_accum_steps)
        return {**aux, "fake_grad_norm": grad_norm}

    return repeat(config.dmd.fake_updates_per_step, one, state.fake_score, state.fake_optimizer)


# --------------------------------------------------------------------------- repeated updates


def repeat(n: int, update, *modules) -> dict:
    """Run `update(*modules, i) -> metrics` n times inside one `lax.fori_loop` (one compiled copy
    of the update, however large n is); returns the metrics averaged over the n runs."""
    if n == 1:
        return update(*modules, 0)
    graphdef, state = nnx.split(modules)

    def pure(state, i):
        live = nnx.merge(graphdef, state)
        metrics = update(*live, i)
        return nnx.state(live), metrics

    shapes = jax.eval_shape(pure, state, 0)[1]
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

    def body(i, carry):
        state, total = carry
        state, metrics = pure(state, i)
        return state, jax.tree.map(jnp.add, total, metrics)

    state, total = jax.lax.fori_loop(0, n, body, (state, zeros))
    nnx.update(modules, state)
    return jax.tree.map(lambda x: x / n, total)


def load_with_fake_score(state: FakeScoreState, source: dict, config) -> None:
    """Student and teacher as every distillation stage; the fake score starts as the teacher."""
    load_student(state, source, config)
    what = f"config.init_from={config.init_from} ({config.distill.teacher_from} -> fake score)"
    load_params(state.fake_score.model, pick_params(source, config.distill.teacher_from, what), what)
