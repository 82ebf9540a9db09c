"""The generator's train state and its flow-matching step: pretraining and SFT are both this.

`GeneratorState` holds the generator (text encoder + MMDiT), an optional REPA projector
(trained with it), their optimizer and the generator's EMA. `flow_matching_step` is one
update on `seedjax.diffusion.objectives.flow_matching_loss`; `sample` and `load_pretrained`
are the hooks both stages share. The checkpoint layout (`model`, `repa`, `optimizer`, `ema`)
is what every later stage's `init_from` reads.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from seedjax.diffusion.objectives import flow_matching_loss
from seedjax.models import video_dit
from seedjax.models.generator import DiffusionModel
from seedjax.train.repa import RepaHead
from seedjax.train.generation import generate_pixels
from seedjax.train.params import load_params, pick_params
from seedjax.train.state import EMA, make_optimizer, value_and_grad
from seedjax.train.updates import ema_model, guard_metrics, update_ema


class GeneratorState(nnx.Module):
    def __init__(self, config, rngs: nnx.Rngs):
        self.model = DiffusionModel(config, rngs)
        self.repa = RepaHead(config, rngs=rngs) if config.repa.weight > 0 else nnx.data(None)
        trainable = nnx.List([self.model, self.repa]) if self.repa is not None else self.model
        self.optimizer = make_optimizer(trainable, config.optimizer, config.total_steps)
        self.ema = EMA(self.model, config.ema_decay) if config.ema_decay > 0 else None


def init(config, rngs: nnx.Rngs) -> GeneratorState:
    return GeneratorState(config, rngs)


def flow_matching_step(state: GeneratorState, batch: dict, rng: jax.Array, config) -> dict:
    """One update of the generator (and REPA projector) on the flow-matching loss; EMA after."""
    if state.repa is None:
        loss_fn = lambda model, b: flow_matching_loss(model, b, rng, config)
        trainable = state.model
    else:
        loss_fn = lambda mods, b: flow_matching_loss(mods[0], b, rng, config, mods[1])
        trainable = nnx.List([state.model, state.repa])
    (loss, aux), grads = value_and_grad(loss_fn, trainable, batch, config.optimizer.grad_accum_steps)
    state.optimizer.update(trainable, grads)
    update_ema(state)
    return {"loss": loss, **aux, "grad_norm": optax.tree.norm(grads), **guard_metrics(state.optimizer)}


def sample(state: GeneratorState, config, rng: jax.Array, batch: dict) -> jax.Array:
    """Images [N, 1, H, W, C] in [-1, 1] (latent runs: decoded by the VAE) for the captions in `batch`."""
    return generate_pixels(ema_model(state, config.sampling.use_ema), config, rng, batch)


def load_generator(state, source: dict, config) -> None:
    """`config.init_from`: the source's EMA when `config.init_from_ema` (and it kept one), else its
    model; every parameter must be there with its shape (a video DiT saved without model.recycle
    loads into one with it: `video_dit.widen_for_recycling`). The EMA (if any) starts at the
    loaded weights."""
    what = f"config.init_from={config.init_from}"
    entry = "ema" if config.get("init_from_ema", False) and source.get("ema") else "model"
    params = pick_params(source, entry, what)
    if state.model.is_video and "dit" in params:
        params = {**params, "dit": video_dit.widen_for_recycling(params["dit"], state.model.dit.cfg)}
    load_params(state.model, params, f"{what} ({entry})")
    if state.ema is not None:
        state.ema.load(jax.tree.map(jnp.copy, nnx.to_pure_dict(nnx.state(state.model, nnx.Param))))
