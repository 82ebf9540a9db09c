"""VAE training stage: L1 + KL + perceptual + hinge GAN with an adaptive weight, and EMA.

    python -m seedjax.main --config=experiments/quickstart/vae.py --workdir=runs/qs/vae

One step (the LDM / taming-transformers recipe, per pixel element):

    loss_G = |x - x'| + w_p * P(x, x') + w_kl * KL / (pixels) + lambda * f * (-D(x'))
    loss_D = f * (relu(1 - D(x)) + relu(1 + D(sg(x'))))

where f = 0 before `loss.adversarial_start` steps and 1 after, and
lambda = w_adv * ||dL_rec/dW|| / (||dL_G/dW|| + 1e-4) (clipped to [0, 1e4]) with W the
decoder's output conv: the GAN term is scaled so its gradient on the last layer is as large
as the reconstruction's. Both norms come from one forward pass: the VAE is differentiated
once with `jax.vjp`, and the two losses only to the reconstruction (see `generator_grads`).

The discriminator is a 2D PatchGAN for images and a hybrid 2D/3D one for videos
(`config.vae.kind`). Batches carry `image` [B, H, W, C] or, for videos, `video`
[B, T, H, W, C], in [-1, 1].

Other stages use a trained VAE through `seedjax.train.params.load_codec(workdir)` (latent caching
in `data_pipelines.cli.prepare --vae=WORKDIR`, decoding samples of latent-space models).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from seedjax.distill.losses import discriminator_loss, generator_loss
from seedjax.interop import autoencoder_kl
from seedjax.models import discriminators, perceptual
from seedjax.models.codec import build_vae, vae_architecture
from seedjax.models.vae import ImageVAE, kl_divergence, sample_posterior
from seedjax.models.video_vae import VideoVAE
from seedjax.train.state import EMA, make_optimizer, nonfinite_streak, total_nonfinite
from seedjax.train.stage import Stage


# --------------------------------------------------------------------------- config
# The `config.vae` group and its defaults: seedjax.schema.stages.vae_config.


def data_key(vae_cfg) -> str:
    return "image" if vae_cfg.kind == "image" else "video"


# --------------------------------------------------------------------------- state


class VAEState(nnx.Module):
    def __init__(self, config, rngs: nnx.Rngs):
        v = config.vae
        if config.optimizer.grad_accum_steps != 1:
            raise ValueError("config.optimizer.grad_accum_steps: the VAE stage does not accumulate gradients; use 1")
        self.vae = build_vae(v, rngs)
        if v.diffusers_weights:
            if v.kind != "image":
                raise ValueError("config.vae.diffusers_weights: only an image VAE can start from AutoencoderKL")
            autoencoder_kl.import_state_dict(self.vae, autoencoder_kl.read_weights(v.diffusers_weights))
        channels = self.vae.config.in_channels
        self.discriminator = discriminators.make_discriminator(v.kind, channels, v.discriminator, rngs=rngs)
        self.perceptual = perceptual.make_perceptual(v.perceptual) if v.loss.perceptual_weight > 0 else None
        self.optimizer = make_optimizer(self.vae, config.optimizer, config.total_steps)
        self.disc_optimizer = make_optimizer(self.discriminator, v.disc_optimizer, config.total_steps)
        self.ema = EMA(self.vae, config.ema_decay) if config.ema_decay > 0 else None


def init(config, rngs: nnx.Rngs) -> VAEState:
    return VAEState(config, rngs)


# --------------------------------------------------------------------------- losses


def _as_frames(x: jax.Array) -> jax.Array:
    return x.reshape(-1, *x.shape[-3:]) if x.ndim == 5 else x


def reconstruction_loss(state: VAEState, x, recon, loss_cfg):
    """(w_l1 * mean |x - x'| + w_p * mean P(x, x'), (l1, perceptual)) — the per-element L1
    plus the per-image perceptual distance (frames of a video count as images)."""
    l1 = jnp.mean(jnp.abs(x - recon))
    p = jnp.zeros(())
    if state.perceptual is not None:
        p = jnp.mean(state.perceptual(_as_frames(x), _as_frames(recon)))
    return loss_cfg.l1_weight * l1 + loss_cfg.perceptual_weight * p, (l1, p)


def kl_loss(mean, logvar, pixels_per_example: int):
    """KL summed over latent elements, per pixel element, averaged over the batch."""
    return jnp.mean(kl_divergence(mean, logvar)) / pixels_per_example


def gan_generator_loss(disc, recon, kind: str):
    return sum(generator_loss(logits, kind) for logits in disc(recon))


def gan_discriminator_loss(disc, real, fake, kind: str):
    real_logits, fake_logits = disc(real), disc(fake)
    loss = sum(discriminator_loss(r, f, kind) for r, f in zip(real_logits, fake_logits))
    return loss, (jnp.mean(real_logits[0]), jnp.mean(fake_logits[0]))


def _kernel_norm(grads: nnx.State) -> jax.Array:
    leaves = [v for path, v in nnx.to_flat_state(grads) if path[-1] == "kernel"]
    return jnp.sqrt(sum(jnp.sum(jnp.square(v[...] if isinstance(v, nnx.Variable) else v)) for v in leaves))


def generator_grads(state: VAEState, x: jax.Array, rng: jax.Array, adversarial_on: jax.Array, loss_cfg):
    """Gradients of loss_G for the VAE's parameters, and the loss terms.

    The VAE runs once under `jax.vjp`. The loss terms are differentiated only as far as the
    VAE's outputs (reconstruction, mean, logvar); the adaptive weight needs the gradient of
    two of them on the last conv, which is a small vjp through that conv alone. The summed
    output cotangent is then pulled back through the VAE once.
    """
    vae = state.vae
    graphdef, params, rest = nnx.split(vae, nnx.Param, ...)

    def forward(params):
        model = nnx.merge(graphdef, params, rest)
        mean, logvar = model.encode(x)
        z = sample_posterior(mean, logvar, rng) if loss_cfg.sample_posterior else mean
        recon, last_input = model.decode(z, return_last_input=True)
        return recon.astype(jnp.float32), mean, logvar, last_input

    (recon, mean, logvar, last_input), pullback = jax.vjp(forward, params)

    (rec, (l1, p)), d_recon_rec = jax.value_and_grad(
        lambda r: reconstruction_loss(state, x, r, loss_cfg), has_aux=True)(recon)
    kl, (d_mean, d_logvar) = jax.value_and_grad(
        lambda m, lv: kl_loss(m, lv, int(np.prod(x.shape[1:]))), argnums=(0, 1))(mean, logvar)
    d_mean, d_logvar = loss_cfg.kl_weight * d_mean, loss_cfg.kl_weight * d_logvar
    g_loss, d_recon_adv = jax.value_and_grad(
        lambda r: gan_generator_loss(state.discriminator, r, loss_cfg.gan_loss))(recon)

    if loss_cfg.adaptive_weight:
        last = vae.decoder.conv_out
        conv_graph, conv_params = nnx.split(last, nnx.Param)
        _, conv_pullback = jax.vjp(lambda p: nnx.merge(conv_graph, p)(last_input).astype(jnp.float32), conv_params)
        rec_norm = _kernel_norm(conv_pullback(d_recon_rec)[0])
        adv_norm = _kernel_norm(conv_pullback(d_recon_adv)[0])
        weight = jnp.clip(rec_norm / (adv_norm + 1e-4), 0.0, 1e4) * loss_cfg.adversarial_weight
    else:
        weight = jnp.asarray(loss_cfg.adversarial_weight, jnp.float32)
    weight = jax.lax.stop_gradient(weight) * adversarial_on

    cotangent = (d_recon_rec + weight * d_recon_adv, d_mean, d_logvar, jnp.zeros_like(last_input))
    (grads,) = pullback(cotangent)
    terms = dict(l1=l1, perceptual=p, kl=kl, g_loss=g_loss, adv_weight=weight)
    return grads, rec + loss_cfg.kl_weight * kl + weight * g_loss, recon, terms


def train_step(state: VAEState, batch: dict, rng: jax.Array, config) -> dict:
    v = config.vae
    key = data_key(v)
    if key not in batch:
        raise KeyError(f"VAE stage ({v.kind}) needs batch[{key!r}]; the batch has {sorted(batch)}")
    x = batch[key].astype(jnp.float32)
    adversarial_on = (state.optimizer.step[...] >= v.loss.adversarial_start).astype(jnp.float32)

    grads, loss, recon, terms = generator_grads(state, x, rng, adversarial_on, v.loss)
    state.optimizer.update(state.vae, grads)
    if state.ema is not None:
        state.ema.update(state.vae)

    def d_loss_fn(disc):
        loss, logits = gan_discriminator_loss(disc, x, jax.lax.stop_gradient(recon), v.loss.gan_loss)
        return adversarial_on * loss, logits

    (d_loss, (real_logit, fake_logit)), d_grads = nnx.value_and_grad(d_loss_fn, has_aux=True)(state.discriminator)
    # Before adversarial_start the discriminator's gradients are zero; its (Adam) update is then zero too.
    state.disc_optimizer.update(state.discriminator, d_grads)

    return {
        "loss": loss,
        **terms,
        "d_loss": d_loss,
        "logits_real": real_logit,
        "logits_fake": fake_logit,
        "psnr": psnr(x, recon),
        "grad_norm": optax.global_norm(grads),
        "nonfinite_streak": nonfinite_streak(state.optimizer),
        "nonfinite_total": total_nonfinite(state.optimizer),
    }


def psnr(x: jax.Array, y: jax.Array) -> jax.Array:
    """Mean PSNR (dB) over examples of images in [-1, 1] (peak-to-peak 2)."""
    mse = jnp.mean(jnp.square(jnp.clip(x, -1, 1) - jnp.clip(y, -1, 1)), axis=tuple(range(1, x.ndim)))
    return jnp.mean(10.0 * jnp.log10(4.0 / jnp.maximum(mse, 1e-10)))


# --------------------------------------------------------------------------- sampling / eval


def eval_vae(state: VAEState, config) -> ImageVAE | VideoVAE:
    """The VAE to sample and evaluate (the `reconstruction` evaluator, seedjax/eval/reconstruction.py):
    a copy holding the EMA parameters when there are any."""
    if state.ema is None:
        return state.vae
    model = nnx.clone(state.vae)
    state.ema.copy_into(model)
    return model


def sample(state: VAEState, config, rng: jax.Array, batch: dict) -> jax.Array:
    """Originals, then reconstructions (posterior means, EMA weights): [2N, F, H, W, C] (images: F = 1)."""
    vae = eval_vae(state, config)
    x = batch[data_key(config.vae)]
    recon = vae.decode(vae.encode(x)[0])
    both = jnp.concatenate([x, recon])
    return jnp.clip(both[:, None] if both.ndim == 4 else both, -1.0, 1.0)


def flops_per_example(config) -> float:
    """Training FLOPs per example: 3x the forward FLOPs (XLA's count) of the VAE, the
    perceptual net on the (input, reconstruction) pair and the discriminator on both."""
    v = config.vae
    cfg = vae_architecture(v)
    size = config.data.image_size
    shape = (1, size, size, cfg.in_channels) if v.kind == "image" else (1, 1 + cfg.temporal_factor * 2, size, size, cfg.in_channels)
    graphdefs = []

    def make_state():  # jax.eval_shape, not nnx.eval_shape: the loop calls this inside its mesh
        graphdef, st = nnx.split(init(config, nnx.Rngs(0)))
        graphdefs.append(graphdef)
        return st

    st = jax.eval_shape(make_state)
    graphdef = graphdefs[0]

    def forward(st, x):
        s = nnx.merge(graphdef, st)
        recon, _, _ = s.vae(x)
        out = sum(jnp.sum(l) for l in s.discriminator(jnp.concatenate([x, recon])))
        if s.perceptual is not None:
            out = out + jnp.sum(s.perceptual(_as_frames(x), _as_frames(recon)))
        return out

    try:
        cost = jax.jit(forward).lower(st, jax.ShapeDtypeStruct(shape, jnp.float32)).cost_analysis()
        return 3.0 * float(cost.get("flops", 0.0))
    except Exception:  # cost analysis is best-effort on some backends
        return 0.0


def load_pretrained(state: VAEState, source: dict, config) -> None:
    """`config.init_from` another VAE run: its EMA weights if it kept them, else its VAE."""
    params = source.get("ema", {}).get("params") if source.get("ema") else None
    params = params if params is not None else source.get("vae")
    if params is None:
        raise ValueError(f"config.init_from={config.init_from}: no 'vae' parameters in that checkpoint ({sorted(source)})")
    nnx.update(state.vae, params)
    if state.ema is not None:
        nnx.update(state.ema.params, params)


STAGE = Stage(init=init, train_step=train_step, sample=sample, flops_per_example=flops_per_example,
              load_pretrained=load_pretrained)
