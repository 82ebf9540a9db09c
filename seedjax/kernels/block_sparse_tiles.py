"""Per-tile math shared by the GPU and TPU block-sparse attention kernels.

Each function works on one (query block x key block) tile held in registers / VMEM and
uses only operations that both Pallas backends (Triton and Mosaic TPU) lower: 2-D dots,
elementwise math and row reductions with keepdims. Shapes: q [bq, D], k and v [bk, D],
row statistics [bq, 1], key-side vectors [1, bk].

Numerics follow FlashAttention-2: logits and softmax in float32, the output accumulated
unnormalized and divided by the row sum once at the end, the log-sum-exp saved for the
backward pass, which recomputes each probability tile as exp(s - lse).
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from seedjax.kernels.quant import INT8_MAX, quantize_probabilities

# Logit of a masked key. Finite, so that exp(masked - max) is an exact 0 and never NaN.
MASKED_LOGIT = -1e30

_NT = (((1,), (1,)), ((), ()))  # a @ b.T


def _dot(a, b, out_dtype=jnp.float32):
    return lax.dot_general(a, b, (((1,), (0,)), ((), ())), preferred_element_type=out_dtype)


def _dot_nt(a, b, out_dtype=jnp.float32):
    return lax.dot_general(a, b, _NT, preferred_element_type=out_dtype)


def tile_logits(q, k, *, sm_scale, q_scale=None, k_scale=None, key_valid=None):
    """Scaled logits s = q k^T [bq, bk] in float32.

    INT8 q and k are multiplied exactly in int32 and rescaled by `q_scale` [bq, 1] (which
    already includes `sm_scale`) times `k_scale` [1, bk]. `key_valid` [1, bk] (nonzero =
    attend) marks padding and masked keys, whose logits become MASKED_LOGIT.
    """
    if q.dtype == jnp.int8:
        s = _dot_nt(q, k, jnp.int32).astype(jnp.float32) * q_scale * k_scale
    else:
        s = _dot_nt(q, k) * sm_scale
    if key_valid is not None:
        s = jnp.where(key_valid != 0, s, MASKED_LOGIT)
    return s


def online_softmax_step(s, v, m, l, acc, *, v_scale=None, key_valid=None):
    """Fold one tile of logits s [bq, bk] and values v [bk, D] into the running row max m,
    row sum l [bq, 1] and unnormalized output acc [bq, D]. INT8 v means INT8 P.V: the
    probabilities are quantized with scale 1/127 and `v_scale` [1, D] is per channel."""
    m_new = jnp.maximum(m, jnp.max(s, axis=-1, keepdims=True))
    alpha = jnp.exp(m - m_new)
    p = jnp.exp(s - m_new)
    if key_valid is not None:
        # A tile whose keys are all masked would otherwise give exp(0) = 1 everywhere.
        p = jnp.where(key_valid != 0, p, 0.0)
    l_new = alpha * l + jnp.sum(p, axis=-1, keepdims=True)
    if v.dtype == jnp.int8:
        pv = _dot(quantize_probabilities(p), v, jnp.int32).astype(jnp.float32)
        pv = pv * (v_scale * (1.0 / INT8_MAX))
    else:
        pv = _dot(p.astype(v.dtype), v)
    return m_new, l_new, alpha * acc + pv


def finalize(m, l, acc):
    """Normalized output [bq, D] and log-sum-exp [bq, 1]. Rows that attended to nothing
    (every block masked) get output 0 and lse -inf."""
    attended = l > 0
    out = acc / jnp.where(attended, l, 1.0)
    lse = jnp.where(attended, m + jnp.log(jnp.where(attended, l, 1.0)), -jnp.inf)
    return out, lse


def tile_dq(q, k, v, do, lse, delta, *, sm_scale, key_valid=None):
    """dq contribution [bq, D] (float32) of one tile, float inputs.

    With p = exp(s - lse) the tile's attention probabilities and delta = rowsum(o * do)
    [bq, 1]: ds = p * (do v^T - delta), dq = ds k * sm_scale.
    """
    s = tile_logits(q, k, sm_scale=sm_scale)
    p = jnp.exp(s - lse)
    if key_valid is not None:
        p = jnp.where(key_valid != 0, p, 0.0)
    ds = p * (_dot_nt(do, v) - delta) * sm_scale
    return _dot(ds.astype(k.dtype), k)


def tile_dkv(q, k, v, do, lse, delta, *, sm_scale, key_valid=None):
    """(dk, dv) contributions [bk, D] of one tile: dv = p^T do, dk = ds^T q * sm_scale."""
    s = tile_logits(q, k, sm_scale=sm_scale)
    p = jnp.exp(s - lse)
    if key_valid is not None:
        p = jnp.where(key_valid != 0, p, 0.0)
    dv = _dot(p.T.astype(do.dtype), do)
    ds = p * (_dot_nt(do, v) - delta) * sm_scale
    dk = _dot(ds.T.astype(q.dtype), q)
    return dk, dv


def init_row_state(block_q: int, head_dim: int):
    """(m, l, acc) before the first tile."""
    return (
        jnp.full((block_q, 1), -jnp.inf, jnp.float32),
        jnp.zeros((block_q, 1), jnp.float32),
        jnp.zeros((block_q, head_dim), jnp.float32),
    )


__all__ = [
    "MASKED_LOGIT",
    "finalize",
    "init_row_state",
    "online_softmax_step",
    "tile_dkv",
    "tile_dq",
    "tile_logits",
]
