"""AAPT stage 3: adversarial post-training with student forcing (R3GAN), 1 NFE a latent frame.

Each step the generator (the 1-NFE student of aapt_consistency) rolls out its own videos of
`config.aapt.segments` times the training clip length with its KV cache, each frame made from
its own previous frame (student forcing, `seedjax.distill.causal`). The frame discriminator
(`seedjax.distill.frame_discriminator`: the block-causal DiT initialised from the adapted
diffusion model, the checkpoint's 'teacher', with one logit a frame) judges every frame: each
segment of the generated video as a clip, paired with the real clip of the same caption.

    discriminator  softplus(D(fake) - D(real)) + (gamma / 2) (R1 + R2)     (approximate R1/R2,
    generator      softplus(D(real) - D(fake))                              seedjax.distill.r3gan)

Segments past the first are how long videos are trained: the generator must keep frames 2x, 3x
... the data's length looking like real clips, which teacher forcing never asks of it (AAPT's
remedy for drift). One discriminator update, then one generator update, per step.

    python -m seedjax.main --config=experiments/seedance/aapt_adversarial.py --workdir=runs/seedance/aapt_adversarial \\
        --config.init_from=runs/seedance/aapt_consistency
"""

from __future__ import annotations

import jax
from flax import nnx

from seedjax.distill import causal, r3gan, student
from seedjax.distill.frame_discriminator import FrameDiscriminator
from seedjax.models import generator
from seedjax.train import updates
from seedjax.train.params import load_params, pick_params
from seedjax.train.stage import Stage
from seedjax.train.state import EMA, make_optimizer


def validate_config(config) -> None:
    causal.validate_config(config)
    a = config.aapt
    if a.segments < 1 or a.gamma < 0 or a.sigma <= 0:
        raise ValueError(f"config.aapt: segments={a.segments} (>= 1), gamma={a.gamma} (>= 0), sigma={a.sigma} (> 0)")


class AdversarialState(nnx.Module):
    """The 1-NFE generator (its optimizer and EMA) and the frame discriminator (its optimizer)."""

    def __init__(self, config, rngs: nnx.Rngs):
        self.model = generator.build(config, rngs, guidance_embed=False)
        self.optimizer = make_optimizer(self.model, config.optimizer, config.total_steps)
        self.ema = EMA(self.model, config.ema_decay) if config.ema_decay > 0 else None
        self.disc = FrameDiscriminator(config, rngs, config.aapt.head_hidden)
        self.disc_optimizer = make_optimizer(self.disc, config.disc_optimizer, config.total_steps)


def init(config, rngs) -> AdversarialState:
    return AdversarialState(config, rngs)


def load_pretrained(state: AdversarialState, source: dict, config) -> None:
    """The generator from the consistency stage's student; the discriminator's backbone from the
    diffusion model (`distill.teacher_from`: the adapted model that stage distilled); a new head."""
    what, d = f"config.init_from={config.init_from}", config.distill
    load_params(state.model, pick_params(source, d.student_from, what), f"{what} ({d.student_from} -> generator)")
    student.start_ema(state)
    load_params(state.disc.backbone, pick_params(source, d.teacher_from, what),
                f"{what} ({d.teacher_from} -> discriminator backbone)")


# --------------------------------------------------------------------------- losses


def _paired(disc, batch: dict, real, fake, geometry, segments: int):
    """D's logits on the real clips [B, 1, F] and on each generated segment [B, S, F]."""
    n, frames = real.shape[0], geometry.grid[0]
    real_logits = disc(real, causal.captions(batch), geometry)
    fake_logits = disc(fake.reshape(n * segments, *real.shape[1:]), causal.captions(batch, segments), geometry)
    return real_logits[:, None], fake_logits.reshape(n, segments, frames)


def disc_loss(disc: FrameDiscriminator, batch: dict, rng: jax.Array, config):
    a = config.aapt
    real, geometry = causal.clean_clip(batch, config)
    real_logits, fake_logits = _paired(disc, batch, real, batch["rollout"], geometry, a.segments)
    adv = r3gan.relativistic_d_loss(real_logits, fake_logits)
    aux = {"disc_loss": adv, "disc_real": real_logits.mean(), "disc_fake": fake_logits.mean()}
    if a.gamma == 0:
        return adv, aux
    rng_r1, rng_r2 = jax.random.split(rng)
    n = real.shape[0]
    fake = batch["rollout"].reshape(n * a.segments, *real.shape[1:])
    r1 = r3gan.approximate_penalty(lambda x: disc(x, causal.captions(batch), geometry), real, rng_r1, a.sigma,
                                   real_logits[:, 0])
    r2 = r3gan.approximate_penalty(lambda x: disc(x, causal.captions(batch, a.segments), geometry), fake, rng_r2,
                                   a.sigma, fake_logits.reshape(n * a.segments, -1))
    return adv + 0.5 * a.gamma * (r1 + r2), aux | {"r1": r1, "r2": r2}


def generator_loss(model, disc: FrameDiscriminator, batch: dict, config):
    segments = config.aapt.segments
    real, geometry = causal.clean_clip(batch, config)
    fake = causal.forced_frames(model, batch, batch["noise"], batch["rollout"], causal.long_geometry(geometry, segments))
    real_logits, fake_logits = _paired(disc, batch, jax.lax.stop_gradient(real), fake, geometry, segments)
    loss = r3gan.relativistic_g_loss(real_logits, fake_logits)
    return loss, {"generator_adv": loss}


# --------------------------------------------------------------------------- step


def train_step(state: AdversarialState, batch: dict, rng: jax.Array, config) -> dict:
    rng_rollout, rng_disc = jax.random.split(rng)
    _, geometry = causal.clean_clip(batch, config)
    long = causal.long_geometry(geometry, config.aapt.segments)
    work = dict(batch, **causal.student_forcing(state.model, batch, rng_rollout, long))
    return updates.adversarial_round(state, lambda d, b: disc_loss(d, b, rng_disc, config),
                                     lambda m, b: generator_loss(m, state.disc, b, config), work,
                                     config.optimizer.grad_accum_steps)


STAGE = Stage(init=init, train_step=train_step, sample=student.sample, load_pretrained=load_pretrained,
              nfe=student.nfe, validate_config=validate_config)
