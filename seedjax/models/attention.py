"""Attention dispatch: one entry point, pluggable backends.

Models call `attention(q, k, v, key_mask=..., backend=cfg.attention_backend,
layer_index=i, layout=TokenLayout(...), **extra)` and never know which kernel runs.
A backend is a function registered under a name:

    @register_backend('paro')
    def paro_attention(q, k, v, *, key_mask, layer_index, layout, plans, timestep_bucket):
        ...

Contract for a backend: q [B, Lq, H, D], k and v [B, Lk, H, D] -> [B, Lq, H, D] in q's
dtype, softmax scale 1/sqrt(D), `key_mask` [B, Lk] bool (True = attend) or None. It
receives the keyword arguments `key_mask`, `layer_index` (int or None: which attention
layer of the model is calling, to look up per-layer plans) and `layout` (TokenLayout or
None: where text and image tokens sit), plus whatever the caller adds in `**backend_kwargs`.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax

from seedjax.kernels import paro

AttentionBackend = Callable[..., jax.Array]

_BACKENDS: dict[str, AttentionBackend] = {}


@dataclasses.dataclass(frozen=True)
class TokenLayout:
    """Where tokens sit in a joint sequence: `num_text` text tokens first, then the visual
    tokens in row-major order on a `grid_hw` grid (None when the caller gave raw ids), or for
    a video on a (frames, rows, columns) `grid`."""

    num_text: int
    grid_hw: tuple[int, int] | None = None
    grid: tuple[int, int, int] | None = None

    @property
    def visual_grid(self) -> tuple[int, ...] | None:
        """The video grid if there is one, else the image grid."""
        return self.grid or self.grid_hw


def register_backend(name: str, fn: AttentionBackend | None = None, *, overwrite: bool = False):
    """Register `fn` as attention backend `name`; usable as a decorator."""

    def add(f: AttentionBackend) -> AttentionBackend:
        if name in _BACKENDS and not overwrite:
            raise ValueError(f"attention backend {name!r} is already registered")
        _BACKENDS[name] = f
        return f

    return add(fn) if fn is not None else add


def available_backends() -> list[str]:
    return sorted(_BACKENDS)


def get_backend(name: str) -> AttentionBackend:
    if name not in _BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; registered: {available_backends()}")
    return _BACKENDS[name]


def attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    key_mask: jax.Array | None = None,
    backend: str = "dense",
    layer_index: int | None = None,
    layout: TokenLayout | None = None,
    **backend_kwargs,
) -> jax.Array:
    """Multi-head attention q,k,v [B, L, H, D] -> [B, Lq, H, D] through the named backend."""
    if q.ndim != 4 or k.shape != v.shape or k.ndim != 4 or q.shape[0] != k.shape[0] or q.shape[2:] != k.shape[2:]:
        raise ValueError(f"attention expects q [B, Lq, H, D] and k, v [B, Lk, H, D]; got {q.shape}, {k.shape}, {v.shape}")
    if key_mask is not None and key_mask.shape != k.shape[:2]:
        raise ValueError(f"key_mask must have shape {k.shape[:2]} (batch, keys), got {key_mask.shape}")
    fn = get_backend(backend)
    return fn(q, k, v, key_mask=key_mask, layer_index=layer_index, layout=layout, **backend_kwargs)


@register_backend("dense")
def dense_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    key_mask: jax.Array | None = None,
    layer_index: int | None = None,
    layout: TokenLayout | None = None,
    implementation: str | None = None,
) -> jax.Array:
    """Full attention via `jax.nn.dot_product_attention` (float32 logits and softmax).

    `implementation` is passed through to JAX (None = XLA, 'cudnn' = fused cuDNN kernel
    on NVIDIA GPUs). `layer_index` and `layout` are not needed by dense attention.
    """
    del layer_index, layout
    mask = None if key_mask is None else key_mask.astype(bool)[:, None, None, :]
    return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=implementation)


@register_backend("paro")
def paro_attention(q: jax.Array, k: jax.Array, v: jax.Array, **kwargs) -> jax.Array:
    """PAROAttention: block-sparse attention over per-head reordered image tokens
    (`seedjax.kernels.paro.paro_backend`). Backend kwargs: `plan` (ParoPlan or plan file
    path), `timestep` ([B] flow times); optional `impl`, `int8_qk`, `int8_pv`."""
    return paro.paro_backend(q, k, v, **kwargs)


@register_backend("paro_capture")
def paro_capture_attention(q: jax.Array, k: jax.Array, v: jax.Array, **kwargs) -> jax.Array:
    """Dense attention that records PARO calibration statistics
    (`seedjax.kernels.paro.capture_backend`; kwargs `calibration`, `timestep`)."""
    return paro.capture_backend(q, k, v, **kwargs)
