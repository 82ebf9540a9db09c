"""Block-sparse attention in plain JAX: the 'xla' implementation (the CPU fast path).

The work list is the flat list of active (query block, key block) pairs of every
([sample,] head), row-major, so a pair's query block never decreases along it. Each pair
costs one bq x bk tile of Q.K^T and one of P.V; the softmax runs across the pairs of a
query block with segment reductions (row max, row sum, output sum).

Why pairs and not rows padded to the widest row: a PARO plan keeps every block that
touches a text token, so the text query rows are dense and, with rows padded to the
widest one, every row of the head would be computed densely; the text key columns would
also widen every visual row on top of its own budget. With pairs the work is the number
of active blocks of the densest ([sample,] head): rows of any width cost what they hold.
Every ([sample,] head) is padded to that count (the padding pairs are masked out);
`computed_fraction` reports the resulting share of the dense attention's block products.

Arrays use the kernel layout [batch, heads, tokens, head_dim] with tokens padded to
whole blocks (the caller pads; `block_sparse_attention` is the public entry point).
INT8 is emulated with quantize-dequantize (the same rounding as the kernels) and
straight-through gradients.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from seedjax.kernels import quant


def max_blocks_per_head_of(block_mask) -> int:
    """Largest number of active blocks in one ([sample,] head) of a concrete mask [..., nq, nk] (at least 1)."""
    return max(1, int(np.asarray(block_mask, bool).sum((-2, -1)).max(initial=0)))


def computed_fraction(block_mask, max_blocks_per_head: int | None = None) -> float:
    """Share of the dense attention's block products that the 'xla' path computes for
    `block_mask` [..., nq, nk]: every ([sample,] head) is padded to the densest one's
    active-block count (or to `max_blocks_per_head`, the bound a traced mask is run with)."""
    nq, nk = np.shape(block_mask)[-2:]
    size = max_blocks_per_head_of(block_mask) if max_blocks_per_head is None else max_blocks_per_head
    return min(size, nq * nk) / (nq * nk)


def pair_table(block_mask, size: int):
    """bool [..., nq, nk] -> int32 [..., 3, size]: (count, query block, key block) of the
    active blocks in row-major order, `size` per ([sample,] head). Row 0 holds the number
    of active pairs (capped at `size`) in every column; entries past it repeat the last
    active pair, so the query-block indices stay sorted. A numpy mask gives a numpy table."""
    xp = np if isinstance(block_mask, np.ndarray) else jnp
    mask = xp.asarray(block_mask, dtype=bool)
    *lead, nq, nk = mask.shape
    flat = mask.reshape(*lead, nq * nk)
    counts = xp.minimum(xp.sum(flat, axis=-1, dtype=np.int32), size)
    size_avail = min(size, nq * nk)
    order = xp.argsort(xp.logical_not(flat).astype(np.int8), axis=-1, stable=True)[..., :size_avail]
    if size_avail < size:  # more slots than blocks: the tail is padding anyway
        order = xp.concatenate([order, xp.zeros((*lead, size - size_avail), order.dtype)], axis=-1)
    order = order.astype(np.int32)
    last = xp.take_along_axis(order, xp.maximum(counts - 1, 0)[..., None], axis=-1)
    flat_index = xp.where(xp.arange(size) < counts[..., None], order, last)
    counts = xp.broadcast_to(counts[..., None], flat_index.shape)
    return xp.stack([counts, flat_index // nk, flat_index % nk], axis=-2).astype(np.int32)


def _straight_through(x, x_quantized):
    """Forward value x_quantized, gradient of the identity."""
    return x + jax.lax.stop_gradient(x_quantized - x)


def attention(q, k, v, key_valid, pairs, *, sm_scale: float, block_q: int, block_k: int, kv_len: int,
              int8_qk: bool, int8_pv: bool, out_dtype):
    """q [B, H, Lq, D], k and v [B, H, Lk, D] (whole blocks), key_valid int [B, H, Lk] or
    None (nonzero = attend), pairs from `pair_table` [1 or B, H, 3, P]. Returns [B, H, Lq, D]."""
    b, h, lq, d = q.shape
    lk = k.shape[2]
    bq, bk = block_q, block_k
    nq, nk = lq // bq, lk // bk
    pairs = jnp.broadcast_to(pairs, (b, *pairs.shape[1:]))
    counts, rows, cols = pairs[..., 0, :], pairs[..., 1, :], pairs[..., 2, :]  # each [B, H, P]
    size = rows.shape[-1]
    if int8_qk:
        q = _straight_through(q, quant.fake_quantize_token_blocks(q, bq))
        k = _straight_through(k, quant.fake_quantize_token_blocks(quant.smooth_keys(k, kv_len), bk))
    if int8_pv:
        v = _straight_through(v, quant.fake_quantize_channels(v))

    # One flat axis of (batch, head, pair): block indices offset by their (batch, head)
    # group, so every gather and segment reduction is a plain one-axis op (cheap to compile).
    groups = jnp.arange(b * h, dtype=jnp.int32).reshape(b, h, 1)
    rows = (rows + groups * nq).reshape(-1)  # [B*H*P], sorted
    cols = (cols + groups * nk).reshape(-1)
    qg = q.reshape(b * h * nq, bq, d)[rows]
    kg = k.reshape(b * h * nk, bk, d)[cols]
    vg = v.reshape(b * h * nk, bk, d)[cols]
    valid = (jnp.arange(size) < counts).reshape(-1)[:, None, None]  # [B*H*P, 1, 1]
    if key_valid is not None:
        valid = valid & (key_valid.reshape(b * h * nk, 1, bk)[cols] != 0)
    segment_max = functools.partial(jax.ops.segment_max, segment_ids=rows, num_segments=b * h * nq,
                                    indices_are_sorted=True)
    segment_sum = functools.partial(jax.ops.segment_sum, segment_ids=rows, num_segments=b * h * nq,
                                    indices_are_sorted=True)

    s = jnp.einsum("pid,pjd->pij", qg, kg, preferred_element_type=jnp.float32) * sm_scale
    s = jnp.where(valid, s, -jnp.inf)
    # The softmax shift: the max over all active keys of the query row (any shift gives
    # the same output; this one keeps exp() <= 1, which INT8 P also relies on).
    row_max = jax.lax.stop_gradient(segment_max(jnp.max(s, axis=-1)))  # [B*H*nq, bq]
    shift = jnp.where(jnp.isfinite(row_max), row_max, 0.0)[rows]  # [B*H*P, bq]
    p = jnp.where(valid, jnp.exp(s - shift[..., None]), 0.0)
    total = segment_sum(jnp.sum(p, axis=-1))  # [B*H*nq, bq]
    if int8_pv:
        p = _straight_through(p, jnp.round(p * quant.INT8_MAX) / quant.INT8_MAX)
    out = segment_sum(jnp.einsum("pij,pjd->pid", p, vg.astype(jnp.float32)))  # [B*H*nq, bq, D]
    out = out / jnp.where(total > 0, total, 1.0)[..., None]
    return out.reshape(b, h, lq, d).astype(out_dtype)
