"""Block-sparse attention kernels for GPUs (Pallas on Triton).

One program per (query block, batch, head). The program keeps its query tile in registers
and loops over the *active* key blocks only: the loop bound is the row's active-block
count and each iteration reads the next key-block index from the row's index table, so
masked blocks are neither loaded from HBM nor computed. The key/value refs cover the
whole sequence of the head; on Triton a ref is a pointer, and only the sliced tiles are
loaded.

The backward pass is two kernels, as in FlashAttention-2: dq loops over the same
per-row tables, dk/dv loop over the transposed (per key block) tables.

Layout: [batch, heads, tokens, head_dim], tokens padded to whole blocks, head_dim a
power of two (the caller pads). Index tables [1 or batch, heads, blocks, 1 + max_blocks]:
column 0 is the count, columns 1.. the active block indices (see `block_sparse_attention`);
a leading 1 shares the tables across the batch. Key validity (optional): int32
[batch, heads, keys], nonzero = attend.

Status: these kernels run in Pallas interpret mode in the tests and lower to Triton IR
(checked by `jax.export` in the tests), but have not been compiled or timed on a GPU.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pl_triton

from seedjax.kernels import block_sparse_tiles as tiles


def _compiler_params(head_dim: int):
    return pl_triton.CompilerParams(num_warps=4 if head_dim <= 64 else 8, num_stages=2)


def _named(names, refs):
    return dict(zip(names, refs, strict=True))


def _forward_kernel(*refs, names, sm_scale, block_q, block_k):
    r = _named(names, refs)
    table = r["table"]
    q = r["q"][...]
    q_scale = r["q_scale"][...] if "q_scale" in r else None
    v_scale = r["v_scale"][...] if "v_scale" in r else None

    def body(j, state):
        m, l, acc = state
        keys = pl.ds(table[1 + j] * block_k, block_k)
        key_valid = r["key_valid"][:, keys] if "key_valid" in r else None
        k_scale = r["k_scale"][:, keys] if "k_scale" in r else None
        s = tiles.tile_logits(q, r["k"][keys, :], sm_scale=sm_scale, q_scale=q_scale, k_scale=k_scale,
                              key_valid=key_valid)
        return tiles.online_softmax_step(s, r["v"][keys, :], m, l, acc, v_scale=v_scale, key_valid=key_valid)

    state = tiles.init_row_state(block_q, q.shape[-1])
    out, lse = tiles.finalize(*lax.fori_loop(0, table[0], body, state))
    r["out"][...] = out.astype(r["out"].dtype)
    r["lse"][...] = lse


def _dq_kernel(*refs, names, sm_scale, block_k):
    r = _named(names, refs)
    table = r["table"]
    q, do, lse, delta = r["q"][...], r["do"][...], r["lse"][...], r["delta"][...]

    def body(j, dq):
        keys = pl.ds(table[1 + j] * block_k, block_k)
        key_valid = r["key_valid"][:, keys] if "key_valid" in r else None
        return dq + tiles.tile_dq(q, r["k"][keys, :], r["v"][keys, :], do, lse, delta, sm_scale=sm_scale,
                                  key_valid=key_valid)

    dq = lax.fori_loop(0, table[0], body, jnp.zeros(q.shape, jnp.float32))
    r["dq"][...] = dq.astype(r["dq"].dtype)


def _dkv_kernel(*refs, names, sm_scale, block_q):
    r = _named(names, refs)
    table = r["table"]
    k, v = r["k"][...], r["v"][...]
    key_valid = r["key_valid"][...] if "key_valid" in r else None

    def body(j, grads):
        rows = pl.ds(table[1 + j] * block_q, block_q)
        dk, dv = tiles.tile_dkv(r["q"][rows, :], k, v, r["do"][rows, :], r["lse"][rows, :], r["delta"][rows, :],
                                sm_scale=sm_scale, key_valid=key_valid)
        return grads[0] + dk, grads[1] + dv

    zeros = jnp.zeros(k.shape, jnp.float32)
    dk, dv = lax.fori_loop(0, table[0], body, (zeros, zeros))
    r["dk"][...] = dk.astype(r["dk"].dtype)
    r["dv"][...] = dv.astype(r["dv"].dtype)


def _table_spec(table):
    """Each program reads its own row of the index table (batch-shared or per sample)."""
    per_sample = int(table.shape[0] > 1)
    return pl.BlockSpec((None, None, None, table.shape[-1]), lambda i, b, h: (b * per_sample, h, i, 0))


def _per_head(block_rows: int, d: int, which: str):
    """BlockSpec of a [B, H, L, d] array: one block of rows (`which`='block') or all rows."""
    if which == "block":
        return pl.BlockSpec((None, None, block_rows, d), lambda i, b, h: (b, h, i, 0))
    return pl.BlockSpec((None, None, block_rows, d), lambda i, b, h: (b, h, 0, 0))


def forward(q, k, v, table, *, key_valid, q_scale, k_scale, v_scale, sm_scale, block_q, block_k, out_dtype,
            interpret):
    """Block-sparse attention forward: returns (out [B, H, Lq, D], lse [B, H, Lq, 1] f32)."""
    batch, heads, lq, d = q.shape
    lk = k.shape[2]
    inputs = [
        ("table", _table_spec(table), table),
        ("q", _per_head(block_q, d, "block"), q),
        ("k", _per_head(lk, d, "all"), k),
        ("v", _per_head(lk, d, "all"), v),
        ("key_valid", pl.BlockSpec((None, 1, lk), lambda i, b, h: (b, h, 0)), key_valid),
        ("q_scale", _per_head(block_q, 1, "block"), q_scale),
        ("k_scale", pl.BlockSpec((None, None, 1, lk), lambda i, b, h: (b, h, 0, 0)), k_scale),
        ("v_scale", pl.BlockSpec((None, None, 1, d), lambda i, b, h: (b, h, 0, 0)), v_scale),
    ]
    inputs = [x for x in inputs if x[2] is not None]
    kernel = functools.partial(_forward_kernel, names=tuple(n for n, _, _ in inputs) + ("out", "lse"),
                               sm_scale=sm_scale, block_q=block_q, block_k=block_k)
    return pl.pallas_call(
        kernel,
        grid=(lq // block_q, batch, heads),
        in_specs=[spec for _, spec, _ in inputs],
        out_specs=[_per_head(block_q, d, "block"), _per_head(block_q, 1, "block")],
        out_shape=[jax.ShapeDtypeStruct((batch, heads, lq, d), out_dtype),
                   jax.ShapeDtypeStruct((batch, heads, lq, 1), jnp.float32)],
        compiler_params=_compiler_params(d),
        interpret=interpret,
        name="block_sparse_attention_fwd",
    )(*[x for _, _, x in inputs])


def backward(q, k, v, do, lse, delta, kv_table, q_table, *, key_valid, sm_scale, block_q, block_k, interpret):
    """Gradients (dq, dk, dv) through the same block mask; float inputs only."""
    batch, heads, lq, d = q.shape
    lk = k.shape[2]
    params = _compiler_params(d)
    with_valid = key_valid is not None

    dq_names = ("table", "q", "k", "v", "do", "lse", "delta") + (("key_valid",) if with_valid else ()) + ("dq",)
    dq_specs = [
        _table_spec(kv_table),
        _per_head(block_q, d, "block"), _per_head(lk, d, "all"), _per_head(lk, d, "all"),
        _per_head(block_q, d, "block"), _per_head(block_q, 1, "block"), _per_head(block_q, 1, "block"),
    ] + ([pl.BlockSpec((None, 1, lk), lambda i, b, h: (b, h, 0))] if with_valid else [])
    dq = pl.pallas_call(
        functools.partial(_dq_kernel, names=dq_names, sm_scale=sm_scale, block_k=block_k),
        grid=(lq // block_q, batch, heads),
        in_specs=dq_specs,
        out_specs=_per_head(block_q, d, "block"),
        out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
        compiler_params=params,
        interpret=interpret,
        name="block_sparse_attention_dq",
    )(kv_table, q, k, v, do, lse, delta, *([key_valid] if with_valid else []))

    dkv_names = ("table", "q", "k", "v", "do", "lse", "delta") + (("key_valid",) if with_valid else ()) + ("dk", "dv")
    dkv_specs = [
        _table_spec(q_table),
        _per_head(lq, d, "all"), _per_head(block_k, d, "block"), _per_head(block_k, d, "block"),
        _per_head(lq, d, "all"), _per_head(lq, 1, "all"), _per_head(lq, 1, "all"),
    ] + ([pl.BlockSpec((None, 1, block_k), lambda j, b, h: (b, h, j))] if with_valid else [])
    dk, dv = pl.pallas_call(
        functools.partial(_dkv_kernel, names=dkv_names, sm_scale=sm_scale, block_q=block_q),
        grid=(lk // block_k, batch, heads),
        in_specs=dkv_specs,
        out_specs=[_per_head(block_k, d, "block"), _per_head(block_k, d, "block")],
        out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
        compiler_params=params,
        interpret=interpret,
        name="block_sparse_attention_dkv",
    )(q_table, q, k, v, do, lse, delta, *([key_valid] if with_valid else []))
    return dq, dk, dv
