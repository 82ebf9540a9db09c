"""ADP: adversarial distillation pretraining of a one-step generator on offline ODE pairs.

(Seedream 4.0 / DMDX's ADP; Hyper-Bagel step 4.) The data are pairs (noise x_1, sample x_0) made
by a teacher or the 6-NFE student (`python -m seedjax.tools.ode_pairs`). Each step draws
t = 1 - u^3 (u ~ U[0, 1]; biased toward noise, the recipe's [1 - (t/T)^3] T), puts x_t on the
straight line between the pair, and trains the generator's velocity v(x_t, t):

- regression: ||v - (x_1 - x_0)||^2, the pair's velocity (the recipe's velocity target);
- adversarial: the generator's x̂0 = x_t - t v against the pair's x_0 ("real"), judged by a
  latent discriminator (teacher-initialised diffusion backbone + multi-level heads, on inputs
  re-noised at a uniform discriminator timestep; weight 0.85) and a pixel discriminator
  (PatchGAN on the decoded images; weight 0.15), hinge losses.

The discriminators have their own optimizer; the generator's loss never updates them.

    python -m seedjax.main --config=experiments/quickstart/distill_adp.py --workdir=runs/qs/adp \
        --config.init_from=runs/qs/dmdo --config.data.path=runs/qs/ode_pairs
"""

from __future__ import annotations

import jax
from flax import nnx

from seedjax.diffusion import flow
from seedjax.diffusion import guidance as guidance_lib
from seedjax.distill import student, teachers
from seedjax.distill.discriminator import Discriminator
from seedjax.distill.losses import discriminator_loss, generator_loss
from seedjax.distill.student import StudentState, nfe, sample
from seedjax.distill.teachers import split_pairs
from seedjax.models.discriminators import PatchDiscriminator
from seedjax.models.geometry import Geometry
from seedjax.train import updates
from seedjax.train.params import load_params, pick_params
from seedjax.train.state import make_optimizer
from seedjax.train.stage import Stage


class LatentPixelDiscriminator(nnx.Module):
    """ADP's hybrid discriminator: diffusion-backbone heads on re-noised inputs + a pixel PatchGAN."""

    def __init__(self, config, rngs: nnx.Rngs):
        self.latent = Discriminator(config, config.disc, rngs, guidance_embed=config.distill.teacher_guidance_embed)
        channels = Geometry.of(config).channels
        self.pixel = PatchDiscriminator(channels, config.pixel_disc, rngs=rngs) if config.adp.pixel_weight > 0 else None

    def __call__(self, x0: jax.Array, batch: dict, rng: jax.Array, config) -> tuple[jax.Array, jax.Array | None]:
        """(latent logits, pixel logits or None) for clean tokens x0 [B, N, C]."""
        geo = Geometry.of(config)
        rng_t, rng_noise = jax.random.split(rng)
        t = jax.random.uniform(rng_t, (x0.shape[0],), minval=config.disc.t_min, maxval=config.disc.t_max)
        x_t = flow.interpolate(x0, jax.random.normal(rng_noise, x0.shape), t)
        latent = self.latent(x_t, t, batch, geo, guidance=config.distill.teacher_guidance)
        if self.pixel is None:
            return latent, None
        # Pixel-space inputs: "decoding" is unpatchifying (latent runs are refused by student.validate_config).
        pixel = self.pixel(geo.images_of(x0))[0]
        return latent, pixel.reshape(pixel.shape[0], -1)


def validate_config(config) -> None:
    student.validate_config(config)
    if config.data.source != "shards" and not config.data.mixture:
        raise ValueError(f"distill_adp trains on ODE pairs: set config.data.source=shards and config.data.path to the "
                         f"output of `python -m seedjax.tools.ode_pairs` (got source {config.data.source!r})")
    if not config.data.path and not config.data.mixture:
        raise ValueError("distill_adp: config.data.path must name an ODE-pair directory (python -m seedjax.tools.ode_pairs)")


class AdpState(StudentState):
    def __init__(self, config, rngs: nnx.Rngs):
        super().__init__(config, rngs)
        self.disc = LatentPixelDiscriminator(config, rngs)
        self.disc_optimizer = make_optimizer(self.disc, config.disc_optimizer, config.total_steps)


def init(config, rngs) -> AdpState:
    return AdpState(config, rngs)


def load_pretrained(state: AdpState, source: dict, config) -> None:
    student.load_pretrained(state, source, config)
    what = f"config.init_from={config.init_from} ({config.distill.teacher_from} -> latent discriminator backbone)"
    load_params(state.disc.latent.backbone, pick_params(source, config.distill.teacher_from, what), what)


# --------------------------------------------------------------------------- losses


def pair_points(batch: dict, rng: jax.Array, config) -> dict:
    """The pair as tokens, the generator's timestep (biased to noise) and x_t on the pair's line."""
    geo = Geometry.of(config)
    x0_img, noise_img = split_pairs(batch, geo.channels)
    x0, noise = geo.tokens(x0_img), geo.tokens(noise_img)
    t = teachers.high_noise_t(rng, x0.shape[0])
    return {"pair_x0": x0, "pair_noise": noise, "t": t, "x_t": flow.interpolate(x0, noise, t)}


def generator_velocity(model, batch: dict, config) -> jax.Array:
    geo = Geometry.of(config)
    return guidance_lib.bind(model, batch, geo, guidance=config.distill.guidance)(batch["x_t"], batch["t"])


def adp_generator_loss(model, disc: LatentPixelDiscriminator, batch: dict, rng: jax.Array, config):
    c = config.adp
    v = generator_velocity(model, batch, config)
    regression = flow.masked_mse(v, flow.velocity_target(batch["pair_x0"], batch["pair_noise"]))
    fake = flow.x0_from_velocity(batch["x_t"], v, batch["t"])
    latent, pixel = disc(fake, batch, rng, config)
    adversarial = c.latent_weight * generator_loss(latent, config.disc.loss)
    if pixel is not None:
        adversarial = adversarial + c.pixel_weight * generator_loss(pixel, config.disc.loss)
    loss = c.regression_weight * regression + c.adversarial_weight * adversarial
    return loss, {"regression": regression, "generator_adv": adversarial}


def adp_disc_loss(disc: LatentPixelDiscriminator, batch: dict, rng: jax.Array, config):
    c, kind = config.adp, config.disc.loss
    real_latent, real_pixel = disc(batch["pair_x0"], batch, rng, config)
    fake_latent, fake_pixel = disc(batch["fake_x0"], batch, rng, config)  # the same re-noising for both
    latent = discriminator_loss(real_latent, fake_latent, kind)
    loss, aux = c.latent_weight * latent, {"disc_latent": latent}
    if real_pixel is not None:
        pixel = discriminator_loss(real_pixel, fake_pixel, kind)
        loss, aux["disc_pixel"] = loss + c.pixel_weight * pixel, pixel
    return loss, {**aux, "disc_loss": loss}


def train_step(state: AdpState, batch: dict, rng: jax.Array, config) -> dict:
    rng_t, rng_disc, rng_gen = jax.random.split(rng, 3)
    accum = config.optimizer.grad_accum_steps
    work = dict(batch, **pair_points(batch, rng_t, config))
    v = jax.lax.stop_gradient(generator_velocity(state.model, work, config))
    work["fake_x0"] = flow.x0_from_velocity(work["x_t"], v, work["t"])
    _, d_aux, d_norm = updates.optimize(state.disc, state.disc_optimizer,
                                        lambda d, b: adp_disc_loss(d, b, rng_disc, config), work, accum)
    loss, aux, grad_norm = updates.optimize(state.model, state.optimizer,
                                            lambda m, b: adp_generator_loss(m, state.disc, b, rng_gen, config),
                                            work, accum)
    updates.update_ema(state)
    return {"loss": loss, **aux, **d_aux, "grad_norm": grad_norm, "disc_grad_norm": d_norm,
            **updates.guard_metrics(state.optimizer, state.disc_optimizer)}


STAGE = Stage(init=init, train_step=train_step, sample=sample, load_pretrained=load_pretrained, nfe=nfe,
              validate_config=validate_config)
