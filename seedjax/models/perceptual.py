"""LPIPS-style perceptual distance on VGG16 features, with weights from a local file only.

    distance(x, y) = sum over taps l of  mean_{h,w} sum_c w_lc (f_l(x) - f_l(y))^2

where f_l are the channel-normalised activations at relu1_2, relu2_2, relu3_3, relu4_3 and
relu5_3 (Zhang et al. 2018). Weights never come from the network:

- `weights`: a torchvision VGG16 state dict (`features.<i>.weight/bias`, any prefix) as
  .safetensors, or .pth/.pt (read with torch when it is installed).
- `lpips_weights` (optional): the LPIPS linear heads (`lin<l>.model.1.weight`, [1, C, 1, 1]);
  without them every channel weighs 1 (the "baseline" variant of the LPIPS paper).
- Neither given: the documented fallback, a VGG16 with fixed random weights (seed
  `fallback_seed`, He-uniform). Random deep features still measure multi-scale structure
  differences that L1 does not, but far less well than trained ones; the stage logs a
  warning saying so.

The network's weights are `Frozen` variables: no optimizer or gradient ever updates them.
`depth` keeps only the first taps (cheaper; 3 stops at relu3_3).
"""

from __future__ import annotations

import logging
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from seedjax.models.frozen import freeze

log = logging.getLogger(__name__)

VGG16_STAGES = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))  # (width, convs) between poolings
# LPIPS input scaling for images in [-1, 1].
_SHIFT = np.array([-0.030, -0.088, -0.188], np.float32)
_SCALE = np.array([0.458, 0.448, 0.450], np.float32)


def _torchvision_indices() -> list[int]:
    """Index in torchvision's `vgg16().features` of every conv, in order."""
    out, i = [], 0
    for _, convs in VGG16_STAGES:
        for _ in range(convs):
            out.append(i)
            i += 2  # conv, relu
        i += 1  # max pool
    return out


def _read_state_dict(path: str) -> dict[str, np.ndarray]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"perceptual weights file {path!r} does not exist")
    if path.endswith(".safetensors"):
        from safetensors.numpy import load_file

        return load_file(path)
    if path.endswith((".pth", ".pt", ".bin")):
        try:
            import torch
        except ImportError as e:
            raise ImportError(f"reading {path!r} needs torch; convert it to .safetensors instead") from e
        return {k: v.numpy() for k, v in torch.load(path, map_location="cpu", weights_only=True).items()}
    raise ValueError(f"perceptual weights file {path!r}: expected .safetensors, .pth or .pt")


class VGGFeatures(nnx.Module):
    def __init__(self, depth: int, *, rngs: nnx.Rngs):
        if not 1 <= depth <= len(VGG16_STAGES):
            raise ValueError(f"perceptual depth must be 1..{len(VGG16_STAGES)}, got {depth}")
        convs, cin = [], 3
        init = nnx.initializers.variance_scaling(2.0, "fan_in", "uniform")  # He, for ReLU
        for width, n in VGG16_STAGES[:depth]:
            for _ in range(n):
                convs.append(nnx.Conv(cin, width, (3, 3), padding="SAME", kernel_init=init, rngs=rngs))
                cin = width
        self.depth = depth
        self.convs = nnx.List(convs)

    def __call__(self, x: jax.Array) -> list[jax.Array]:
        taps, i = [], 0
        for stage, (_, n) in enumerate(VGG16_STAGES[: self.depth]):
            if stage:
                x = nnx.max_pool(x, (2, 2), strides=(2, 2))
            for _ in range(n):
                x = jax.nn.relu(self.convs[i](x))
                i += 1
            taps.append(x)
        return taps

    def load_torchvision(self, state_dict: dict[str, np.ndarray], path: str) -> None:
        by_index = {}
        for key, value in state_dict.items():
            m = re.search(r"(?:^|\.)features\.(\d+)\.(weight|bias)$", key)
            if m:
                by_index[(int(m.group(1)), m.group(2))] = np.asarray(value, np.float32)
        for conv, index in zip(self.convs, _torchvision_indices()):
            for part in ("weight", "bias"):
                if (index, part) not in by_index:
                    raise KeyError(f"{path}: no 'features.{index}.{part}' (torchvision VGG16 layout expected)")
            kernel = by_index[(index, "weight")].transpose(2, 3, 1, 0)
            if kernel.shape != conv.kernel[...].shape:
                raise ValueError(f"{path}: features.{index}.weight has shape {by_index[(index, 'weight')].shape}, "
                                 f"expected a VGG16 conv of {conv.kernel[...].shape[::-1]}")
            conv.kernel[...] = jnp.asarray(kernel)
            conv.bias[...] = jnp.asarray(by_index[(index, "bias")])


class PerceptualDistance(nnx.Module):
    """LPIPS-style distance per example, [B] for images [B, H, W, C] in [-1, 1] (C = 1 or 3)."""

    def __init__(self, cfg, *, rngs: nnx.Rngs | None = None):
        rngs = rngs or nnx.Rngs(jax.random.key(cfg.fallback_seed, impl="rbg"))
        self.features = VGGFeatures(cfg.depth, rngs=rngs)
        widths = [w for w, _ in VGG16_STAGES[: cfg.depth]]
        heads = [np.ones((w,), np.float32) for w in widths]
        self.pretrained = bool(cfg.weights)
        if cfg.weights:
            self.features.load_torchvision(_read_state_dict(cfg.weights), cfg.weights)
        if cfg.lpips_weights:
            sd = _read_state_dict(cfg.lpips_weights)
            for l, w in enumerate(widths):
                key = f"lin{l}.model.1.weight"
                if key not in sd or np.size(sd[key]) != w:
                    raise KeyError(f"{cfg.lpips_weights}: need {key!r} with {w} values (LPIPS linear head)")
                heads[l] = np.asarray(sd[key], np.float32).reshape(w)
        self.heads = nnx.List([nnx.Param(jnp.asarray(h)) for h in heads])
        self.features = freeze(self.features)
        self.heads = freeze(self.heads)

    def __call__(self, x: jax.Array, y: jax.Array) -> jax.Array:
        if x.shape != y.shape or x.ndim != 4 or x.shape[-1] not in (1, 3):
            raise ValueError(f"perceptual distance expects two [B, H, W, 1 or 3] images, got {x.shape} and {y.shape}")
        both = jnp.concatenate([x, y]).astype(jnp.float32)
        if both.shape[-1] == 1:
            both = jnp.repeat(both, 3, axis=-1)
        both = (both - _SHIFT) / _SCALE
        total = jnp.zeros((x.shape[0],), jnp.float32)
        for feats, head in zip(self.features(both), self.heads):
            feats = feats / (jnp.sqrt(jnp.sum(jnp.square(feats), axis=-1, keepdims=True)) + 1e-10)
            fx, fy = jnp.split(feats, 2)
            total = total + jnp.mean(jnp.sum(head[...] * jnp.square(fx - fy), axis=-1), axis=(1, 2))
        return total


def make_perceptual(cfg) -> PerceptualDistance:
    if not cfg.weights:
        log.warning(
            "perceptual loss: no VGG16 weights given (config.vae.perceptual.weights=''); using the documented "
            "fallback, a VGG16 with fixed random weights (seed %d). It is a weak perceptual signal; give a local "
            "torchvision VGG16 state dict (.safetensors/.pth) and optionally LPIPS heads for the real loss.",
            cfg.fallback_seed,
        )
    return PerceptualDistance(cfg)
