"""What every stage's train state is made of: optimizers, LR schedules, EMA, gradients.

Stages build their state from these pieces so that clipping, the non-finite guard,
gradient accumulation and EMA behave the same in pretraining, distillation and RLHF.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from seedjax.models.block_layout import match_block_layout

# Never give up skipping non-finite updates inside the optimizer; the loop aborts the run
# after `config.optimizer.max_nonfinite_steps` consecutive skips instead.
_NEVER_APPLY_NONFINITE = 2**30


def lr_schedule(opt_cfg, total_steps: int) -> optax.Schedule:
    decay_steps = max(int(total_steps) - int(opt_cfg.warmup_steps), 1)
    end = opt_cfg.lr * opt_cfg.end_lr_factor
    if opt_cfg.schedule == "constant":
        main = optax.constant_schedule(opt_cfg.lr)
    elif opt_cfg.schedule == "cosine":
        main = optax.cosine_decay_schedule(opt_cfg.lr, decay_steps, alpha=opt_cfg.end_lr_factor)
    elif opt_cfg.schedule == "linear":
        main = optax.linear_schedule(opt_cfg.lr, end, decay_steps)
    else:
        raise ValueError(f"config.optimizer.schedule: unknown schedule {opt_cfg.schedule!r}")
    if opt_cfg.warmup_steps <= 0:
        return main
    warmup = optax.linear_schedule(0.0, opt_cfg.lr, int(opt_cfg.warmup_steps))
    return optax.join_schedules([warmup, main], [int(opt_cfg.warmup_steps)])


def make_tx(opt_cfg, total_steps: int) -> optax.GradientTransformation:
    schedule = lr_schedule(opt_cfg, total_steps)
    if opt_cfg.name == "adamw":
        base = optax.adamw(schedule, b1=opt_cfg.b1, b2=opt_cfg.b2, eps=opt_cfg.eps, weight_decay=opt_cfg.weight_decay)
    elif opt_cfg.name == "adam":
        base = optax.adam(schedule, b1=opt_cfg.b1, b2=opt_cfg.b2, eps=opt_cfg.eps)
    elif opt_cfg.name == "sgd":
        base = optax.sgd(schedule, momentum=opt_cfg.b1 or None)
    else:
        raise ValueError(f"config.optimizer.name: unknown optimizer {opt_cfg.name!r}")
    parts = [optax.clip_by_global_norm(opt_cfg.grad_clip)] if opt_cfg.grad_clip > 0 else []
    return optax.apply_if_finite(optax.chain(*parts, base), _NEVER_APPLY_NONFINITE)


def make_optimizer(model: nnx.Module, opt_cfg, total_steps: int, wrt=nnx.Param) -> nnx.Optimizer:
    return nnx.Optimizer(model, make_tx(opt_cfg, total_steps), wrt=wrt)


def nonfinite_streak(optimizer: nnx.Optimizer) -> jax.Array:
    """Consecutive skipped (non-finite) updates, from the optimizer's guard state."""
    return optimizer.opt_state.notfinite_count[...]


def total_nonfinite(optimizer: nnx.Optimizer) -> jax.Array:
    return optimizer.opt_state.total_notfinite[...]


# --------------------------------------------------------------------------- EMA


class EmaParam(nnx.Variable):
    """An exponential moving average of a parameter (not trained, not in optimizers)."""


class EMA(nnx.Module):
    """EMA of a model's parameters, stored as a graph-less copy of the nnx.Param tree."""

    def __init__(self, model: nnx.Module, decay: float):
        self.decay = decay
        params = nnx.state(model, nnx.Param)
        self.params = nnx.data(jax.tree.map(
            lambda p: EmaParam(p[...], **p.get_metadata()),
            params,
            is_leaf=lambda x: isinstance(x, nnx.Variable),
        ))

    def update(self, model: nnx.Module) -> None:
        new = nnx.state(model, nnx.Param)

        def one(ema_var, p):
            # set_value, not `ema_var[...] = ...`: see layers.next_key (a traced indexed set walks
            # the whole jaxpr; over every parameter of a train step, seconds of tracing).
            ema_var.set_value(self.decay * ema_var[...] + (1.0 - self.decay) * p[...])

        jax.tree.map(one, self.params, new, is_leaf=lambda x: isinstance(x, nnx.Variable))

    def load(self, values: dict) -> None:
        """Set the averages from a pure dict of arrays shaped like the model's parameters
        (MMDiT block stacks in either layout: converted to this EMA's, unrolled or scan_layers)."""
        flat = dict(nnx.traversals.flatten_mapping(match_block_layout(values, self.params)))
        for path, var in nnx.to_flat_state(self.params):
            var[...] = flat[path]

    def copy_into(self, model: nnx.Module) -> None:
        """Write the averaged values into `model`'s parameters (e.g. a sampling copy)."""
        values = jax.tree.map(lambda v: v[...], self.params, is_leaf=lambda x: isinstance(x, nnx.Variable))
        nnx.update(model, values)


# --------------------------------------------------------------------------- gradients


def value_and_grad(loss_fn, model: nnx.Module, batch: dict, accum_steps: int = 1, wrt=nnx.Param):
    """(loss, aux), grads of `loss_fn(model, batch) -> (loss, aux)`, over `accum_steps` micro-batches.

    Micro-batches are consecutive slices of the batch's leading axis, run in a `lax.scan`
    so only one micro-batch's activations are alive at a time. The result equals the
    full-batch gradient when the loss is a mean over examples (tested). `loss_fn` must not
    mutate the model (it runs on a functional copy).
    """
    graphdef, params, rest = nnx.split(model, wrt, ...)

    def pure_loss(params, rest, mb):
        return loss_fn(nnx.merge(graphdef, params, rest), mb)

    grad_fn = jax.value_and_grad(pure_loss, has_aux=True)
    if accum_steps <= 1:
        return grad_fn(params, rest, batch)

    def split(x):
        if x.shape[0] % accum_steps:
            raise ValueError(f"batch axis {x.shape[0]} is not divisible by grad_accum_steps={accum_steps}")
        return x.reshape(accum_steps, x.shape[0] // accum_steps, *x.shape[1:])

    micro = jax.tree.map(split, batch)
    add = lambda a, b: jax.tree.map(jnp.add, a, b)

    def body(carry, mb):
        (loss, aux), grads = grad_fn(params, rest, mb)
        return add(carry, ((loss, aux), grads)), None

    first = jax.tree.map(lambda x: x[0], micro)
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(grad_fn, params, rest, first))
    total, _ = jax.lax.scan(body, zeros, micro)
    return jax.tree.map(lambda x: x / accum_steps, total)
