"""Loading parameters from another run's checkpoint: by path, by entry, and a trained VAE.

`load_params` copies a pure tree into a module's `nnx.Param` / `Frozen` variables, checking
every path and shape (a silent partial load is how a distilled model ends up half-random);
`pick_params` picks an entry ('model', 'ema', 'teacher', ...) of a saved state; `load_codec`
(image or video VAE: the one loader for latent caching and decoding) and `latent_codec` give
the frozen VAE of a latent-space run, `load_reward_model` a trained reward model.

An export of a latent run (`python -m seedjax.export`, format bundle) carries its VAE in
EXPORT/vae: the VAE run's config.json, its weights (`params.safetensors`) and the factors its
latents were made with (`factors.json`). `load_codec` and `latent_factors` read such a folder
wherever they read a VAE workdir, so the export needs neither the VAE run nor the latent shards.
"""

from __future__ import annotations

import functools
import json
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import ml_collections
from flax import nnx

import data_pipelines
from seedjax.config import to_json, workdir_config
from data_pipelines.core.mixtures import components
from data_pipelines.core.shards import read_metadata
from seedjax.models import generator
from seedjax.models.codec import (LatentCodec, abstract_vae, input_shape, is_video_vae, spatial_factor,
                                  temporal_factor, vae_architecture_of_run, vae_name, vae_run_config)
from seedjax.models.frozen import Frozen
from seedjax.models.block_layout import match_block_layout
from seedjax.models.reward import RewardModel
from seedjax.train import checkpoint as ckpt_lib
from seedjax.train.param_names import flatten, unflatten

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
               scaling_factor: float | None = None, shift_factor: float | None = None,
               calibration_clips: int = 16) -> LatentCodec:
    """The VAE trained in `workdir` (latest checkpoint; EMA weights when kept): an image VAE, or a
    causal video VAE (config.vae.kind = 'video') whose codec encodes clips [N, F, H, W, C].

    `scaling_factor` / `shift_factor`: the ones latents were made with (a latent shard
    header's `vae` entry); None = the VAE config's, or the scale estimated on the VAE run's
    held-out data (`calibration_images` images, or `calibration_clips` clips).
    """
    config = vae_run_config(workdir)
    if exported_vae_factors(workdir) is not None:
        from safetensors.numpy import load_file

        template = nnx.to_pure_dict(nnx.state(abstract_vae(config.vae)))
        params = unflatten(load_file(os.path.join(workdir, EXPORTED_VAE_WEIGHTS)), template)
    else:
        tree = ckpt_lib.load_state_tree(workdir)
        params = tree["ema"]["params"] if use_ema and tree.get("ema") else tree["vae"]
    codec = LatentCodec.from_params(config.vae, params, scaling_factor, shift_factor)
    if scaling_factor is None and codec.scaling_factor == 1.0 and codec.shift_factor == 0.0:
        num = calibration_clips if codec.is_video else calibration_images
        codec.scaling_factor = estimate_scale(codec, config, num)
        log.info("VAE %s: latent scaling factor %.4f (1 / std over %d held-out %s)", workdir,
                 codec.scaling_factor, num, "clips" if codec.is_video else "images")
    return codec


EXPORTED_VAE_WEIGHTS, EXPORTED_VAE_FACTORS = "params.safetensors", "factors.json"


def exported_vae_factors(workdir: str) -> dict | None:
    """The latents' factors of an export's VAE folder (module docstring); None for a VAE workdir."""
    path = os.path.join(workdir, EXPORTED_VAE_FACTORS)
    if "://" in workdir or not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def save_exported_vae(config, directory: str) -> None:
    """The frozen VAE of latent run `config` as an export's VAE folder (module docstring)."""
    from safetensors.numpy import save_file

    codec = latent_codec(config)
    os.makedirs(directory)
    with open(os.path.join(directory, "config.json"), "w") as f:
        f.write(to_json(vae_run_config(config.input.vae_workdir)))
    save_file(flatten(nnx.to_pure_dict(nnx.state(codec.vae))), os.path.join(directory, EXPORTED_VAE_WEIGHTS))
    with open(os.path.join(directory, EXPORTED_VAE_FACTORS), "w") as f:
        json.dump({"scaling_factor": codec.scaling_factor, "shift_factor": codec.shift_factor}, f)


def estimate_scale(codec: LatentCodec, config, num: int) -> float:
    # At most `num` held-out images (clips): a small folder calibrates on what it has.
    batch = data_pipelines.make_eval_batch(config.data, num=num, seed=int(config.seed), allow_fewer=True)
    key = "video" if codec.is_video else "image"
    if key not in batch:
        raise ValueError(f"the VAE run's data (source {config.data.source!r}) gives no {key!r} to calibrate the latent "
                         "scale on; set config.vae.model.scaling_factor")
    return float(1.0 / max(np.std(codec.encode_raw(np.asarray(batch[key], np.float32))), 1e-6))


def _made_by(header: dict) -> str:
    """The VAE a latent shard header names, as `vae_name` spells it ('t4s16c48', 'f8c16')."""
    vae, channels = header["vae"], header["shapes"]["latent"][-1]
    if header.get("video"):
        return f"t{vae['temporal_factor']}s{vae['spatial_factor']}c{channels}"
    return f"f{vae['downsample_factor']}c{channels}"


def latent_factors(config) -> dict:
    """The `vae` entry of the latent shards' header (scaling/shift factors), checked against
    config.input.vae_workdir (image or video latents, factors, channels), config.input.patch_size
    and config.model.in_channels; a video VAE's latents also need the video DiT and clips of
    data.video.num_frames = 1 + k * temporal factor frames."""
    vae = vae_architecture_of_run(config.input.vae_workdir)
    exported = exported_vae_factors(config.input.vae_workdir)
    factors = [] if exported is None else [exported]  # an export's VAE: the shards were checked at export
    for kind, path, _ in ([] if exported else components(config.data).values()):
        try:
            header = read_metadata(path) if kind == "shards" and path else {}
        except ValueError as e:
            raise ValueError(f"config.data.path: {e}") from None
        if header.get("kind") != "latents" or "vae" not in header:
            raise ValueError(f"config.input.key=latent needs VAE latent shards at config.data.path (python -m "
                             f"data_pipelines.cli.prepare --vae=WORKDIR); got data.source={kind!r}, path={path!r}")
        if bool(header.get("video")) != is_video_vae(vae) or _made_by(header) != vae_name(vae):
            raise ValueError(f"config.input.vae_workdir: its {'video' if is_video_vae(vae) else 'image'} VAE "
                             f"({vae_name(vae)}) did not make the {'video' if header.get('video') else 'image'} "
                             f"latents at {path} ({_made_by(header)})")
        factors.append({k: header["vae"][k] for k in ("scaling_factor", "shift_factor")})
    if any(f != factors[0] for f in factors):
        raise ValueError(f"config.data.mixture: latent components were made with different VAE factors {factors}")
    if is_video_vae(vae):
        frames, t = int(config.data.video.num_frames), temporal_factor(vae)
        if (frames - 1) % t:
            raise ValueError(f"config.data.video.num_frames={frames} does not fit the video VAE's temporal factor {t} "
                             f"(1 + {t}k frames, e.g. {1 + t * max((frames - 1) // t, 1)})")
    if is_video_vae(vae) != generator.is_video(config.model):
        raise ValueError(f"config.input.vae_workdir is {'a video' if is_video_vae(vae) else 'an image'} VAE, whose "
                         f"latents the {'video DiT' if is_video_vae(vae) else 'MMDiT'} denoises; config.model.kind is "
                         f"{config.model.get('kind', 'mmdit')!r}")
    h, w, c = input_shape(config)
    p = config.input.patch_size
    if h % p or w % p:
        raise ValueError(f"config.input.patch_size={p} does not divide the {h}x{w} latent grid "
                         f"(data.image_size={config.data.image_size} / {spatial_factor(vae)})")
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
    """Generated inputs [B, f, h, w, c] -> pixels [B, F, H, W, C]: a video VAE decodes each latent
    clip (F = 1 + (f - 1) * temporal factor), an image VAE frame by frame (F = f); pixels pass through."""
    if config.input.key != "latent":
        return x
    codec = latent_codec(config)
    if codec.is_video:
        return codec.decode_jax(x).astype(jnp.float32)
    b, f = x.shape[:2]
    pixels = codec.decode_jax(x.reshape(b * f, *x.shape[2:])).astype(jnp.float32)
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
