"""Temporally causal video VAE (Seedance 1.0: (4, 16, 16) compression, 48 latent channels).

Every 3D convolution is causal in time: it pads `kernel_t - 1` frames in front (copies of
the first frame) and none behind, so output frame t only sees input frames <= t.
Normalisation and attention work per frame. Hence:

- A video of 1 + 4k frames has 1 + k latent frames. The first frame is encoded on its own
  (an image is a one-frame video), so images and videos share one latent space.
- Changing frame k leaves the latents of the frames before it unchanged.
- The video can be encoded/decoded a window of frames at a time (`encode_in_chunks`,
  `decode_in_chunks`): every causal conv hands the frames it still needs to the next
  window through a `CausalCache`, so the result equals the full pass while memory stays
  bounded by the window.

Temporal downsampling is a causal conv with kernel 3 and stride 2 (1 + 2m frames ->
1 + m); upsampling is a causal conv to 2x channels whose halves become two frames, the
first frame's spare copy dropped (1 + m -> 1 + 2m). Videos are [B, T, H, W, C] in [-1, 1].
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from seedjax.models import layers
from seedjax.models.vae import (
    CONV_INIT,
    SpatialAttention,
    check_divisible,
    constrain_spatial,
    group_norm,
    sample_posterior,
    split_moments,
)
from seedjax.schema.models import VideoVAEConfig

CONV_NAMES_3D = ("conv_spatial", "conv_spatial", "conv_spatial", "conv_in", "conv_out")
VIDEO_ACT_NAMES = ("batch", "vae_frames", "vae_height", "vae_width", None)


# --------------------------------------------------------------------------- causal convolution


class CausalCache:
    """Frames each causal conv needs from the previous window, in call order.

    A pass over the first window starts with `CausalCache()`; `entries` of the pass
    before seed the next one: `cache = CausalCache(previous.outgoing)`. The entries are a
    list of arrays, so they can cross a `jax.jit` boundary.
    """

    def __init__(self, entries: list[jax.Array] | None = None):
        self.start = entries is None
        self.incoming = list(entries or [])
        self.outgoing: list[jax.Array] = []

    def take(self) -> jax.Array:
        if not self.incoming:
            raise ValueError("CausalCache ran out of entries: a window was run with a different model")
        return self.incoming.pop(0)


class CausalConv3d(nnx.Module):
    def __init__(self, cin, cout, kernel=(3, 3, 3), stride=(1, 1, 1), spatial_padding=None, *, rngs, dtype):
        kt, kh, kw = kernel
        if spatial_padding is None:
            spatial_padding = ((kh // 2, kh // 2), (kw // 2, kw // 2))
        self.kernel_t, self.stride_t = kt, stride[0]
        self.conv = nnx.Conv(
            cin,
            cout,
            tuple(kernel),
            strides=tuple(stride),
            padding=((0, 0), *spatial_padding),
            dtype=dtype,
            kernel_init=nnx.with_partitioning(CONV_INIT, CONV_NAMES_3D),
            bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), ("conv_out",)),
            rngs=rngs,
        )

    def __call__(self, x, cache: CausalCache | None = None):
        if self.kernel_t == 1 and self.stride_t == 1:
            return self.conv(x)
        if cache is None or cache.start:
            past = jnp.repeat(x[:, :1], self.kernel_t - 1, axis=1)
        else:
            past = cache.take()
        x = jnp.concatenate([past, x], axis=1)
        if cache is not None:
            # The next window's first output starts right after this window's last one.
            outputs = (x.shape[1] - self.kernel_t) // self.stride_t + 1
            cache.outgoing.append(x[:, outputs * self.stride_t :])
        return self.conv(x)


def per_frame(fn, x):
    """Apply an image op to every frame of [B, T, H, W, C]."""
    b, t = x.shape[:2]
    y = fn(x.reshape(b * t, *x.shape[2:]))
    return y.reshape(b, t, *y.shape[1:])


# --------------------------------------------------------------------------- blocks


class ResnetBlock3D(nnx.Module):
    def __init__(self, cin, cout, groups, *, rngs, dtype):
        self.norm1 = group_norm(cin, groups, rngs=rngs, dtype=dtype)
        self.conv1 = CausalConv3d(cin, cout, rngs=rngs, dtype=dtype)
        self.norm2 = group_norm(cout, groups, rngs=rngs, dtype=dtype)
        self.conv2 = CausalConv3d(cout, cout, rngs=rngs, dtype=dtype)
        self.shortcut = CausalConv3d(cin, cout, (1, 1, 1), rngs=rngs, dtype=dtype) if cin != cout else None

    def __call__(self, x, cache):
        h = self.conv1(jax.nn.silu(per_frame(self.norm1, x)), cache)
        h = self.conv2(jax.nn.silu(per_frame(self.norm2, h)), cache)
        return (self.shortcut(x) if self.shortcut is not None else x) + h


class MidBlock3D(nnx.Module):
    def __init__(self, channels, groups, attention, *, rngs, dtype):
        self.resnet1 = ResnetBlock3D(channels, channels, groups, rngs=rngs, dtype=dtype)
        self.attention = SpatialAttention(channels, groups, rngs=rngs, dtype=dtype) if attention else None
        self.resnet2 = ResnetBlock3D(channels, channels, groups, rngs=rngs, dtype=dtype)

    def __call__(self, x, cache):
        x = self.resnet1(x, cache)
        if self.attention is not None:
            x = per_frame(self.attention, x)
        return self.resnet2(x, cache)


class Downsample3D(nnx.Module):
    """Spatial 2x (stride-2 conv, bottom/right padding) and optionally temporal 2x (causal, stride 2)."""

    def __init__(self, channels, temporal: bool, *, rngs, dtype):
        self.spatial = CausalConv3d(
            channels, channels, (1, 3, 3), (1, 2, 2), ((0, 1), (0, 1)), rngs=rngs, dtype=dtype
        )
        self.temporal = CausalConv3d(channels, channels, (3, 1, 1), (2, 1, 1), rngs=rngs, dtype=dtype) if temporal else None

    def __call__(self, x, cache):
        x = self.spatial(x)
        return self.temporal(x, cache) if self.temporal is not None else x


class Upsample3D(nnx.Module):
    """Optionally temporal 2x (each frame becomes two; the first frame stays one), then spatial 2x."""

    def __init__(self, channels, temporal: bool, *, rngs, dtype):
        self.channels = channels
        self.temporal = CausalConv3d(channels, 2 * channels, (3, 1, 1), rngs=rngs, dtype=dtype) if temporal else None
        self.spatial = CausalConv3d(channels, channels, (1, 3, 3), rngs=rngs, dtype=dtype)

    def __call__(self, x, cache):
        if self.temporal is not None:
            first_window = cache is None or cache.start
            b, t, h, w, _ = x.shape
            y = self.temporal(x, cache).reshape(b, t, h, w, 2, self.channels)
            x = y.transpose(0, 1, 4, 2, 3, 5).reshape(b, 2 * t, h, w, self.channels)
            if first_window:
                x = x[:, 1:]
        return self.spatial(jnp.repeat(jnp.repeat(x, 2, axis=2), 2, axis=3))


class Block3D(nnx.Module):
    """ResNet blocks, then an optional down- or upsampler."""

    def __init__(self, cin, cout, num_resnets, groups, resample, *, rngs, dtype):
        self.resnets = nnx.List(
            [ResnetBlock3D(cin if i == 0 else cout, cout, groups, rngs=rngs, dtype=dtype) for i in range(num_resnets)]
        )
        self.resample = resample

    def __call__(self, x, cache):
        for resnet in self.resnets:
            x = resnet(x, cache)
        return self.resample(x, cache) if self.resample is not None else x


# --------------------------------------------------------------------------- encoder / decoder


class VideoEncoder(nnx.Module):
    def __init__(self, cfg: VideoVAEConfig, *, rngs):
        dtype = layers.compute_dtype(cfg.dtype)
        chans, g, n = cfg.block_channels, cfg.norm_groups, len(cfg.block_channels)
        self.conv_in = CausalConv3d(cfg.in_channels, chans[0], rngs=rngs, dtype=dtype)
        self.blocks = nnx.List(
            [
                Block3D(
                    chans[max(i - 1, 0)],
                    c,
                    cfg.layers_per_block,
                    g,
                    Downsample3D(c, cfg.temporal_downsample[i], rngs=rngs, dtype=dtype) if i < n - 1 else None,
                    rngs=rngs,
                    dtype=dtype,
                )
                for i, c in enumerate(chans)
            ]
        )
        self.mid = MidBlock3D(chans[-1], g, cfg.mid_attention, rngs=rngs, dtype=dtype)
        self.norm_out = group_norm(chans[-1], g, rngs=rngs, dtype=dtype)
        self.conv_out = CausalConv3d(chans[-1], 2 * cfg.latent_channels, rngs=rngs, dtype=dtype)

    def __call__(self, x, cache):
        x = constrain_spatial(self.conv_in(x, cache), VIDEO_ACT_NAMES)
        for block in self.blocks:
            x = constrain_spatial(block(x, cache), VIDEO_ACT_NAMES)
        x = self.mid(x, cache)
        return self.conv_out(jax.nn.silu(per_frame(self.norm_out, x)), cache)


class VideoDecoder(nnx.Module):
    def __init__(self, cfg: VideoVAEConfig, *, rngs):
        dtype = layers.compute_dtype(cfg.dtype)
        chans, g, n = cfg.block_channels[::-1], cfg.norm_groups, len(cfg.block_channels)
        temporal_up = cfg.temporal_downsample[::-1]
        self.conv_in = CausalConv3d(cfg.latent_channels, chans[0], rngs=rngs, dtype=dtype)
        self.mid = MidBlock3D(chans[0], g, cfg.mid_attention, rngs=rngs, dtype=dtype)
        self.blocks = nnx.List(
            [
                Block3D(
                    chans[max(i - 1, 0)],
                    c,
                    cfg.layers_per_block + 1,
                    g,
                    Upsample3D(c, temporal_up[i], rngs=rngs, dtype=dtype) if i < n - 1 else None,
                    rngs=rngs,
                    dtype=dtype,
                )
                for i, c in enumerate(chans)
            ]
        )
        self.norm_out = group_norm(chans[-1], g, rngs=rngs, dtype=dtype)
        self.conv_out = CausalConv3d(chans[-1], cfg.in_channels, rngs=rngs, dtype=dtype)

    def __call__(self, z, cache, return_last_input: bool = False):
        x = constrain_spatial(self.mid(self.conv_in(z, cache), cache), VIDEO_ACT_NAMES)
        for block in self.blocks:
            x = constrain_spatial(block(x, cache), VIDEO_ACT_NAMES)
        last_input = jax.nn.silu(per_frame(self.norm_out, x))
        out = self.conv_out(last_input, cache)
        return (out, last_input) if return_last_input else out


# --------------------------------------------------------------------------- the VAE


class VideoVAE(nnx.Module):
    """Causal video KL autoencoder. `encode` -> (mean, logvar) [B, 1 + (T-1)/t, H/s, W/s, c]."""

    def __init__(self, config: VideoVAEConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.encoder = VideoEncoder(config, rngs=rngs)
        self.decoder = VideoDecoder(config, rngs=rngs)

    def check_video(self, x: jax.Array, start: bool = True) -> None:
        cfg = self.config
        if x.ndim != 5 or x.shape[-1] != cfg.in_channels:
            raise ValueError(
                f"video VAE expects videos [batch, frames, height, width, {cfg.in_channels}], got shape {tuple(x.shape)}"
            )
        frames, tf = x.shape[1], cfg.temporal_factor
        fits = (frames - 1) % tf == 0 if start else frames % tf == 0 and frames > 0
        if not fits:
            need = f"1 + {tf}k frames" if start else f"a positive multiple of {tf} frames after the first window"
            raise ValueError(
                f"video of shape {tuple(x.shape)}: {frames} frames do not fit the temporal compression {tf} (need {need})"
            )
        check_divisible(x.shape, "video", cfg.spatial_factor, {"height": 2, "width": 3})

    def encode(self, x: jax.Array, cache: CausalCache | None = None) -> tuple[jax.Array, jax.Array]:
        self.check_video(x, start=cache is None or cache.start)
        return split_moments(self.encoder(x, cache))

    def decode(self, z: jax.Array, cache: CausalCache | None = None, return_last_input: bool = False):
        if z.ndim != 5 or z.shape[-1] != self.config.latent_channels:
            raise ValueError(
                f"video VAE decodes latents [batch, frames, h, w, {self.config.latent_channels}], got shape {tuple(z.shape)}"
            )
        return self.decoder(z, cache, return_last_input=return_last_input)

    def __call__(self, x: jax.Array, rng: jax.Array | None = None):
        mean, logvar = self.encode(x)
        z = mean if rng is None else sample_posterior(mean, logvar, rng)
        return self.decode(z), mean, logvar

    def encode_images(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        """[B, H, W, C] images as one-frame videos -> (mean, logvar) [B, h, w, c]."""
        mean, logvar = self.encode(images[:, None])
        return mean[:, 0], logvar[:, 0]

    def to_model_latents(self, z: jax.Array) -> jax.Array:
        return (z - self.config.shift_factor) * self.config.scaling_factor

    def from_model_latents(self, z: jax.Array) -> jax.Array:
        return z / self.config.scaling_factor + self.config.shift_factor


# --------------------------------------------------------------------------- windowed passes


@functools.lru_cache(maxsize=16)
def _window_step(graphdef, method: str):
    """The jitted pass over one window (compiled once per window shape)."""

    @jax.jit
    def step(state, chunk, entries):
        cache = CausalCache(entries)
        out = getattr(nnx.merge(graphdef, state), method)(chunk, cache)
        out = out[0] if isinstance(out, tuple) else out  # encode: the posterior mean
        return out, cache.outgoing

    return step


def _windowed(vae: VideoVAE, method: str, x: jax.Array, first: int, window: int) -> jax.Array:
    """Run `vae.<method>` over x[:, :first], then windows of `window` frames, carrying caches."""
    graphdef, state = nnx.split(vae)
    step = _window_step(graphdef, method)
    starts = [0] + list(range(first, x.shape[1], window))
    ends = starts[1:] + [x.shape[1]]
    outputs, entries = [], None
    for lo, hi in zip(starts, ends):
        out, entries = step(state, x[:, lo:hi], entries)
        outputs.append(out)
    return jnp.concatenate(outputs, axis=1)


class FrameDecoder:
    """Decodes a clip one latent frame at a time, as the frames arrive (streaming generation):
    the first latent frame gives one pixel frame, every later one `temporal_factor`; together
    they equal `decode` of the whole clip (the causal convs' carried frames go from call to call
    in a CausalCache). Two compiles: the first frame's window and every later one's."""

    def __init__(self, vae: VideoVAE):
        graphdef, self.state = nnx.split(vae)
        self.step = _window_step(graphdef, "decode")
        self.entries = None

    def __call__(self, latent_frame: jax.Array) -> jax.Array:
        """[B, 1, h, w, c] latents (the VAE's own scale) -> [B, 1 or temporal_factor, H, W, C] pixels."""
        pixels, self.entries = self.step(self.state, latent_frame, self.entries)
        return pixels


def encode_in_chunks(vae: VideoVAE, video: jax.Array, latent_frames_per_window: int = 1) -> jax.Array:
    """Posterior means of `video`, encoded the first frame alone and then
    `latent_frames_per_window * temporal_factor` frames at a time (equal to `vae.encode`)."""
    vae.check_video(video)
    return _windowed(vae, "encode", video, 1, latent_frames_per_window * vae.config.temporal_factor)


def decode_in_chunks(vae: VideoVAE, latents: jax.Array, latent_frames_per_window: int = 1) -> jax.Array:
    """`vae.decode(latents)`, the first latent frame alone and then a window at a time."""
    return _windowed(vae, "decode", latents, 1, latent_frames_per_window)
