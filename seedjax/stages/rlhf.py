"""RLHF by direct reward maximisation (ReFL), regularised by flow matching on real data.

Seedream 3.0 and Seedance 1.0 maximise the reward of frozen VLM reward models directly;
Hyper-Bagel's ReFL uses the hinge ReLU(alpha - r). One step here:

  1. prompts = the first `rlhf.num_prompts` captions of the loop's batch; noise ~ N(0, I);
  2. a stop step s is drawn among the sampler steps whose sigma lies in `rlhf.stop_window`;
  3. Euler (with CFG) from noise to step s - K without gradients, then K steps with gradients,
     each step rematerialised in the backward pass (memory: K latents, not K activations);
  4. x0 is predicted at step s (x0 = x_s - sigma_s v), unpatchified to pixels;
  5. r = sum_m w_m f(score_m(x0, prompt)) over frozen reward models / heads, f = sigmoid ('prob',
     Seedream's normalised Yes probability) or identity ('logit');
  6. loss = mean(-r) or mean(ReLU(alpha - r)), plus fm_weight x pretraining's flow-matching loss
     on the batch's real images (the regulariser against reward hacking).

Reward models are read from their workdirs (`rlhf.reward_models = 'DIR[#HEAD]:WEIGHT,...'`,
no head = every head of that model), loaded in `load_pretrained` next to the generator
(`config.init_from`), kept in the train state (so a resumed run is exact) and never updated:
the optimizer and the gradients cover the generator only. The `rlhf_reward` evaluator
(seedjax/eval/rlhf_reward.py) scores held-out samples with the same composite reward.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from seedjax.diffusion import guidance as guidance_lib
from seedjax.diffusion.objectives import flow_matching_loss
from seedjax.diffusion.sampling import Sampler, refl_x0
from seedjax.models import codec
from seedjax.models.frozen import freeze
from seedjax.models.generator import DiffusionModel
from seedjax.models.geometry import Geometry
from seedjax.models.reward import RewardModel
from seedjax.train.flow_matching import load_generator, sample
from seedjax.train.params import load_reward_params, reward_model_config_of
from seedjax.train.state import EMA, make_optimizer
from seedjax.train.stage import Stage
from seedjax.train.updates import guard_metrics, update_ema

LOSSES = ("reward", "relu")
TRANSFORMS = ("prob", "logit")


# --------------------------------------------------------------------------- reward models


@dataclasses.dataclass(frozen=True)
class RewardTerm:
    """One summand of the composite reward: `weight` x f(head `head` of reward model `model`)."""

    name: str
    model: int  # index into the state's reward_models (one per distinct workdir)
    head: int
    weight: float


def parse_reward_spec(spec: str) -> list[tuple[str, str, float]]:
    """'DIR[#HEAD]:WEIGHT,...' -> [(workdir, head or '', weight)]; a missing weight is 1."""
    out = []
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        path, sep, weight = item.rpartition(":")
        if not sep:
            path, weight = item, "1"
        try:
            value = float(weight)
        except ValueError:
            raise ValueError(f"rlhf.reward_models: weight {weight!r} in {item!r} is not a number "
                             f"(format 'WORKDIR[#HEAD]:WEIGHT,...')") from None
        workdir, _, head = path.partition("#")
        out.append((workdir, head, value))
    if not out:
        raise ValueError("rlhf.reward_models is empty: give 'WORKDIR[#HEAD]:WEIGHT,...' of reward-stage workdirs")
    return out


def reward_setup(config) -> tuple[list[str], list[ml_collections.ConfigDict], list[RewardTerm]]:
    """(workdirs, their reward-model configs, the composite's terms), with every input checked."""
    workdirs, configs, terms = [], [], []
    for workdir, head, weight in parse_reward_spec(config.rlhf.reward_models):
        if workdir not in workdirs:
            workdirs.append(workdir)
            configs.append(reward_model_config_of(workdir))
        index = workdirs.index(workdir)
        cfg = configs[index]
        heads = [head] if head else list(cfg.heads)
        for h in heads:
            if h not in cfg.heads:
                raise ValueError(f"rlhf.reward_models: {workdir} has no head {h!r} (its heads: {', '.join(cfg.heads)})")
            terms.append(RewardTerm(h, index, tuple(cfg.heads).index(h), weight))
    if len(workdirs) > 1:  # name the terms apart: <head>_<model index>
        terms = [dataclasses.replace(t, name=f"{t.name}_{t.model}") for t in terms]
    channels = Geometry.of(config).channels
    for workdir, cfg in zip(workdirs, configs):
        if cfg.channels != channels:
            raise ValueError(f"rlhf.reward_models: {workdir} scores {cfg.channels}-channel images; "
                             f"the generator makes {channels}-channel images")
        if cfg.max_text_len < config.data.max_text_len:
            raise ValueError(f"rlhf.reward_models: {workdir} reads at most {cfg.max_text_len} text tokens; "
                             f"data.max_text_len is {config.data.max_text_len}")
    return workdirs, configs, terms


def validate_config(config) -> None:
    r = config.rlhf
    if not config.init_from:
        raise ValueError("RLHF fine-tunes a generator: set config.init_from to an SFT or pretrain workdir")
    codec.require_pixel_space(config, "RLHF (its reward models score pixels)")
    if r.loss not in LOSSES or r.reward_transform not in TRANSFORMS:
        raise ValueError(f"rlhf.loss must be one of {LOSSES} and rlhf.reward_transform one of {TRANSFORMS}, "
                         f"got {r.loss!r} / {r.reward_transform!r}")
    if not 1 <= r.num_prompts <= config.batch_size:
        raise ValueError(f"rlhf.num_prompts={r.num_prompts} must be in [1, batch_size={config.batch_size}]")
    if config.optimizer.grad_accum_steps != 1:
        raise ValueError("RLHF does not accumulate gradients; size memory with rlhf.num_prompts and batch_size")
    stop_candidates(config)
    reward_setup(config)


def stop_candidates(config) -> np.ndarray:
    """Sampler step indices s (sigma_s in the stop window, s >= K) at which x0 may be predicted."""
    r = config.rlhf
    sigmas = np.asarray(rl_sampler(config).sigmas)
    lo, hi = sorted(float(v) for v in r.stop_window)
    steps = np.arange(len(sigmas))
    ok = (sigmas >= lo - 1e-6) & (sigmas <= hi + 1e-6) & (steps >= r.grad_steps) & (steps >= 1)
    if r.grad_steps < 0 or not ok.any():
        raise ValueError(f"rlhf.stop_window={tuple(r.stop_window)} holds no sampler step s >= grad_steps="
                         f"{r.grad_steps} of the {r.num_steps}-step sampler (sigmas {np.round(sigmas, 3).tolist()})")
    return steps[ok]


def rl_sampler(config) -> Sampler:
    r = config.rlhf
    return Sampler.make(r.num_steps, r.shift, r.guidance_scale)


# --------------------------------------------------------------------------- state


class RLHFState(nnx.Module):
    def __init__(self, config, rngs: nnx.Rngs):
        _, reward_configs, _ = reward_setup(config)
        self.model = DiffusionModel(config, rngs)
        self.optimizer = make_optimizer(self.model, config.optimizer, config.total_steps)
        self.ema = EMA(self.model, config.ema_decay) if config.ema_decay > 0 else None
        # Frozen variables (not nnx.Param): outside every optimizer and gradient; loaded in load_pretrained.
        self.reward_models = nnx.List([freeze(RewardModel(cfg, rngs)) for cfg in reward_configs])


def init(config, rngs: nnx.Rngs) -> RLHFState:
    return RLHFState(config, rngs)


def load_pretrained(state: RLHFState, source: dict, config) -> None:
    """The generator from `config.init_from` (as pretraining loads it); the reward models from their workdirs."""
    load_generator(state, source, config)
    workdirs, _, _ = reward_setup(config)
    for model, workdir in zip(state.reward_models, workdirs):
        load_reward_params(model, workdir)


# --------------------------------------------------------------------------- sampling with gradients


def guided_velocity(model: DiffusionModel, prompts: dict, cfg_scale: float, geometry: Geometry):
    """(module, x, sigma, frozen) -> CFG velocity for these prompts, as `refl_x0` calls it. The
    conditioning is encoded once, by `model`; `frozen` steps see it through a stop-gradient."""
    n = prompts["tokens"].shape[0]
    cond = guidance_lib.condition(model, prompts, cfg_scale=cfg_scale)
    frozen_cond = jax.lax.stop_gradient(cond)  # outside any loop: no tangent enters one

    def velocity(m: DiffusionModel, x: jax.Array, sigma: jax.Array, frozen: bool = False) -> jax.Array:
        t = jnp.full((n,), sigma, jnp.float32)
        return guidance_lib.velocity(m, frozen_cond if frozen else cond, x, t, geometry)

    return velocity


def composite_reward(reward_models, terms: list[RewardTerm], images: jax.Array, prompts: dict,
                     transform: str) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(r [B], {term name: its values [B]}) for images [B, H, W, C] and the prompts' captions."""
    scores = [m.score(images, prompts["tokens"], prompts["text_mask"]) for m in reward_models]
    total, parts = 0.0, {}
    for term in terms:
        s = scores[term.model][:, term.head]
        parts[f"reward/{term.name}"] = jax.nn.sigmoid(s) if transform == "prob" else s
        total = total + term.weight * parts[f"reward/{term.name}"]
    return total, parts


def reward_objective(value: jax.Array, loss: str, alpha: float) -> jax.Array:
    """The loss that raises the reward: mean(-r), or mean(ReLU(alpha - r)), which stops pushing at r = alpha."""
    return jnp.mean(-value) if loss == "reward" else jnp.mean(jax.nn.relu(alpha - value))


# --------------------------------------------------------------------------- step


def train_step(state: RLHFState, batch: dict, rng: jax.Array, config) -> dict:
    r = config.rlhf
    _, _, terms = reward_setup(config)
    sampler = rl_sampler(config)
    geometry = Geometry.of(config)
    prompts = {k: batch[k][: r.num_prompts] for k in ("tokens", "text_mask")}
    rng_noise, rng_stop, rng_fm = jax.random.split(rng, 3)
    noise = geometry.noise(rng_noise, r.num_prompts)
    candidates = jnp.asarray(stop_candidates(config))
    stop = candidates[jax.random.randint(rng_stop, (), 0, len(candidates))]
    sigmas = jnp.asarray(sampler.sigmas, jnp.float32)
    reward_graph, reward_params = nnx.split(state.reward_models)
    reward_models = nnx.merge(reward_graph, jax.lax.stop_gradient(reward_params))  # frozen

    def loss_fn(model: DiffusionModel):
        velocity = guided_velocity(model, prompts, sampler.cfg_scale, geometry)
        x0 = refl_x0(model, velocity, noise, sigmas, stop, r.grad_steps, r.remat)
        images = geometry.images_of(x0)
        value, parts = composite_reward(reward_models, terms, images, prompts, r.reward_transform)
        reward_loss = reward_objective(value, r.loss, r.alpha)
        fm = jnp.zeros(())
        if r.fm_weight > 0:
            fm, _ = flow_matching_loss(model, batch, rng_fm, config)
        aux = {"reward": jnp.mean(value), "reward_loss": reward_loss, "fm_loss": fm,
               **{k: jnp.mean(v) for k, v in parts.items()}}
        return reward_loss + r.fm_weight * fm, aux

    (loss, aux), grads = nnx.value_and_grad(loss_fn, has_aux=True)(state.model)
    state.optimizer.update(state.model, grads)
    update_ema(state)
    return {"loss": loss, **aux, "stop_sigma": sigmas[stop], "grad_norm": optax.tree.norm(grads),
            **guard_metrics(state.optimizer)}


STAGE = Stage(init=init, train_step=train_step, sample=sample, load_pretrained=load_pretrained,
              validate_config=validate_config)
