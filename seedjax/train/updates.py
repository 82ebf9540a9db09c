"""One optimizer update, the non-finite guard's metrics and the EMA: what every train_step does.

A stage's `train_step` is a pure function the loop jits; these are the pieces they share, so
a stage with several networks (generator, fake score, discriminator) updates each the same
way, each with its own optimizer.
"""

from __future__ import annotations

import jax.numpy as jnp
import optax
from flax import nnx

from seedjax.train.state import nonfinite_streak, total_nonfinite, value_and_grad


def optimize(module: nnx.Module, optimizer: nnx.Optimizer, loss_fn, batch: dict, accum_steps: int = 1):
    """One update of `module` (its nnx.Param only) on `loss_fn(module, batch) -> (loss, aux)`.

    Returns (loss, aux, grad_norm). Everything else `loss_fn` touches (teachers, other
    networks) is read, never differentiated or updated.
    """
    (loss, aux), grads = value_and_grad(loss_fn, module, batch, accum_steps)
    optimizer.update(module, grads)
    return loss, aux, optax.tree.norm(grads)


def guard_metrics(*optimizers: nnx.Optimizer) -> dict:
    """The loop's non-finite guard over one or several optimizers: the longest current streak."""
    return {"nonfinite_streak": jnp.max(jnp.stack([nonfinite_streak(o) for o in optimizers])),
            "nonfinite_total": sum(total_nonfinite(o) for o in optimizers)}


def update_ema(state: nnx.Module) -> None:
    """Move `state.ema` (if the state keeps one) toward `state.model`."""
    if state.ema is not None:
        state.ema.update(state.model)


def ema_model(state: nnx.Module, use_ema: bool = True) -> nnx.Module:
    """The model to sample from: a copy of `state.model` holding the EMA parameters when kept and wanted."""
    if state.ema is None or not use_ema:
        return state.model
    model = nnx.clone(state.model)
    state.ema.copy_into(model)
    return model


def adversarial_round(state: nnx.Module, disc_loss_fn, generator_loss_fn, batch: dict, accum_steps: int = 1) -> dict:
    """One discriminator update (`state.disc`, `state.disc_optimizer` on `disc_loss_fn(disc, batch)`),
    then one generator update (`state.model`, `state.optimizer` on `generator_loss_fn(model, batch)`),
    then the EMA: the round of the adversarial stages (AAPT's, SeedVR2's). Returns their metrics."""
    _, d_aux, d_norm = optimize(state.disc, state.disc_optimizer, disc_loss_fn, batch, accum_steps)
    loss, aux, grad_norm = optimize(state.model, state.optimizer, generator_loss_fn, batch, accum_steps)
    update_ema(state)
    return {"loss": loss, **aux, **d_aux, "grad_norm": grad_norm, "disc_grad_norm": d_norm,
            **guard_metrics(state.optimizer, state.disc_optimizer)}
