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
import functools
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

# Above this many queries the CPU form runs in query blocks of at most this size and keeps each
# row's log-sum-exp for the backward pass instead of the [B, H, Lq, Lk] probabilities: that is
# what it saves, memory (the MMDiT step at 4 x 1,056 tokens: 2,752 -> 1,918 MiB, its time unchanged;
# BENCHMARKS.md). At 288 queries splitting was no faster alone, and recomputing the logits in the
# backward pass costs a whole QK^T, so shorter sequences keep the probabilities.
LONGEST_QUERY_BLOCK = 512


def query_block(num_queries: int) -> int:
    """Equal query blocks of at most LONGEST_QUERY_BLOCK (all queries in one when they fit)."""
    blocks = -(-num_queries // LONGEST_QUERY_BLOCK)
    return -(-num_queries // blocks)


def _scaled_logits(scaled_q, kh, key_mask):
    """[B, H, q, D] x [B, H, Lk, D] -> float32 logits [B, H, q, Lk], masked keys at MASKED_LOGIT."""
    logits = jnp.einsum("bhqd,bhkd->bhqk", scaled_q, kh, preferred_element_type=jnp.float32)
    if key_mask is not None:
        logits = jnp.where(key_mask.astype(bool)[:, None, None, :], logits, MASKED_LOGIT)
    return logits


def _heads_first(q, k, v):
    """[B, L, H, D] -> [B, H, L, D], and q times the softmax scale: the scale goes on q (and on dq,
    dk in the backward passes), as XLA materialised a scale on the [B, H, L, L] logits as a full
    array read by every pass."""
    qh, kh, vh = (jnp.swapaxes(x, 1, 2) for x in (q, k, v))
    return qh, qh * jnp.asarray(q.shape[-1] ** -0.5, q.dtype), kh, vh


def _back(x, like):
    return jnp.swapaxes(x, 1, 2).astype(like.dtype)


def _heads_first_forward(q, k, v, key_mask):
    qh, scaled_q, kh, vh = _heads_first(q, k, v)
    probs = jax.nn.softmax(_scaled_logits(scaled_q, kh, key_mask), axis=-1)
    out = jnp.einsum("bhqk,bhkd->bhqd", probs.astype(v.dtype), vh, preferred_element_type=jnp.float32)
    return _back(out, q), (qh, kh, vh, probs, out)


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
    return _back(dq, qh), _back(dk, kh), _back(dv, vh), None  # no cotangent for the key mask


@jax.custom_vjp
def _stored_probabilities(q, k, v, key_mask):
    return _heads_first_forward(q, k, v, key_mask)[0]


_stored_probabilities.defvjp(_heads_first_forward, _heads_first_backward)


def _in_blocks(x, block):
    """[B, H, L, ...] -> [n, B, H, block, ...], L zero-padded to n blocks."""
    n = -(-x.shape[2] // block)
    pad = [(0, 0)] * x.ndim
    pad[2] = (0, n * block - x.shape[2])
    x = jnp.pad(x, pad).reshape(*x.shape[:2], n, block, *x.shape[3:])
    return jnp.moveaxis(x, 2, 0)


def _from_blocks(x, length):
    """[n, B, H, block, ...] -> [B, H, length, ...]."""
    x = jnp.moveaxis(x, 0, 2)
    return x.reshape(*x.shape[:2], -1, *x.shape[4:])[:, :, :length]


def _blocked_forward(q, k, v, key_mask, block):
    _, scaled_q, kh, vh = _heads_first(q, k, v)

    def one_block(qb):
        logits = _scaled_logits(qb, kh, key_mask)
        top = jnp.max(logits, axis=-1, keepdims=True)
        p = jnp.exp(logits - top)
        total = jnp.sum(p, axis=-1, keepdims=True)
        out = jnp.einsum("bhqk,bhkd->bhqd", p.astype(v.dtype), vh, preferred_element_type=jnp.float32) / total
        return out, (top + jnp.log(total))[..., 0]

    out, lse = jax.lax.map(one_block, _in_blocks(scaled_q, block))
    out, lse = _from_blocks(out, q.shape[1]), _from_blocks(lse, q.shape[1])
    return _back(out, q), (scaled_q, kh, vh, key_mask, out, lse)


def _blocked_backward(block, residuals, grad):
    # The probabilities of each query block again, from its logits and its rows' log-sum-exp;
    # dK and dV summed over the blocks, dQ block by block.
    scaled_q, kh, vh, key_mask, out, lse = residuals
    scale = scaled_q.shape[-1] ** -0.5
    g = jnp.swapaxes(grad, 1, 2).astype(jnp.float32)
    row_dot = jnp.sum(g * out, axis=-1)
    k32, v32 = kh.astype(jnp.float32), vh.astype(jnp.float32)

    def one_block(carry, blocks):
        dk, dv = carry
        qb, gb, lse_b, row_b = blocks
        p = jnp.exp(_scaled_logits(qb, kh, key_mask) - lse_b[..., None])
        ds = p * (jnp.einsum("bhqd,bhkd->bhqk", gb, v32) - row_b[..., None])
        dk = dk + jnp.einsum("bhqk,bhqd->bhkd", ds, qb.astype(jnp.float32))
        dv = dv + jnp.einsum("bhqk,bhqd->bhkd", p, gb)
        return (dk, dv), jnp.einsum("bhqk,bhkd->bhqd", ds, k32) * scale

    blocks = tuple(_in_blocks(x, block) for x in (scaled_q, g, lse, row_dot))
    (dk, dv), dq = jax.lax.scan(one_block, (jnp.zeros_like(k32), jnp.zeros_like(v32)), blocks)
    dq = _from_blocks(dq, scaled_q.shape[2])
    return _back(dq, scaled_q), _back(dk, kh), _back(dv, vh), None


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _query_blocked(q, k, v, key_mask, block):
    return _blocked_forward(q, k, v, key_mask, block)[0]


_query_blocked.defvjp(_blocked_forward, _blocked_backward)


def heads_first_attention(q: jax.Array, k: jax.Array, v: jax.Array, key_mask: jax.Array | None = None, *,
                          block: int | None = None) -> jax.Array:
    """`jax.nn.dot_product_attention`'s function (q, k, v [B, L, H, D], optional key_mask [B, Lk])
    in a form XLA runs faster on CPUs: heads first for the batched dots, hand-written backward
    passes, and long query sequences in blocks (`block` queries each; default `query_block`).
    At hidden 512, benchmarks/profile_step.py had XLA's attention at 4.6 s of the step's 14.8 s
    of thread time, where PyTorch's SDPA took 1.0 s (BENCHMARKS.md, issue 20)."""
    block = block or query_block(q.shape[1])
    if block >= q.shape[1]:
        return _stored_probabilities(q, k, v, key_mask)
    return _query_blocked(q, k, v, key_mask, block)


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
