"""Flow-matching pretraining of the MMDiT with a jointly trained text encoder.

The loss here (`flow_matching_loss`) is the one every velocity-trained stage reuses (SFT,
the regulariser in RLHF, the teacher side of distillation).

With `config.input.key = 'latent'` the MMDiT denoises cached VAE latents (`data.path`: shards
from `python -m data_pipelines.cli.prepare --vae=WORKDIR`); `data.image_size` stays the pixel size,
and the frozen VAE in `config.input.vae_workdir` decodes samples to pixels for the grids and
the evaluation (see "latent space" below).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from data_pipelines.core import tokenizer
from seedjax.diffusion import flow
from seedjax.diffusion.sampling import EulerSampler
from seedjax.models import mmdit, text
from seedjax.train.state import EMA, make_optimizer, nonfinite_streak, total_nonfinite, value_and_grad
from seedjax.train.stage import Stage


def input_config(**overrides) -> ml_collections.ConfigDict:
    """What the DiT denoises: pixels ('image') or cached VAE latents ('latent'), in patches."""
    cfg = ml_collections.ConfigDict(dict(key="image", patch_size=4, vae_workdir=""))
    cfg.update(overrides)
    return cfg


def sampling_config(**overrides) -> ml_collections.ConfigDict:
    # paro_plan: the plan file of `python -m seedjax.tools.calibrate_paro`, used when
    # config.model.attention_backend = 'paro' (sampling, and training if set while training).
    cfg = ml_collections.ConfigDict(dict(num_steps=30, guidance_scale=3.0, shift=1.0, use_ema=True, paro_plan=""))
    cfg.update(overrides)
    return cfg


# --------------------------------------------------------------------------- model


class DiffusionModel(nnx.Module):
    """Text encoder + MMDiT: (x_t tokens, t, caption) -> velocity tokens."""

    def __init__(self, config, rngs: nnx.Rngs):
        self.text = text.TextEncoder(config.text, rngs=rngs)
        self.dit = mmdit.MMDiT(config.model, rngs=rngs)

    def condition(self, batch: dict) -> dict:
        embeddings, mask, pooled = text.text_conditioning(self.text, batch)
        return {"text_embeddings": embeddings, "pooled": pooled, "text_mask": mask}

    def __call__(self, x, t, cond: dict, grid_hw, *, guidance=None, target_size=None, return_features=False,
                 attention_kwargs=None):
        return self.dit(x, t, cond["text_embeddings"], cond["pooled"], text_mask=cond["text_mask"],
                        grid_hw=grid_hw, guidance=guidance, target_size=target_size,
                        return_features=return_features, attention_kwargs=attention_kwargs)


class PretrainState(nnx.Module):
    def __init__(self, config, rngs: nnx.Rngs):
        self.model = DiffusionModel(config, rngs)
        self.repa = nnx.data(None)
        if config.repa.weight > 0:
            from seedjax.models.repa import RepaHead

            self.repa = RepaHead(config, rngs=rngs)
        trainable = nnx.List([self.model, self.repa]) if self.repa is not None else self.model
        self.optimizer = make_optimizer(trainable, config.optimizer, config.total_steps)
        self.ema = EMA(self.model, config.ema_decay) if config.ema_decay > 0 else None


def init(config, rngs: nnx.Rngs) -> PretrainState:
    return PretrainState(config, rngs)


# --------------------------------------------------------------------------- loss


def tokens_of(batch: dict, config) -> tuple[jax.Array, tuple[int, int], tuple[int, int, int]]:
    """The clean input as patch tokens, its token grid, and its (H, W, C)."""
    x = batch[config.input.key]
    _, h, w, c = x.shape
    p = config.input.patch_size
    return mmdit.patchify(x, p), (h // p, w // p), (h, w, c)


def drop_captions(batch: dict, rng: jax.Array, p: float) -> dict:
    """Replace a fraction `p` of captions by the empty caption (trains the unconditional branch)."""
    if p <= 0 or "tokens" not in batch:
        return batch
    empty_tokens, empty_mask = (jnp.asarray(a[0]) for a in tokenizer.tokenize([""], batch["tokens"].shape[1]))
    drop = jax.random.bernoulli(rng, p, (batch["tokens"].shape[0],))[:, None]
    return dict(batch, tokens=jnp.where(drop, empty_tokens, batch["tokens"]),
                text_mask=jnp.where(drop, empty_mask, batch["text_mask"]))


def flow_matching_loss(model: DiffusionModel, batch: dict, rng: jax.Array, config, repa_head=None):
    """Velocity MSE on x_t = (1 - t) x0 + t eps, with the defect mask and optional REPA.

    Returns (loss, aux) with aux = {'fm_loss', 'repa_loss'}.
    """
    rng_drop, rng_t, rng_noise = jax.random.split(rng, 3)
    batch = drop_captions(batch, rng_drop, config.diffusion.cfg_dropout)
    x0, grid, _ = tokens_of(batch, config)
    shift = flow.resolution_shift(x0.shape[1], config.diffusion)
    t = flow.sample_t(rng_t, x0.shape[0], config.diffusion, shift)
    noise = jax.random.normal(rng_noise, x0.shape, x0.dtype)
    x_t = flow.interpolate(x0, noise, t)
    weights = None
    if "loss_mask" in batch and config.input.key == "image":
        weights = flow.token_mask(batch["loss_mask"], config.input.patch_size)
    elif "latent_loss_mask" in batch:
        weights = flow.token_mask(batch["latent_loss_mask"], config.input.patch_size)
    cond = model.condition(batch)
    extra = model_extras(batch, config, x0.shape[0])
    extra["attention_kwargs"] = attention_kwargs(config, t)
    if repa_head is None:
        v = model(x_t, t, cond, grid, **extra)
        fm = flow.masked_mse(v, flow.velocity_target(x0, noise), weights)
        return fm, {"fm_loss": fm, "repa_loss": jnp.zeros(())}
    v, feats = model(x_t, t, cond, grid, return_features=True, **extra)
    fm = flow.masked_mse(v, flow.velocity_target(x0, noise), weights)
    rl = repa_head.loss(feats, batch, grid, config)
    return fm + config.repa.weight * rl, {"fm_loss": fm, "repa_loss": rl}


def attention_kwargs(config, t: jax.Array) -> dict | None:
    """What the configured attention backend needs per call (PARO: its plan and the timestep)."""
    if config.model.attention_backend != "paro":
        return None
    if not config.sampling.paro_plan:
        raise ValueError("config.model.attention_backend=paro needs config.sampling.paro_plan "
                         "(make one with python -m seedjax.tools.calibrate_paro)")
    return {"plan": config.sampling.paro_plan, "timestep": t}


def model_extras(batch: dict, config, n: int) -> dict:
    extra = {}
    if config.model.size_embed:
        extra["target_size"] = batch["target_size"] if "target_size" in batch else jnp.zeros((n, 2), jnp.int32)
    if config.model.guidance_embed:
        extra["guidance"] = batch.get("guidance", jnp.ones((n,), jnp.float32))
    return extra


# --------------------------------------------------------------------------- step


def train_step(state: PretrainState, batch: dict, rng: jax.Array, config) -> dict:
    if state.repa is None:
        loss_fn = lambda model, b: flow_matching_loss(model, b, rng, config)
        trainable = state.model
    else:
        loss_fn = lambda mods, b: flow_matching_loss(mods[0], b, rng, config, mods[1])
        trainable = nnx.List([state.model, state.repa])
    (loss, aux), grads = value_and_grad(loss_fn, trainable, batch, config.optimizer.grad_accum_steps)
    state.optimizer.update(trainable, grads)
    if state.ema is not None:
        state.ema.update(state.model)
    return {"loss": loss, **aux, "grad_norm": optax.tree.norm(grads),
            "nonfinite_streak": nonfinite_streak(state.optimizer),
            "nonfinite_total": total_nonfinite(state.optimizer)}


# --------------------------------------------------------------------------- sampling


def sampling_model(state: PretrainState, config) -> DiffusionModel:
    """The model to sample from: a copy holding the EMA parameters when configured."""
    if state.ema is None or not config.sampling.use_ema:
        return state.model
    model = nnx.clone(state.model)
    state.ema.copy_into(model)
    return model


def generate(model: DiffusionModel, config, rng: jax.Array, batch: dict, sampler: EulerSampler,
             image_shape: tuple[int, int, int]) -> jax.Array:
    """Sample inputs [N, H, W, C] (pixels in [-1, 1], or latents) for the captions in `batch`."""
    h, w, c = image_shape
    p = config.input.patch_size
    n = batch["tokens"].shape[0] if "tokens" in batch else batch["text_embeddings"].shape[0]
    grid = (h // p, w // p)
    noise = jax.random.normal(rng, (n, grid[0] * grid[1], p * p * c), jnp.float32)
    cond = model.condition(batch)
    uncond = None
    if sampler.guided:
        empty = {k: v for k, v in batch.items() if k in ("tokens", "text_mask")}
        uncond = model.condition(drop_captions(empty, rng, 1.0))
    extra = model_extras(batch, config, n)

    def velocity(x, t, c):
        rep = x.shape[0] // n
        ex = {k: jnp.concatenate([v] * rep) for k, v in extra.items()}
        return model(x, t, c, grid, attention_kwargs=attention_kwargs(config, t), **ex)

    x = sampler(velocity, noise, cond, uncond)
    return mmdit.unpatchify(x, p, h, w, c)


def image_shape(config) -> tuple[int, int, int]:
    """(H, W, C) of what the MMDiT denoises and the sampler generates: the pixels, or with
    input.key=latent the latent grid (data.image_size / the VAE's factor, its latent channels)."""
    import data_pipelines

    size = config.data.image_size
    if config.input.key == "latent":
        return vae_model_config(config.input.vae_workdir).latent_shape(size, size)
    return (size, size, data_pipelines.channels(config.data))


def sample(state: PretrainState, config, rng: jax.Array, batch: dict) -> jax.Array:
    """Images [N, H, W, C] in [-1, 1] (latent runs: decoded by the VAE) for the captions in `batch`."""
    s = config.sampling
    sampler = EulerSampler.make(s.num_steps, s.shift, s.guidance_scale)
    x = generate(sampling_model(state, config), config, rng, batch, sampler, image_shape(config))
    return jnp.clip(to_pixels(x, config), -1.0, 1.0)


def evaluate(state: PretrainState, config, rng: jax.Array) -> dict:
    from seedjax.eval.samples import evaluate_generator

    decode = latent_codec(config).decode if config.input.key == "latent" else None
    graphdef, params = nnx.split(state)
    return evaluate_generator(lambda p, b, r: sample(nnx.merge(graphdef, p), config, r, b), params, config, rng,
                              decode_latents=decode)


def flops_per_example(config) -> float:
    h, w, _ = image_shape(config)
    tokens = (h // config.input.patch_size) * (w // config.input.patch_size)
    return mmdit.train_flops_per_example(config.model, tokens, config.data.max_text_len) + text.train_flops_per_example(
        config.text, config.data.max_text_len)


# --------------------------------------------------------------------------- latent space


def validate_config(config) -> None:
    """The `validate_config` hook (exit 2 before anything runs)."""
    if config.input.key not in ("image", "latent"):
        raise ValueError(f"config.input.key must be 'image' or 'latent', got {config.input.key!r}")
    if config.input.key == "latent":
        latent_factors(config)


def require_pixel_space(config, what: str) -> None:
    """For stages and tools that do not decode latents (yet): refuse input.key=latent up front."""
    if config.input.key != "image":
        raise ValueError(f"config.input.key={config.input.key!r}: {what} works on pixels only so far "
                         "(latent-space runs need a VAE decoder there); use input.key=image")


@functools.lru_cache(maxsize=None)
def vae_model_config(workdir: str):
    """The VAEConfig of the VAE stage run in `workdir` (its config.json)."""
    from seedjax.stages.vae import model_config, run_config

    if not workdir:
        raise ValueError("config.input.key=latent needs config.input.vae_workdir (the VAE stage workdir that "
                         "made the latents and decodes samples)")
    try:
        return model_config(run_config(workdir).vae)
    except (OSError, ValueError) as e:
        raise ValueError(f"config.input.vae_workdir: {e}") from None


def latent_factors(config) -> dict:
    """The `vae` entry of the latent shards' header (scaling/shift factors), checked against
    config.input.vae_workdir, config.input.patch_size and config.model.in_channels."""
    from data_pipelines.core.mixtures import components
    from data_pipelines.core.shards import read_metadata

    vae = vae_model_config(config.input.vae_workdir)
    factors = []
    for kind, path, _ in components(config.data).values():
        try:
            header = read_metadata(path) if kind == "shards" and path else {}
        except ValueError as e:
            raise ValueError(f"config.data.path: {e}") from None
        if header.get("kind") != "latents" or "vae" not in header:
            raise ValueError(f"config.input.key=latent needs VAE latent shards at config.data.path (python -m "
                             f"data_pipelines.cli.prepare --vae=WORKDIR); got data.source={kind!r}, path={path!r}")
        made_by = (header["vae"]["downsample_factor"], header["shapes"]["latent"][-1])
        if made_by != (vae.downsample_factor, vae.latent_channels):
            raise ValueError(f"config.input.vae_workdir: its VAE (f{vae.downsample_factor}c{vae.latent_channels}) did "
                             f"not make the latents at {path} (f{made_by[0]}c{made_by[1]})")
        factors.append(header["vae"])
    if any(f != factors[0] for f in factors):
        raise ValueError(f"config.data.mixture: latent components were made with different VAE factors {factors}")
    h, w, c = image_shape(config)
    p = config.input.patch_size
    if h % p or w % p:
        raise ValueError(f"config.input.patch_size={p} does not divide the {h}x{w} latent grid "
                         f"(data.image_size={config.data.image_size} / {vae.downsample_factor})")
    if config.model.in_channels != p * p * c:
        raise ValueError(f"config.model.in_channels={config.model.in_channels}: {c}-channel latents in {p}x{p} "
                         f"patches need {p * p * c}")
    return factors[0]


@functools.lru_cache(maxsize=None)
def _load_codec(workdir: str, scaling_factor: float, shift_factor: float):
    from seedjax.stages.vae import LatentCodec

    with jax.ensure_compile_time_eval():  # first use may be inside a jitted sampler: load eagerly
        return LatentCodec.from_workdir(workdir, scaling_factor=scaling_factor, shift_factor=shift_factor)


def latent_codec(config):
    """The frozen VAE of a latent run (loaded once per process) with the factors its latents were made with."""
    factors = latent_factors(config)
    return _load_codec(config.input.vae_workdir, factors["scaling_factor"], factors["shift_factor"])


def to_pixels(x: jax.Array, config) -> jax.Array:
    """Generated inputs -> images: latents are decoded by the frozen VAE, pixels pass through."""
    if config.input.key != "latent":
        return x
    return latent_codec(config).decode_jax(x).astype(jnp.float32)


def load_pretrained(state: PretrainState, source: dict, config) -> None:
    """init_from: the source's EMA parameters when it has them and `config.init_from_ema`, else its model."""
    params = source.get("model")
    if config.get("init_from_ema", False) and source.get("ema"):
        params = source["ema"]["params"]
    if params is None:
        raise ValueError(f"config.init_from={config.init_from}: no 'model' parameters in that checkpoint "
                         f"(it has {sorted(source)})")
    nnx.update(state.model, params)
    if state.ema is not None:
        state.ema.load(params)


STAGE = Stage(init=init, train_step=train_step, sample=sample, evaluate=evaluate, flops_per_example=flops_per_example,
              load_pretrained=load_pretrained, validate_config=validate_config)
