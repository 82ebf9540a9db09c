"""SeedVR2's one-step restoration: adversarial post-training of the multi-step restoration model.

The generator restores in one network evaluation: from pure noise at t = 1, conditioned on the
degraded clip, x0 = noise - v(noise, 1). It starts from the multi-step model (experiments/seedvr/
restore.py), whose t = 1 prediction is already the mean of the clean clips given the degraded
one (a blurry but sensible restoration); the discriminator (`seedjax.distill.
restoration_discriminator`, the same network initialised from the same model, conditioned on
the degraded clip) pushes it toward sharp, real-looking output. Each step, with f = softplus:

    discriminator  f(D(fake) - D(real)) + (gamma / 2) (R1 + R2)          RpGAN with AAPT's approximate
    generator      f(D(real) - D(fake)) + fm_weight * FM                R1 / R2 (seedjax.distill.r3gan)

where the pairs are the restored and the clean clip of the same degraded input, and FM is the L1
distance between the discriminator's features of the two at `restore_gan.feature_blocks` (the
feature-matching loss; real features are a fixed target). One discriminator update, then one
generator update. Progressive distillation (SeedVR2 halves the steps before this stage) is not
done: the chain goes from the multi-step model to one step directly.

    python -m seedjax.main --config=experiments/seedvr/restore_adversarial.py --workdir=runs/seedvr/restore_adversarial \\
        --config.init_from=runs/seedvr/restore
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from seedjax.diffusion import objectives, tasks
from seedjax.distill import r3gan
from seedjax.distill.restoration_discriminator import RestorationDiscriminator
from seedjax.models import generator
from seedjax.train import updates
from seedjax.train.flow_matching import load_generator, sample
from seedjax.train.params import load_params, pick_params
from seedjax.train.stage import Stage
from seedjax.train.state import EMA, make_optimizer


def validate_config(config) -> None:
    g = config.restore_gan
    if not config.init_from:
        raise ValueError("stage restore_adversarial starts from a multi-step restoration model: set config.init_from")
    if not config.diffusion.get("restore", False):
        raise ValueError("stage restore_adversarial trains a restoration model: set config.diffusion.restore")
    tasks.validate_restore(config)
    if g.gamma < 0 or g.sigma <= 0 or g.fm_weight < 0 or g.head_hidden < 1:
        raise ValueError(f"config.restore_gan: gamma={g.gamma} (>= 0), sigma={g.sigma} (> 0), fm_weight={g.fm_weight} "
                         f"(>= 0), head_hidden={g.head_hidden} (>= 1)")
    if config.sampling.num_steps != 1:
        raise ValueError(f"stage restore_adversarial trains a one-step model: config.sampling.num_steps must be 1, "
                         f"got {config.sampling.num_steps}")


class RestoreGANState(nnx.Module):
    """The one-step generator (its optimizer and EMA) and the discriminator (its optimizer)."""

    def __init__(self, config, rngs: nnx.Rngs):
        g = config.restore_gan
        self.model = generator.build(config, rngs)
        self.optimizer = make_optimizer(self.model, config.optimizer, config.total_steps)
        self.ema = EMA(self.model, config.ema_decay) if config.ema_decay > 0 else None
        self.disc = RestorationDiscriminator(config, rngs, g.head_hidden, g.feature_blocks)
        self.disc_optimizer = make_optimizer(self.disc, config.disc_optimizer, config.total_steps)


def init(config, rngs) -> RestoreGANState:
    return RestoreGANState(config, rngs)


def load_pretrained(state: RestoreGANState, source: dict, config) -> None:
    """Generator and discriminator backbone both from the multi-step model (its EMA with
    config.init_from_ema); the discriminator's head is new."""
    load_generator(state, source, config)
    entry = "ema" if config.get("init_from_ema", False) and source.get("ema") else "model"
    what = f"config.init_from={config.init_from}"
    load_params(state.disc.backbone, pick_params(source, entry, what), f"{what} ({entry} -> discriminator backbone)")


def one_step(model, batch: dict, noise: jax.Array, geometry) -> jax.Array:
    """The generator's restoration tokens: one Euler step from t = 1, x0 = noise - v(noise, 1)."""
    t = jnp.ones((noise.shape[0],), jnp.float32)
    return noise - model(noise, t, model.condition(batch), geometry)


# --------------------------------------------------------------------------- losses


def disc_loss(disc: RestorationDiscriminator, batch: dict, rng: jax.Array, config):
    g = config.restore_gan
    geometry = objectives.batch_geometry(batch, config)
    real, fake = objectives.clean_tokens(batch, config, geometry), batch["restored"]
    real_logits, _ = disc(real, batch, geometry)
    fake_logits, _ = disc(fake, batch, geometry)
    adv = r3gan.relativistic_d_loss(real_logits, fake_logits)
    aux = {"disc_loss": adv, "disc_real": real_logits.mean(), "disc_fake": fake_logits.mean()}
    if g.gamma == 0:
        return adv, aux
    rng_r1, rng_r2 = jax.random.split(rng)
    logits = lambda x: disc(x, batch, geometry)[0]
    r1 = r3gan.approximate_penalty(logits, real, rng_r1, g.sigma, real_logits)
    r2 = r3gan.approximate_penalty(logits, fake, rng_r2, g.sigma, fake_logits)
    return adv + 0.5 * g.gamma * (r1 + r2), aux | {"r1": r1, "r2": r2}


def feature_matching(fake_features: list[jax.Array], real_features: list[jax.Array]) -> jax.Array:
    """Mean over the layers of the mean absolute difference of the features (real ones a fixed target)."""
    terms = [jnp.mean(jnp.abs(f - jax.lax.stop_gradient(r))) for f, r in zip(fake_features, real_features)]
    return sum(terms) / len(terms)


def generator_loss(model, disc: RestorationDiscriminator, batch: dict, config):
    g = config.restore_gan
    geometry = objectives.batch_geometry(batch, config)
    real = objectives.clean_tokens(batch, config, geometry)
    fake = one_step(model, batch, batch["noise"], geometry)
    real_logits, real_features = disc(real, batch, geometry)
    fake_logits, fake_features = disc(fake, batch, geometry)
    adv = r3gan.relativistic_g_loss(jax.lax.stop_gradient(real_logits), fake_logits)
    fm = feature_matching(fake_features, real_features)
    return adv + g.fm_weight * fm, {"generator_adv": adv, "feature_matching": fm}


# --------------------------------------------------------------------------- step


def train_step(state: RestoreGANState, batch: dict, rng: jax.Array, config) -> dict:
    rng_drop, rng_noise, rng_disc = jax.random.split(rng, 3)
    batch = tasks.restoration_task(generator.drop_captions(batch, rng_drop, config.diffusion.cfg_dropout))
    geometry = objectives.batch_geometry(batch, config)
    noise = jax.random.normal(rng_noise, (batch[tasks.DEGRADED].shape[0], *geometry.token_shape))
    restored = jax.lax.stop_gradient(one_step(state.model, batch, noise, geometry))
    work = dict(batch, noise=noise, restored=restored)
    return updates.adversarial_round(state, lambda d, b: disc_loss(d, b, rng_disc, config),
                                     lambda m, b: generator_loss(m, state.disc, b, config), work,
                                     config.optimizer.grad_accum_steps)


def nfe(config) -> int:
    return 1


STAGE = Stage(init=init, train_step=train_step, sample=sample, load_pretrained=load_pretrained, nfe=nfe,
              validate_config=validate_config)
