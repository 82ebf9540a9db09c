"""The losses of adversarial and distribution-matching distillation.

Every function takes arrays and returns a scalar; which arrays carry gradients is decided by
the caller (the stage), which is where the sign conventions below are tested.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

GAN_LOSSES = ("hinge", "logistic")


def _check(kind: str) -> None:
    if kind not in GAN_LOSSES:
        raise ValueError(f"GAN loss {kind!r} is not one of {GAN_LOSSES}")


def discriminator_loss(real_logits: jax.Array, fake_logits: jax.Array, kind: str = "hinge") -> jax.Array:
    """hinge: E[max(0, 1 - D(real))] + E[max(0, 1 + D(fake))]; logistic: softplus(-D(real)) + softplus(D(fake))."""
    _check(kind)
    if kind == "hinge":
        return jnp.mean(jax.nn.relu(1.0 - real_logits)) + jnp.mean(jax.nn.relu(1.0 + fake_logits))
    return jnp.mean(jax.nn.softplus(-real_logits)) + jnp.mean(jax.nn.softplus(fake_logits))


def generator_loss(fake_logits: jax.Array, kind: str = "hinge") -> jax.Array:
    """hinge: -E[D(fake)]; logistic (non-saturating): E[softplus(-D(fake))]."""
    _check(kind)
    if kind == "hinge":
        return -jnp.mean(fake_logits)
    return jnp.mean(jax.nn.softplus(-fake_logits))


def dmd_loss(x0: jax.Array, x0_real: jax.Array, x0_fake: jax.Array) -> jax.Array:
    """Distribution matching (DMD / DMD2) on the generator's sample `x0` [B, ...].

    `x0_real` and `x0_fake` are the clean-image predictions of the real (teacher) and fake
    score at a re-noised copy of `x0`. The gradient this loss sends into `x0` is
    (x0_fake - x0_real) / mean|x0 - x0_real| per example (divided by the element count of
    the mean): gradient descent moves the sample toward what the real score predicts and
    away from what the fake score (the generator's current distribution) predicts.
    """
    x0_real, x0_fake = jax.lax.stop_gradient(x0_real), jax.lax.stop_gradient(x0_fake)
    axes = tuple(range(1, x0.ndim))
    normalizer = jnp.maximum(jnp.mean(jnp.abs(jax.lax.stop_gradient(x0) - x0_real), axis=axes, keepdims=True), 1e-6)
    grad = (x0_fake - x0_real) / normalizer
    target = jax.lax.stop_gradient(x0 - grad)
    return 0.5 * jnp.mean(jnp.square(x0 - target))
