"""A trained VAE as other code uses it: images or clips <-> normalised latents, and latent-space runs.

`LatentCodec` wraps a VAE stage's weights, image VAE or causal video VAE (latent caching in
`data_pipelines.cli.prepare --vae=WORKDIR`, decoding the samples of latent-space generators;
loaded from a workdir by `seedjax.train.params.load_codec`). A diffusion config with
`config.input.key = 'latent'` denoises cached latents; `input_shape` and `input_frames` resolve
their shape from the VAE run in `config.input.vae_workdir` (a video VAE's latents of
`data.video.num_frames` pixel frames have 1 + (num_frames - 1) / temporal_factor frames;
`seedjax.train.params.latent_factors` checks the shards' header).
"""

from __future__ import annotations

import dataclasses
import functools
import logging

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from seedjax import config as config_lib
from seedjax.models.vae import ImageVAE
from seedjax.models import video_vae
from seedjax.models.video_vae import VideoVAE
from seedjax.parallel.host import to_host
from seedjax.schema.models import VAEConfig, VideoVAEConfig

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- the VAE of a config


def vae_architecture(vae_cfg) -> VAEConfig | VideoVAEConfig:
    """The VAEConfig / VideoVAEConfig of a `config.vae` group."""
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in dict(vae_cfg.model).items()}
    cls = VAEConfig if vae_cfg.kind == "image" else VideoVAEConfig
    unknown = set(fields) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise ValueError(f"config.vae.model: unknown fields {sorted(unknown)} for a {vae_cfg.kind} VAE")
    return cls(**fields)


def build_vae(vae_cfg, rngs: nnx.Rngs) -> ImageVAE | VideoVAE:
    cfg = vae_architecture(vae_cfg)
    return ImageVAE(cfg, rngs=rngs) if vae_cfg.kind == "image" else VideoVAE(cfg, rngs=rngs)


def abstract_vae(vae_cfg) -> ImageVAE | VideoVAE:
    """The VAE with abstract parameters, to load weights into. jax.eval_shape, not
    nnx.eval_shape: this may run inside the training loop's mesh (a latent-space stage's
    decoder), where NNX would read the logical axis names as mesh axes. The key is an argument,
    not a constant: under `jax.ensure_compile_time_eval` (`latent_codec` loads under it) the
    initialisers of a constant key would run for real (40 s for the tiny video VAE on CPU)."""
    graphdefs = []

    def make_state(key):
        graphdef, state = nnx.split(build_vae(vae_cfg, nnx.Rngs(key)))
        graphdefs.append(graphdef)
        return state

    state = jax.eval_shape(make_state, jax.random.key(0))
    return nnx.merge(graphdefs[0], state)


def vae_run_config(workdir: str):
    """The config of the VAE stage run (image or video VAE) in `workdir` (its config.json; no weights read)."""
    config = config_lib.workdir_config(workdir)
    if config is None:
        raise FileNotFoundError(f"VAE workdir {workdir!r} has no config.json (is it a VAE stage workdir?)")
    if config.get("stage") != "vae" or "vae" not in config:
        raise ValueError(f"{workdir} is a {config.get('stage')!r} run, not a VAE stage run")
    return config


def is_video_vae(vae: VAEConfig | VideoVAEConfig) -> bool:
    return isinstance(vae, VideoVAEConfig)


def spatial_factor(vae: VAEConfig | VideoVAEConfig) -> int:
    """Pixels per latent along height and width."""
    return vae.spatial_factor if is_video_vae(vae) else vae.downsample_factor


def temporal_factor(vae: VAEConfig | VideoVAEConfig) -> int:
    """Pixel frames per latent frame after the first (an image VAE: 1, frame by frame)."""
    return vae.temporal_factor if is_video_vae(vae) else 1


def vae_name(vae: VAEConfig | VideoVAEConfig) -> str:
    """'t4s16c48' (video) or 'f8c16' (image): the factors and channels, as in error messages."""
    f, c = spatial_factor(vae), vae.latent_channels
    return f"t{temporal_factor(vae)}s{f}c{c}" if is_video_vae(vae) else f"f{f}c{c}"


# --------------------------------------------------------------------------- codec


class LatentCodec:
    """A trained VAE for other stages: images (or clips) <-> latents as the diffusion model sees them.

    `encode` returns (mean - shift) * scale, `decode` inverts it. The scale comes from the
    VAE config when set (`scaling_factor` != 1.0 or a diffusers import); otherwise
    `seedjax.train.params.load_codec` estimates it as 1 / std of the latents of held-out images
    (clips), as LDM does. An image VAE maps [N, H, W, C] <-> [N, h, w, c]; a causal video VAE
    maps clips [N, F, H, W, C] (F = 1 + k * temporal_factor) <-> [N, 1 + k, h, w, c].
    """

    def __init__(self, vae: ImageVAE | VideoVAE, scaling_factor: float | None = None,
                 shift_factor: float | None = None, batch_size: int | None = None):
        self.vae = vae
        self.scaling_factor = vae.config.scaling_factor if scaling_factor is None else scaling_factor
        self.shift_factor = vae.config.shift_factor if shift_factor is None else shift_factor
        # Rows per encoder/decoder call: clips are a few dozen frames each.
        self.batch_size = batch_size or (4 if self.is_video else 64)
        graphdef, params = nnx.split(vae)
        self._encode = jax.jit(lambda p, x: nnx.merge(graphdef, p).encode(x)[0])
        self._decode = jax.jit(lambda p, z: nnx.merge(graphdef, p).decode(z))
        self._params = params

    @property
    def is_video(self) -> bool:
        return is_video_vae(self.vae.config)

    @property
    def downsample_factor(self) -> int:
        """The spatial factor (pixels per latent along height and width)."""
        return spatial_factor(self.vae.config)

    @property
    def temporal_factor(self) -> int:
        return temporal_factor(self.vae.config)

    @property
    def latent_channels(self) -> int:
        return self.vae.config.latent_channels

    def _batched(self, fn, x: np.ndarray) -> np.ndarray:
        out = [to_host(fn(self._params, jnp.asarray(x[i: i + self.batch_size], jnp.float32)))
               for i in range(0, len(x), self.batch_size)]
        return np.concatenate(out)

    def encode_raw(self, images: np.ndarray) -> np.ndarray:
        return self._batched(self._encode, images)

    def decode_raw(self, latents: np.ndarray) -> np.ndarray:
        return self._batched(self._decode, latents)

    def encode(self, images: np.ndarray) -> np.ndarray:
        """[N, H, W, C] images in [-1, 1] -> [N, H/f, W/f, c] normalised latents (float32); a video
        VAE: clips [N, F, H, W, C] -> [N, 1 + (F - 1) / t, H/s, W/s, c]."""
        return ((self.encode_raw(images) - self.shift_factor) * self.scaling_factor).astype(np.float32)

    def decode(self, latents: np.ndarray) -> np.ndarray:
        return self.decode_raw(np.asarray(latents) / self.scaling_factor + self.shift_factor)

    def decode_jax(self, latents: jax.Array) -> jax.Array:
        """Traceable decode of normalised latents (inside another stage's jitted sampler)."""
        return self.vae.decode(latents / self.scaling_factor + self.shift_factor)

    def frame_decoder(self):
        """A video VAE's decoder of normalised latent frames one at a time (`video_vae.FrameDecoder`).
        A frame comes through the host: the generator's frames may live on other devices (its mesh)
        than the frozen VAE's parameters."""
        decoder = video_vae.FrameDecoder(self.vae)
        return lambda z: decoder(np.asarray(z, np.float32) / self.scaling_factor + self.shift_factor)

    def encode_jax(self, x: jax.Array) -> jax.Array:
        """Traceable encode to normalised latents (posterior means), e.g. an I2V first frame."""
        return (self.vae.encode(x)[0] - self.shift_factor) * self.scaling_factor

    @classmethod
    def from_params(cls, vae_cfg, params: dict, scaling_factor: float | None = None,
                    shift_factor: float | None = None) -> "LatentCodec":
        """A codec over the VAE of `config.vae` group `vae_cfg` holding `params` (a pure tree)."""
        vae = abstract_vae(vae_cfg)
        nnx.update(vae, jax.tree.map(jnp.asarray, params))
        return cls(vae, scaling_factor, shift_factor)


# --------------------------------------------------------------------------- latent-space runs


PIXEL_KEYS = ("image", "video")  # config.input.key of pixel-space runs: still images, clips [B, F, H, W, C]


def input_shape(config) -> tuple[int, int, int]:
    """(H, W, C) of one frame of what the DiT denoises and the sampler generates: the pixels, or
    with input.key=latent the latent grid (data.image_size / the VAE's factor, its latent channels)."""
    size = config.data.image_size
    if config.input.key == "latent":
        vae = vae_architecture_of_run(config.input.vae_workdir)
        return size // spatial_factor(vae), size // spatial_factor(vae), vae.latent_channels
    # model.in_channels is derived from the data's channels (seedjax.config.DERIVED).
    return (size, size, config.model.in_channels // config.input.patch_size**2)


def input_frames(config) -> int:
    """Frames of what the DiT denoises and the sampler generates: `data.video.num_frames` for pixel
    clips (input.key=video), their latent frames 1 + (num_frames - 1) // temporal_factor with a
    video VAE's latents, else one (an image)."""
    if config.input.key == "video":
        return int(config.data.video.num_frames)
    if config.input.key == "latent":
        vae = vae_architecture_of_run(config.input.vae_workdir)
        if is_video_vae(vae):
            return 1 + (int(config.data.video.num_frames) - 1) // vae.temporal_factor
    return 1


def require_pixel_space(config, what: str) -> None:
    """For stages and tools that do not decode latents (yet): refuse input.key=latent up front."""
    if config.input.key not in PIXEL_KEYS:
        raise ValueError(f"config.input.key={config.input.key!r}: {what} works on pixels only so far "
                         "(latent-space runs need a VAE decoder there); use input.key=image (or video)")


@functools.lru_cache(maxsize=None)
def vae_architecture_of_run(workdir: str) -> VAEConfig | VideoVAEConfig:
    """The VAEConfig / VideoVAEConfig of the VAE stage run in `workdir` (its config.json)."""
    if not workdir:
        raise ValueError("config.input.key=latent needs config.input.vae_workdir (the VAE stage workdir that "
                         "made the latents and decodes samples)")
    try:
        return vae_architecture(vae_run_config(workdir).vae)
    except (OSError, ValueError) as e:
        raise ValueError(f"config.input.vae_workdir: {e}") from None
