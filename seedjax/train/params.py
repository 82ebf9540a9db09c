"""Loading parameters from another run's checkpoint: by path, by entry, and a trained VAE.

`load_params` copies a pure tree into a module's `nnx.Param` / `Frozen` variables, checking
every path and shape (a silent partial load is how a distilled model ends up half-random);
`pick_params` picks an entry ('model', 'ema', 'teacher', ...) of a saved state; `load_codec`
and `latent_codec` give the frozen VAE of a latent-space run, `load_reward_model` a trained
reward model.
"""

from __future__ import annotations

import functools
import logging

import jax
import jax.numpy as jnp
import numpy as np
import ml_collections
from flax import nnx

import data_pipelines
from seedjax.config import workdir_config
from data_pipelines.core.mixtures import components
from data_pipelines.core.shards import read_metadata
from seedjax.models.codec import LatentCodec, input_shape, vae_architecture_of_run, vae_run_config
from seedjax.models.frozen import Frozen
from seedjax.models.block_layout import match_block_layout
from seedjax.models.reward import RewardModel
from seedjax.train import checkpoint as ckpt_lib

log = logging.getLogger(__name__)


def _key(path) -> tuple[str, ...]:
    # Checkpoints name list entries '0', '1', ...; live modules use ints. Compare as strings.
    return tuple(str(p) for p in path)


def load_params(module: nnx.Module, tree: dict, what: str, allow_missing: tuple[str, ...] = ()) -> list[str]:
    """Copy the arrays of a pure nested dict into `module`'s parameters (Param or Frozen), by path.

    Every parameter of `module` must be in `tree` with the same shape, except those whose path
    contains a name in `allow_missing` (left as initialised; their paths are returned). Entries
    of `tree` the module does not have are an error too: a silent partial load is how a
    distilled model ends up half-random. `what` names the source in error messages.
    MMDiT block stacks are converted to the module's layout (unrolled / scan_layers).
    """
    tree = match_block_layout(tree, module)
    source = {_key(p): v for p, v in nnx.traversals.flatten_mapping(tree).items()}
    targets = [(p, v) for p, v in nnx.to_flat_state(nnx.state(module, nnx.Any(nnx.Param, Frozen)))]
    missing, seen = [], set()
    for path, var in targets:
        key = _key(path)
        if key not in source:
            if any(name in key for name in allow_missing):
                missing.append("/".join(key))
                continue
            raise ValueError(f"{what}: parameter {'/'.join(key)} is missing from the checkpoint")
        value = source[key]
        if tuple(np.shape(value)) != tuple(var[...].shape):
            raise ValueError(f"{what}: parameter {'/'.join(key)} has shape {tuple(np.shape(value))} in the checkpoint, "
                             f"the model expects {tuple(var[...].shape)}")
        # A fresh buffer each time: the loop donates the state, and two variables loaded from
        # the same checkpoint array (student and teacher, model and EMA) must not alias.
        var[...] = jnp.array(value, dtype=var[...].dtype, copy=True)
        seen.add(key)
    extra = sorted("/".join(k) for k in source if k not in seen)
    if extra:
        raise ValueError(f"{what}: the checkpoint has {len(extra)} parameter(s) the model does not, e.g. {extra[0]} "
                         f"(a model config that differs from the run it is loaded from?)")
    return missing


def pick_params(source: dict, entry: str, what: str) -> dict:
    """The parameter tree named `entry` ('model', 'ema', 'teacher', 'fake_score', ...) of a saved state."""
    if entry == "ema":
        if not source.get("ema"):
            raise ValueError(f"{what}: the checkpoint has no EMA ('ema' entry); it has {sorted(source)}")
        return source["ema"]["params"]
    if entry not in source or not source[entry]:
        raise ValueError(f"{what}: the checkpoint has no {entry!r} entry; it has {sorted(source)}")
    return source[entry]


# --------------------------------------------------------------------------- a trained VAE


def load_codec(workdir: str, use_ema: bool = True, calibration_images: int = 256,
               scaling_factor: float | None = None, shift_factor: float | None = None) -> LatentCodec:
    """The image VAE trained in `workdir` (latest checkpoint; EMA weights when kept).

    `scaling_factor` / `shift_factor`: the ones latents were made with (a latent shard
    header's `vae` entry); None = the VAE config's, or the estimated scale.
    """
    config = vae_run_config(workdir)
    tree = ckpt_lib.load_state_tree(workdir)
    params = tree["ema"]["params"] if use_ema and tree.get("ema") else tree["vae"]
    codec = LatentCodec.from_params(config.vae, params, scaling_factor, shift_factor)
    if scaling_factor is None and codec.scaling_factor == 1.0 and codec.shift_factor == 0.0:
        codec.scaling_factor = estimate_scale(codec, config, calibration_images)
        log.info("VAE %s: latent scaling factor %.4f (1 / std over %d held-out images)", workdir,
                 codec.scaling_factor, calibration_images)
    return codec


def estimate_scale(codec: LatentCodec, config, num: int) -> float:
    # At most `num` held-out images: a small folder calibrates on what it has.
    batch = data_pipelines.make_eval_batch(config.data, num=num, seed=int(config.seed), allow_fewer=True)
    return float(1.0 / max(np.std(codec.encode_raw(np.asarray(batch["image"], np.float32))), 1e-6))


def latent_factors(config) -> dict:
    """The `vae` entry of the latent shards' header (scaling/shift factors), checked against
    config.input.vae_workdir, config.input.patch_size and config.model.in_channels."""
    vae = vae_architecture_of_run(config.input.vae_workdir)
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
    h, w, c = input_shape(config)
    p = config.input.patch_size
    if h % p or w % p:
        raise ValueError(f"config.input.patch_size={p} does not divide the {h}x{w} latent grid "
                         f"(data.image_size={config.data.image_size} / {vae.downsample_factor})")
    if config.model.in_channels != p * p * c:
        raise ValueError(f"config.model.in_channels={config.model.in_channels}: {c}-channel latents in {p}x{p} "
                         f"patches need {p * p * c}")
    return factors[0]


@functools.lru_cache(maxsize=None)
def _cached_codec(workdir: str, scaling_factor: float, shift_factor: float) -> LatentCodec:
    with jax.ensure_compile_time_eval():  # first use may be inside a jitted sampler: load eagerly
        return load_codec(workdir, scaling_factor=scaling_factor, shift_factor=shift_factor)


def latent_codec(config) -> LatentCodec:
    """The frozen VAE of a latent run (loaded once per process) with the factors its latents were made with."""
    factors = latent_factors(config)
    return _cached_codec(config.input.vae_workdir, factors["scaling_factor"], factors["shift_factor"])


def to_pixels(x: jax.Array, config) -> jax.Array:
    """Generated inputs [B, F, h, w, c] -> pixels [B, F, H, W, C]: latents are decoded frame by
    frame by the frozen VAE; pixels pass through."""
    if config.input.key != "latent":
        return x
    b, f = x.shape[:2]
    pixels = latent_codec(config).decode_jax(x.reshape(b * f, *x.shape[2:])).astype(jnp.float32)
    return pixels.reshape(b, f, *pixels.shape[1:])


# --------------------------------------------------------------------------- a trained reward model


def reward_model_config_of(workdir: str) -> ml_collections.ConfigDict:
    """The reward-model config of a reward-stage workdir; a clear error for any other kind of run."""
    saved = workdir_config(workdir)
    if saved is None:
        raise ValueError(f"{workdir}: not a seedjax workdir (no config.json); expected a reward-stage workdir")
    if saved.get("stage") != "reward" or "reward_model" not in saved:
        raise ValueError(f"{workdir} is a {saved.get('stage')!r}-stage workdir, not a reward model; "
                         f"train one with stage 'reward' (e.g. experiments/quickstart/reward.py)")
    cfg = ml_collections.ConfigDict(saved["reward_model"])
    cfg.heads = tuple(cfg.heads)
    return cfg


def load_reward_params(model: RewardModel, workdir: str) -> None:
    """Fill `model` (trainable or frozen) with the latest parameters saved in the reward workdir."""
    load_params(model, pick_params(ckpt_lib.load_state_tree(workdir), "model", workdir), f"reward model {workdir}")


def load_reward_model(workdir: str) -> RewardModel:
    """A trained reward model from its workdir (for scoring outside training, e.g. benchmarks)."""
    model = RewardModel(reward_model_config_of(workdir), nnx.Rngs(0))
    load_reward_params(model, workdir)
    return model
