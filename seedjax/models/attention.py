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
import jax.numpy as jnp

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
    with jax.named_scope("attention"):  # labels the ops in profiles (benchmarks/profile_step.py)
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
    """Full attention (float32 logits and softmax).

    On CPUs, with `implementation` None, `heads_first_attention`; elsewhere (or with an
    `implementation`: 'xla', or 'cudnn' for the fused cuDNN kernel on NVIDIA GPUs)
    `jax.nn.dot_product_attention`. `layer_index` and `layout` are not needed here.
    """
    del layer_index, layout
    if implementation is None and jax.default_backend() == "cpu":
        return heads_first_attention(q, k, v, key_mask)
    mask = None if key_mask is None else key_mask.astype(bool)[:, None, None, :]
    return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=implementation)


# --------------------------------------------------------------------------- CPU attention


MASKED_LOGIT = -0.7 * float(jnp.finfo(jnp.float32).max)  # jax.nn.dot_product_attention's


def _heads_first_forward(q, k, v, key_mask):
    qh, kh, vh = (jnp.swapaxes(x, 1, 2) for x in (q, k, v))  # [B, H, L, D]
    # The scale goes on q (and on dq, dk in the backward pass), not on the [B, H, L, L] logits: XLA
    # materialised it there as a full [B, H, L, L] array read by every pass.
    scaled_q = qh * jnp.asarray(q.shape[-1] ** -0.5, q.dtype)
    logits = jnp.einsum("bhqd,bhkd->bhqk", scaled_q, kh, preferred_element_type=jnp.float32)
    if key_mask is not None:
        logits = jnp.where(key_mask.astype(bool)[:, None, None, :], logits, MASKED_LOGIT)
    probs = jax.nn.softmax(logits, axis=-1)
    out = jnp.einsum("bhqk,bhkd->bhqd", probs.astype(v.dtype), vh, preferred_element_type=jnp.float32)
    return jnp.swapaxes(out, 1, 2).astype(q.dtype), (qh, kh, vh, probs, out)


def _heads_first_backward(residuals, grad):
    # Softmax's backward as FlashAttention writes it: dS = P * (dP - rowsum(dO * O)). The row sum
    # runs over the head dimension D instead of over the keys (autodiff's sum(P * dP)), one pass
    # less over the [B, H, L, L] probabilities.
    qh, kh, vh, probs, out = residuals
    scale = qh.shape[-1] ** -0.5
    g = jnp.swapaxes(grad, 1, 2).astype(jnp.float32)
    dv = jnp.einsum("bhqk,bhqd->bhkd", probs, g)
    dp = jnp.einsum("bhqd,bhkd->bhqk", g, vh.astype(jnp.float32))
    ds = probs * (dp - jnp.sum(g * out, axis=-1, keepdims=True))
    dq = jnp.einsum("bhqk,bhkd->bhqd", ds, kh.astype(jnp.float32)) * scale
    dk = jnp.einsum("bhqk,bhqd->bhkd", ds, qh.astype(jnp.float32)) * scale
    back = lambda x, like: jnp.swapaxes(x, 1, 2).astype(like.dtype)
    return back(dq, qh), back(dk, kh), back(dv, vh), None  # no cotangent for the key mask


@jax.custom_vjp
def heads_first_attention(q: jax.Array, k: jax.Array, v: jax.Array, key_mask: jax.Array | None = None) -> jax.Array:
    """`jax.nn.dot_product_attention`'s function (q, k, v [B, L, H, D], optional key_mask [B, Lk])
    in a form XLA runs faster on CPUs: heads first for the batched dots and a hand-written
    backward pass. At hidden 512, benchmarks/profile_step.py had XLA's attention at 4.6 s of the
    step's 14.8 s of thread time, where PyTorch's SDPA took 1.0 s (BENCHMARKS.md, issue 20)."""
    return _heads_first_forward(q, k, v, key_mask)[0]


heads_first_attention.defvjp(lambda q, k, v, key_mask: _heads_first_forward(q, k, v, key_mask),
                             _heads_first_backward)


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
