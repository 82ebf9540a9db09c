"""Symmetric INT8 quantization for attention operands.

The block-sparse attention kernel multiplies INT8 tiles and rescales the INT32 result,
so each operand is stored as INT8 values plus float32 scales:

- Q and K: one scale per (batch, head, block of `block` tokens), i.e. per kernel tile.
  The scale is stored once per token (repeated inside a block) so a kernel can load the
  scales of a tile with the same index arithmetic as the tile itself.
- V: one scale per (batch, head, channel) over all tokens, as in SageAttention: the
  channels of V differ much more in magnitude than its tokens do.
- P (the softmax numerator exp(s - m), always in [0, 1]) uses the fixed scale 1/127 and
  is quantized inside the kernel by `quantize_probabilities`.

Keys are "smoothed" before quantization by subtracting their mean over tokens. That
changes every logit of a query row by the same constant q . mean(k), which softmax
ignores, and removes the channel-wise offset that otherwise dominates the per-block
range of K (SageAttention, arXiv 2410.02367).

Arrays here use the kernel layout [batch, heads, tokens, head_dim].
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

INT8_MAX = 127.0


def quantize_token_blocks(x: jax.Array, block: int) -> tuple[jax.Array, jax.Array]:
    """Per-block symmetric INT8: x [B, H, L, D] with L % block == 0.

    Returns (values int8 [B, H, L, D], scale float32 [B, H, L]) with x ~= values * scale;
    all tokens of one block share one scale (max |x| over the block / 127).
    """
    b, h, length, d = x.shape
    if length % block:
        raise ValueError(f"quantize_token_blocks: length {length} is not a multiple of block {block}")
    xb = x.astype(jnp.float32).reshape(b, h, length // block, block, d)
    scale = jnp.max(jnp.abs(xb), axis=(-2, -1), keepdims=True) / INT8_MAX
    scale = jnp.where(scale > 0, scale, 1.0)
    values = jnp.clip(jnp.round(xb / scale), -INT8_MAX, INT8_MAX).astype(jnp.int8)
    scale = jnp.broadcast_to(scale[..., 0], (b, h, length // block, block))
    return values.reshape(x.shape), scale.reshape(b, h, length)


def quantize_channels(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-channel symmetric INT8 over all tokens: x [B, H, L, D] -> (int8 [B, H, L, D],
    scale float32 [B, H, 1, D])."""
    xf = x.astype(jnp.float32)
    scale = jnp.max(jnp.abs(xf), axis=-2, keepdims=True) / INT8_MAX
    scale = jnp.where(scale > 0, scale, 1.0)
    values = jnp.clip(jnp.round(xf / scale), -INT8_MAX, INT8_MAX).astype(jnp.int8)
    return values, scale


def smooth_keys(k: jax.Array, num_valid: int) -> jax.Array:
    """Subtract the mean over the first `num_valid` tokens (the rest is padding) from k
    [B, H, L, D]. Softmax over keys is unchanged; INT8 range is used better."""
    mean = jnp.mean(k[:, :, :num_valid].astype(jnp.float32), axis=2, keepdims=True)
    return (k.astype(jnp.float32) - mean).astype(k.dtype)


def quantize_probabilities(p: jax.Array) -> jax.Array:
    """p in [0, 1] -> int8 in [0, 127] with scale 1/127 (round half up; p >= 0, so adding
    0.5 and truncating rounds, which every Pallas backend can lower)."""
    return (p * INT8_MAX + 0.5).astype(jnp.int8)


def fake_quantize_token_blocks(x: jax.Array, block: int) -> jax.Array:
    """Quantize-dequantize with `quantize_token_blocks` (for XLA emulation of the kernel)."""
    values, scale = quantize_token_blocks(x, block)
    return values.astype(jnp.float32) * scale[..., None]


def fake_quantize_channels(x: jax.Array) -> jax.Array:
    values, scale = quantize_channels(x)
    return values.astype(jnp.float32) * scale

