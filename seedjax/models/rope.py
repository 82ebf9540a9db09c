"""Multi-axis rotary position embeddings (Flux layout) and Seedream 3.0 cross-modal ids.

Every token has a position id with one coordinate per axis (3 axes for images: an unused
leading axis, row, column). Each axis owns `axes_dims[i]` channels of a head; within an
axis, channel pairs (2j, 2j+1) are rotated together by angle pos * theta^(-2j / dim)
(Flux's `repeat_interleave_real=True` layout, theta = 10000).
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def rope_frequencies(
    ids: jax.Array, axes_dims: Sequence[int], theta: float = 10000.0
) -> tuple[jax.Array, jax.Array]:
    """Position ids [..., L, n_axes] -> (cos, sin), each float32 [..., L, sum(axes_dims) // 2].

    One angle per rotated channel pair (half the head dim); `apply_rope` pairs them up.
    """
    if ids.shape[-1] != len(axes_dims):
        raise ValueError(f"position ids have {ids.shape[-1]} axes (shape {ids.shape}) but axes_dims is {tuple(axes_dims)}")
    angles = []
    for axis, dim in enumerate(axes_dims):
        if dim % 2:
            raise ValueError(f"every entry of axes_dims must be even, got {tuple(axes_dims)}")
        # Frequencies in float64 on the host, as Flux computes them; only the product is float32.
        inv_freq = 1.0 / theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
        angles.append(ids[..., axis, None].astype(jnp.float32) * jnp.asarray(inv_freq, jnp.float32))
    angles = jnp.concatenate(angles, axis=-1)
    return jnp.cos(angles), jnp.sin(angles)


@jax.named_scope("rope")
def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate x [B, L, H, D] by (cos, sin) [L, D/2] or [B, L, D/2]; float32 math, x's dtype out."""
    if cos.shape[-1] * 2 != x.shape[-1] or cos.shape[-2] != x.shape[1]:
        raise ValueError(f"rope tables of shape {cos.shape} do not fit queries/keys of shape {x.shape}")
    if cos.ndim == 2:
        cos, sin = cos[None], sin[None]
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]  # broadcast over heads
    pairs = x.astype(jnp.float32).reshape(*x.shape[:-1], -1, 2)
    real, imag = pairs[..., 0], pairs[..., 1]
    rotated = jnp.stack([real * cos - imag * sin, real * sin + imag * cos], axis=-1)
    return rotated.reshape(x.shape).astype(x.dtype)


def image_position_ids(grid_h: int, grid_w: int) -> np.ndarray:
    """[grid_h * grid_w, 3] float32 ids (0, row, col) in row-major token order (Flux's img_ids)."""
    rows, cols = np.meshgrid(np.arange(grid_h), np.arange(grid_w), indexing="ij")
    ids = np.stack([np.zeros_like(rows), rows, cols], axis=-1)
    return ids.reshape(-1, 3).astype(np.float32)


def seedream_position_ids(grid_h: int, grid_w: int, text_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Seedream 3.0 cross-modality RoPE ids: (img_ids [grid_h*grid_w, 3], txt_ids [text_len, 3]).

    Image tokens sit on their 2D grid, ids (0, row, col). Text tokens are a [1, text_len]
    grid whose column ids continue after the image's last column: (0, 0, grid_w + j).
    """
    if grid_h <= 0 or grid_w <= 0 or text_len < 0:
        raise ValueError(f"seedream_position_ids: bad grid ({grid_h}, {grid_w}) or text_len {text_len}")
    txt_ids = np.zeros((text_len, 3), np.float32)
    txt_ids[:, 2] = grid_w + np.arange(text_len)
    return image_position_ids(grid_h, grid_w), txt_ids
