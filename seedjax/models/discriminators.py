"""PatchGAN discriminators on pixels: 2D for images, hybrid 2D + 3D for videos.

`PatchDiscriminator` is the pix2pix / taming-transformers N-layer design: 4x4 convs, the
first `num_layers` with stride 2, LeakyReLU(0.2), one logit per overlapping patch (a
70x70 receptive field with 3 layers). It uses GroupNorm where those use BatchNorm, so it
keeps no batch statistics and behaves the same however the batch is sharded.

The 3D variant takes [B, T, H, W, C] clips with (3, 4, 4) kernels; `HybridDiscriminator`
scores every frame with the 2D one and the clip with the 3D one (Seedance's hybrid
PatchGAN). Every discriminator returns a list of logit maps, so a GAN loss is the sum of
the per-map losses (`seedjax.distill.losses`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from seedjax.schema.models import patch_discriminator_config

CONV_INIT = nnx.initializers.normal(0.02)  # DCGAN / pix2pix initialisation


def _groups(channels: int, wanted: int) -> int:
    g = min(wanted, channels)
    while channels % g:
        g -= 1
    return g


def _conv(cin, cout, kernel, stride, *, use_bias, rngs):
    spatial = ("conv_spatial",) * len(kernel)
    return nnx.Conv(
        cin,
        cout,
        kernel,
        strides=stride,
        padding=tuple(((k - 1) // 2, (k - 1) // 2) for k in kernel),  # torch's padding=1 for 3 and 4
        use_bias=use_bias,
        kernel_init=nnx.with_partitioning(CONV_INIT, (*spatial, "conv_in", "conv_out")),
        bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), ("conv_out",)),
        rngs=rngs,
    )


class PatchDiscriminator(nnx.Module):
    """Logits [B, h, w, 1] for images [B, H, W, C] (`dims=2`) or [B, t, h, w, 1] for clips (`dims=3`)."""

    def __init__(self, in_channels: int, cfg=None, *, dims: int = 2, rngs: nnx.Rngs):
        cfg = cfg or patch_discriminator_config()
        if dims not in (2, 3):
            raise ValueError(f"PatchDiscriminator: dims must be 2 or 3, got {dims}")
        self.dims, self.in_channels = dims, in_channels

        def kernel_stride(layer: int, strided: bool):
            spatial_stride = 2 if strided else 1
            if dims == 2:
                return (4, 4), (spatial_stride, spatial_stride)
            t_stride = 2 if strided and layer < cfg.temporal_strides else 1
            return (3, 4, 4), (t_stride, spatial_stride, spatial_stride)

        widths = [cfg.channels * min(2**i, 8) for i in range(cfg.num_layers + 1)]
        k, s = kernel_stride(0, True)
        self.stem = _conv(in_channels, widths[0], k, s, use_bias=True, rngs=rngs)
        convs, norms = [], []
        for i in range(1, cfg.num_layers + 1):
            k, s = kernel_stride(i, strided=i < cfg.num_layers)
            convs.append(_conv(widths[i - 1], widths[i], k, s, use_bias=False, rngs=rngs))
            norms.append(
                nnx.GroupNorm(
                    widths[i],
                    num_groups=_groups(widths[i], cfg.norm_groups),
                    epsilon=1e-5,
                    scale_metadata={"out_sharding": ("norm",)},
                    bias_metadata={"out_sharding": ("norm",)},
                    rngs=rngs,
                )
            )
        self.convs, self.norms = nnx.List(convs), nnx.List(norms)
        k, _ = kernel_stride(cfg.num_layers + 1, False)
        self.head = _conv(widths[-1], 1, k, (1,) * dims, use_bias=True, rngs=rngs)

    def _norm(self, norm, x):
        if self.dims == 2:
            return norm(x)
        b, t = x.shape[:2]  # per-frame statistics, like the video VAE
        return norm(x.reshape(b * t, *x.shape[2:])).reshape(x.shape)

    def __call__(self, x: jax.Array) -> list[jax.Array]:
        if x.ndim != self.dims + 2 or x.shape[-1] != self.in_channels:
            layout = "[B, H, W, C]" if self.dims == 2 else "[B, T, H, W, C]"
            raise ValueError(f"discriminator expects {layout} with C={self.in_channels}, got shape {tuple(x.shape)}")
        h = jax.nn.leaky_relu(self.stem(x), 0.2)
        for conv, norm in zip(self.convs, self.norms):
            h = jax.nn.leaky_relu(self._norm(norm, conv(h)), 0.2)
        return [self.head(h).astype(jnp.float32)]


class HybridDiscriminator(nnx.Module):
    """Per-frame 2D PatchGAN + clip-level 3D PatchGAN for videos [B, T, H, W, C]."""

    def __init__(self, in_channels: int, cfg=None, *, rngs: nnx.Rngs):
        self.frames = PatchDiscriminator(in_channels, cfg, dims=2, rngs=rngs)
        self.clip = PatchDiscriminator(in_channels, cfg, dims=3, rngs=rngs)

    def __call__(self, video: jax.Array) -> list[jax.Array]:
        if video.ndim != 5:
            raise ValueError(f"hybrid discriminator expects videos [B, T, H, W, C], got shape {tuple(video.shape)}")
        b, t = video.shape[:2]
        return self.frames(video.reshape(b * t, *video.shape[2:])) + self.clip(video)


def make_discriminator(kind: str, in_channels: int, cfg, *, rngs: nnx.Rngs) -> nnx.Module:
    """'image' -> 2D PatchGAN; 'video' -> hybrid 2D/3D."""
    if kind == "image":
        return PatchDiscriminator(in_channels, cfg, dims=2, rngs=rngs)
    if kind == "video":
        return HybridDiscriminator(in_channels, cfg, rngs=rngs)
    raise ValueError(f"discriminator kind {kind!r} is not 'image' or 'video'")
