"""Image VAE: a convolutional KL autoencoder with the layout of diffusers' `AutoencoderKL`.

Encoder: conv_in -> one block per entry of `channel_mult` (ResNet blocks, then a stride-2
downsample on every block but the last) -> mid block (ResNet, attention, ResNet) ->
GroupNorm/SiLU/conv_out to (mean, logvar). The decoder mirrors it with nearest-neighbour
2x upsampling. The spatial downsampling factor is 2 ** (len(channel_mult) - 1), so f8, f16
and f32 are four, five and six blocks (`seedjax.schema.models.image_vae_config('f16c64')`).

Images are NHWC in [-1, 1]. The module matches diffusers numerically (same GroupNorm eps,
asymmetric downsample padding, single-head mid attention, quant convs, logvar clamp), which
is what lets `seedjax.interop.autoencoder_kl` import and export its weights.

Shared by the video VAE (`video_vae.py`): `group_norm`, `SpatialAttention`, `constrain_spatial`,
`check_divisible`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from seedjax.models import layers
from seedjax.parallel import sharding
from seedjax.schema.models import VAEConfig

CONV_NAMES_2D = ("conv_spatial", "conv_spatial", "conv_in", "conv_out")
# Logical names of an NHWC activation; `vae_height` maps to the `sequence` mesh axis by
# default, so a large image is split into horizontal bands across that axis.
IMAGE_ACT_NAMES = ("batch", "vae_height", "vae_width", None)
LOGVAR_RANGE = (-30.0, 20.0)  # diffusers / LDM clamp, keeps exp(logvar) finite
# PyTorch's default conv init, U(+-1/sqrt(fan_in)), as the diffusers VAEs are trained
# with. (A truncated normal costs a slow XLA compile per kernel shape on CPU.)
CONV_INIT = nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


# --------------------------------------------------------------------------- building blocks


def conv2d(cin: int, cout: int, kernel: int, *, rngs, dtype, stride: int = 1, padding="SAME") -> nnx.Conv:
    return nnx.Conv(
        cin,
        cout,
        (kernel, kernel),
        strides=stride,
        padding=padding,
        dtype=dtype,
        kernel_init=nnx.with_partitioning(CONV_INIT, CONV_NAMES_2D),
        bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), ("conv_out",)),
        rngs=rngs,
    )


def group_norm(channels: int, groups: int, *, rngs, dtype) -> nnx.GroupNorm:
    # Two-pass variance (as torch computes it): the fast E[x^2]-E[x]^2 form loses
    # precision on large activations and breaks 1e-4 parity with diffusers.
    return nnx.GroupNorm(
        channels,
        num_groups=groups,
        epsilon=1e-6,
        use_fast_variance=False,
        dtype=dtype,
        scale_metadata={"out_sharding": ("norm",)},
        bias_metadata={"out_sharding": ("norm",)},
        rngs=rngs,
    )


def constrain_spatial(x: jax.Array, names) -> jax.Array:
    """`sharding.constrain`, but mesh axes that do not divide a dimension are dropped.

    Deep VAE levels are small (a 4x4 latent on an 8-way `sequence` axis); those are
    replicated along that axis instead of failing.
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty:
        return x
    spec = sharding.divisible_spec(sharding.logical_to_spec(names, mesh=mesh), x.shape, mesh)
    return jax.lax.with_sharding_constraint(x, spec)


class ResnetBlock2D(nnx.Module):
    def __init__(self, cin: int, cout: int, groups: int, *, rngs, dtype):
        self.norm1 = group_norm(cin, groups, rngs=rngs, dtype=dtype)
        self.conv1 = conv2d(cin, cout, 3, rngs=rngs, dtype=dtype)
        self.norm2 = group_norm(cout, groups, rngs=rngs, dtype=dtype)
        self.conv2 = conv2d(cout, cout, 3, rngs=rngs, dtype=dtype)
        self.shortcut = conv2d(cin, cout, 1, rngs=rngs, dtype=dtype) if cin != cout else None

    def __call__(self, x):
        h = self.conv1(jax.nn.silu(self.norm1(x)))
        h = self.conv2(jax.nn.silu(self.norm2(h)))
        return (self.shortcut(x) if self.shortcut is not None else x) + h


class SpatialAttention(nnx.Module):
    """Single-head self-attention over all positions of a [N, H, W, C] map, plus residual."""

    def __init__(self, channels: int, groups: int, *, rngs, dtype):
        self.norm = group_norm(channels, groups, rngs=rngs, dtype=dtype)
        proj = lambda: layers.Linear(channels, channels, rngs=rngs, names=("conv_in", "conv_out"), dtype=dtype)
        self.query, self.key, self.value, self.out = proj(), proj(), proj(), proj()

    def __call__(self, x):
        n, h, w, c = x.shape
        t = self.norm(x).reshape(n, h * w, 1, c)
        y = jax.nn.dot_product_attention(self.query(t), self.key(t), self.value(t))
        return x + self.out(y.reshape(n, h, w, c))


class MidBlock2D(nnx.Module):
    def __init__(self, channels: int, groups: int, attention: bool, *, rngs, dtype):
        self.resnet1 = ResnetBlock2D(channels, channels, groups, rngs=rngs, dtype=dtype)
        self.attention = SpatialAttention(channels, groups, rngs=rngs, dtype=dtype) if attention else None
        self.resnet2 = ResnetBlock2D(channels, channels, groups, rngs=rngs, dtype=dtype)

    def __call__(self, x):
        x = self.resnet1(x)
        if self.attention is not None:
            x = self.attention(x)
        return self.resnet2(x)


class Downsample2D(nnx.Module):
    """Stride-2 3x3 conv after padding one zero row/column at the bottom/right only."""

    def __init__(self, channels: int, *, rngs, dtype):
        self.conv = conv2d(channels, channels, 3, stride=2, padding=((0, 1), (0, 1)), rngs=rngs, dtype=dtype)

    def __call__(self, x):
        return self.conv(x)


class Upsample2D(nnx.Module):
    """Nearest-neighbour 2x, then a 3x3 conv."""

    def __init__(self, channels: int, *, rngs, dtype):
        self.conv = conv2d(channels, channels, 3, rngs=rngs, dtype=dtype)

    def __call__(self, x):
        return self.conv(jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2))


class EncoderBlock(nnx.Module):
    def __init__(self, cin: int, cout: int, num_resnets: int, groups: int, downsample: bool, *, rngs, dtype):
        self.resnets = nnx.List(
            [ResnetBlock2D(cin if i == 0 else cout, cout, groups, rngs=rngs, dtype=dtype) for i in range(num_resnets)]
        )
        self.downsample = Downsample2D(cout, rngs=rngs, dtype=dtype) if downsample else None

    def __call__(self, x):
        for resnet in self.resnets:
            x = resnet(x)
        return self.downsample(x) if self.downsample is not None else x


class DecoderBlock(nnx.Module):
    def __init__(self, cin: int, cout: int, num_resnets: int, groups: int, upsample: bool, *, rngs, dtype):
        self.resnets = nnx.List(
            [ResnetBlock2D(cin if i == 0 else cout, cout, groups, rngs=rngs, dtype=dtype) for i in range(num_resnets)]
        )
        self.upsample = Upsample2D(cout, rngs=rngs, dtype=dtype) if upsample else None

    def __call__(self, x):
        for resnet in self.resnets:
            x = resnet(x)
        return self.upsample(x) if self.upsample is not None else x


# --------------------------------------------------------------------------- encoder / decoder


class Encoder(nnx.Module):
    """[N, H, W, in_channels] -> [N, H/f, W/f, 2 * latent_channels] (mean and logvar, unclamped)."""

    def __init__(self, cfg: VAEConfig, *, rngs):
        dtype = layers.compute_dtype(cfg.dtype)
        chans, g = cfg.block_channels, cfg.norm_groups
        self.conv_in = conv2d(cfg.in_channels, chans[0], 3, rngs=rngs, dtype=dtype)
        self.blocks = nnx.List(
            [
                EncoderBlock(
                    chans[max(i - 1, 0)], c, cfg.layers_per_block, g, i < len(chans) - 1, rngs=rngs, dtype=dtype
                )
                for i, c in enumerate(chans)
            ]
        )
        self.mid = MidBlock2D(chans[-1], g, cfg.mid_attention, rngs=rngs, dtype=dtype)
        self.norm_out = group_norm(chans[-1], g, rngs=rngs, dtype=dtype)
        self.conv_out = conv2d(chans[-1], 2 * cfg.latent_channels, 3, rngs=rngs, dtype=dtype)

    def __call__(self, x):
        x = constrain_spatial(self.conv_in(x), IMAGE_ACT_NAMES)
        for block in self.blocks:
            x = constrain_spatial(block(x), IMAGE_ACT_NAMES)
        x = self.mid(x)
        return self.conv_out(jax.nn.silu(self.norm_out(x)))


class Decoder(nnx.Module):
    """[N, h, w, latent_channels] -> [N, h*f, w*f, in_channels]."""

    def __init__(self, cfg: VAEConfig, *, rngs):
        dtype = layers.compute_dtype(cfg.dtype)
        chans, g = cfg.block_channels[::-1], cfg.norm_groups
        self.conv_in = conv2d(cfg.latent_channels, chans[0], 3, rngs=rngs, dtype=dtype)
        self.mid = MidBlock2D(chans[0], g, cfg.mid_attention, rngs=rngs, dtype=dtype)
        self.blocks = nnx.List(
            [
                DecoderBlock(
                    chans[max(i - 1, 0)], c, cfg.layers_per_block + 1, g, i < len(chans) - 1, rngs=rngs, dtype=dtype
                )
                for i, c in enumerate(chans)
            ]
        )
        self.norm_out = group_norm(chans[-1], g, rngs=rngs, dtype=dtype)
        self.conv_out = conv2d(chans[-1], cfg.in_channels, 3, rngs=rngs, dtype=dtype)

    def __call__(self, z, return_last_input: bool = False):
        """With `return_last_input`, also the input of `conv_out` (for the adaptive GAN weight)."""
        x = constrain_spatial(self.mid(self.conv_in(z)), IMAGE_ACT_NAMES)
        for block in self.blocks:
            x = constrain_spatial(block(x), IMAGE_ACT_NAMES)
        last_input = jax.nn.silu(self.norm_out(x))
        out = self.conv_out(last_input)
        return (out, last_input) if return_last_input else out


# --------------------------------------------------------------------------- the VAE


def check_divisible(shape, name: str, factor: int, axes: dict[str, int]) -> None:
    for axis_name, axis in axes.items():
        if shape[axis] < factor or shape[axis] % factor:
            raise ValueError(
                f"{name} of shape {tuple(shape)}: {axis_name} {shape[axis]} must be a positive multiple of the "
                f"downsampling factor {factor}"
            )


def split_moments(moments: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Encoder output [..., 2c] -> (mean, logvar clamped to LOGVAR_RANGE), both float32."""
    mean, logvar = jnp.split(moments.astype(jnp.float32), 2, axis=-1)
    return mean, jnp.clip(logvar, *LOGVAR_RANGE)


def sample_posterior(mean: jax.Array, logvar: jax.Array, rng: jax.Array) -> jax.Array:
    return mean + jnp.exp(0.5 * logvar) * jax.random.normal(rng, mean.shape, mean.dtype)


def kl_divergence(mean: jax.Array, logvar: jax.Array) -> jax.Array:
    """KL(N(mean, exp(logvar)) || N(0, 1)) summed over all but the leading (batch) axis."""
    kl = 0.5 * (jnp.square(mean) + jnp.exp(logvar) - 1.0 - logvar)
    return jnp.sum(kl, axis=tuple(range(1, kl.ndim)))


class ImageVAE(nnx.Module):
    """The 2D KL autoencoder. `encode` -> (mean, logvar); `decode(z)` -> image in ~[-1, 1]."""

    def __init__(self, config: VAEConfig, *, rngs: nnx.Rngs):
        self.config = config
        dtype = layers.compute_dtype(config.dtype)
        c = config.latent_channels
        self.encoder = Encoder(config, rngs=rngs)
        self.decoder = Decoder(config, rngs=rngs)
        self.quant_conv = conv2d(2 * c, 2 * c, 1, rngs=rngs, dtype=dtype) if config.use_quant_conv else None
        self.post_quant_conv = conv2d(c, c, 1, rngs=rngs, dtype=dtype) if config.use_post_quant_conv else None

    def check_image(self, x: jax.Array) -> None:
        cfg = self.config
        if x.ndim != 4 or x.shape[-1] != cfg.in_channels:
            raise ValueError(
                f"image VAE expects images [batch, height, width, {cfg.in_channels}], got shape {tuple(x.shape)}"
            )
        check_divisible(x.shape, "image", cfg.downsample_factor, {"height": 1, "width": 2})

    def encode(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        self.check_image(x)
        moments = self.encoder(x)
        if self.quant_conv is not None:
            moments = self.quant_conv(moments)
        return split_moments(moments)

    def decode(self, z: jax.Array, return_last_input: bool = False):
        if z.ndim != 4 or z.shape[-1] != self.config.latent_channels:
            raise ValueError(
                f"image VAE decodes latents [batch, h, w, {self.config.latent_channels}], got shape {tuple(z.shape)}"
            )
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z, return_last_input=return_last_input)

    def __call__(self, x: jax.Array, rng: jax.Array | None = None):
        """Reconstruct `x` from a posterior sample (`rng`) or from the mean (`rng=None`)."""
        mean, logvar = self.encode(x)
        z = mean if rng is None else sample_posterior(mean, logvar, rng)
        return self.decode(z), mean, logvar

    # The diffusion model works on normalised latents.
    def to_model_latents(self, z: jax.Array) -> jax.Array:
        return (z - self.config.shift_factor) * self.config.scaling_factor

    def from_model_latents(self, z: jax.Array) -> jax.Array:
        return z / self.config.scaling_factor + self.config.shift_factor
