"""REPA (Seedream 3.0's auxiliary loss): align an intermediate DiT feature with a frozen encoder.

loss = mean over image tokens of 1 - cos(MLP(h_l), f), where h_l are the image-token
features of DiT block `config.model.repa_layer` and f the frozen encoder's feature map
pooled to the token grid. The paper uses a large pretrained vision encoder; with the
bundled data the frozen encoder is the convolutional trunk of the digit CNN
(`seedjax.train.digit_encoder`) trained with the classifier recipe but a *different seed*
(`config.repa.encoder_seed`), so that the evaluation classifier stays independent of what the
DiT was pulled toward.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from seedjax.train import digit_encoder
from seedjax.models.layers import MLP


def _encoder(config) -> digit_encoder.DigitCNN:
    if config.repa.encoder != "classifier":
        raise ValueError(f"config.repa.encoder: unknown encoder {config.repa.encoder!r} (classifier)")
    return _load_encoder(config.data.image_size, config.repa.encoder_seed, config.repa.encoder_steps)


@functools.lru_cache(maxsize=None)
def _load_encoder(image_size: int, seed: int, steps: int) -> digit_encoder.DigitCNN:
    # First reached inside the training step's trace. Trained there (or read from the cache) as
    # concrete arrays: its own jitted fit, with its own compiler options, cannot nest in a trace.
    with jax.ensure_compile_time_eval():
        return digit_encoder.load(image_size, seed=seed, steps=steps)  # trained once, then from the cache


def trunk_depth(config) -> int:
    """How many of the encoder's convolutions run before its map is no larger than the token grid."""
    settings = digit_encoder.DigitCNNSettings()
    size, grid = config.data.image_size, config.data.image_size // config.input.patch_size
    for depth in range(len(settings.channels)):
        if size <= grid:
            return max(depth, 1)
        size //= settings.first_stride if depth == 0 else 2
    return len(settings.channels)


def encoder_channels(config) -> int:
    return digit_encoder.DigitCNNSettings().channels[trunk_depth(config) - 1]


def frozen_features(config, images: jax.Array, grid: tuple[int, int]) -> jax.Array:
    """[B, H, W, C] images in [-1, 1] -> frozen features [B, grid_h * grid_w, channels]."""
    encoder = _encoder(config)
    x = digit_encoder.to_intensity(images, encoder.settings.image_size)
    for conv in encoder.model.convs[: trunk_depth(config)]:
        x = jax.nn.relu(conv(x))
    b, h, w, c = x.shape
    if h % grid[0] or w % grid[1]:
        x = jax.image.resize(x, (b, grid[0], grid[1], c), "linear")
    else:  # average-pool down to the token grid
        x = x.reshape(b, grid[0], h // grid[0], grid[1], w // grid[1], c).mean(axis=(2, 4))
    return jax.lax.stop_gradient(x.reshape(b, grid[0] * grid[1], c))


class RepaHead(nnx.Module):
    """The trainable MLP projector from DiT features to the frozen encoder's space."""

    def __init__(self, config, *, rngs: nnx.Rngs):
        if config.model.repa_layer < 0:
            raise ValueError("config.repa.weight > 0 needs config.model.repa_layer >= 0 (the block to align)")
        hidden = config.model.num_heads * config.model.head_dim
        self.proj = MLP(hidden, config.repa.projector_dim, encoder_channels(config), rngs=rngs,
                        activation_name="silu", names=("embed", "mlp", None))

    def loss(self, features: jax.Array, batch: dict, grid: tuple[int, int], config) -> jax.Array:
        if "image" not in batch:
            raise ValueError("REPA needs pixel images in the batch (key 'image') for the frozen encoder")
        target = frozen_features(config, batch["image"], grid)
        pred = self.proj(features.astype(jnp.float32))
        cos = jnp.sum(_unit(pred) * _unit(target), axis=-1)
        return jnp.mean(1.0 - cos)


def _unit(x: jax.Array) -> jax.Array:
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-6)
