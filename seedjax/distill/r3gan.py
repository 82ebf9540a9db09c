"""The R3GAN objective (Huang et al. 2024) as AAPT uses it: a relativistic pairing loss with R1 and R2.

A discriminator D gives logits for real and generated samples that come in pairs (the same
caption; for video, one logit a frame). With f = softplus:

    L_D = E[f(D(fake) - D(real))] + (gamma / 2) (R1 + R2)
    L_G = E[f(D(real) - D(fake))]

R1 = E ||grad_x D(real)||^2 and R2 = E ||grad_x D(fake)||^2, where for a D with several logits
||grad||^2 is the squared Frobenius norm of the Jacobian (the sum over logits of each gradient's
squared norm). Exact penalties need a gradient of a gradient, which large video models and fused
attention kernels make costly; AAPT approximates them by a finite difference under Gaussian noise:

    R1 ~ E ||D(x + sigma eps) - D(x)||^2 / sigma^2,        eps ~ N(0, I)

whose expectation tends to the exact penalty as sigma -> 0 (first-order Taylor: D(x + sigma eps)
- D(x) = sigma J eps, and E ||J eps||^2 = ||J||_F^2). Dividing by sigma^2 keeps gamma's meaning
the same for both forms (AAPT folds it into the weight). Tests hold both to float64 references.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

Logits = Callable[[jax.Array], jax.Array]  # x [B, ...] -> logits [B, ...]


def relativistic_d_loss(real_logits: jax.Array, fake_logits: jax.Array) -> jax.Array:
    """E[softplus(D(fake) - D(real))] over paired logits (broadcast: e.g. real [B, 1, F] against fake [B, S, F])."""
    return jnp.mean(jax.nn.softplus(fake_logits - real_logits))


def relativistic_g_loss(real_logits: jax.Array, fake_logits: jax.Array) -> jax.Array:
    """E[softplus(D(real) - D(fake))]: the generator's side of the pairing."""
    return jnp.mean(jax.nn.softplus(real_logits - fake_logits))


def _per_example_sum(x: jax.Array) -> jax.Array:
    return jnp.sum(x.reshape(x.shape[0], -1), axis=1)


def exact_penalty(logits: Logits, x: jax.Array) -> jax.Array:
    """E_batch ||J_x D(x)||_F^2 (R1 on real x, R2 on generated x), by reverse-mode per logit.

    For tests and small discriminators: it costs one backward pass per logit of an example."""
    def one(xi):
        jac = jax.jacrev(lambda v: logits(v[None])[0])(xi)  # [logits..., x...]
        return jnp.sum(jnp.square(jac))

    return jnp.mean(jax.vmap(one)(x))


def approximate_penalty(logits: Logits, x: jax.Array, rng: jax.Array, sigma: float,
                        clean_logits: jax.Array | None = None) -> jax.Array:
    """E_batch ||D(x + sigma eps) - D(x)||^2 / sigma^2 (AAPT's approximate R1 / R2): one extra forward.

    `clean_logits` (D(x), when the caller already has them) saves the second forward; gradients flow
    into D's parameters through both terms."""
    if sigma <= 0:
        raise ValueError(f"the approximate R1/R2 needs sigma > 0, got {sigma}")
    clean = logits(x) if clean_logits is None else clean_logits
    noisy = logits(x + sigma * jax.random.normal(rng, x.shape, x.dtype))
    return jnp.mean(_per_example_sum(jnp.square(noisy - clean))) / sigma**2

