"""Block-sparse attention kernels for TPUs (Pallas on Mosaic), splash-attention style.

The grid is (batch, head, query block, step). The index tables are scalar-prefetched
into SMEM and the key/value BlockSpecs read the key-block index of step j from them, so
the pipeline DMAs only active blocks. A row with fewer active blocks than the grid has
steps pads its table with its last active index: the block index does not change, so
the pipeline issues no copy, and `pl.when(j < count)` skips the compute. Running
statistics live in VMEM scratch across the steps of a row.

The backward pass mirrors the forward: dq over the per-row tables, dk/dv over the
transposed (per key block) tables, each with the step axis innermost.

Layout as in `block_sparse_gpu`: [batch, heads, tokens, head_dim] padded to whole
blocks; tables [1 or batch, heads, blocks, 1 + max_blocks] with the count in column 0;
key validity int32 [batch, heads, keys] (to the kernels as [batch, heads, 1, keys]). Mosaic
needs the minor block dimension to be a multiple of 128 for the key-side vectors, so
on TPU use block_k % 128 == 0 (checked by the caller).

Status: these kernels run in Pallas interpret mode in the tests and lower to Mosaic
(checked by `jax.export` in the tests), but have not been compiled or timed on a TPU.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from seedjax.kernels import block_sparse_tiles as tiles

_SEMANTICS = pltpu.CompilerParams(dimension_semantics=("parallel", "parallel", "parallel", "arbitrary"))


def _named(names, refs):
    return dict(zip(names, refs, strict=True))


def _row_block(rows, d):
    """The block of the grid's own row (query block in fwd/dq, key block in dkv)."""
    return pl.BlockSpec((None, None, rows, d), lambda b, h, i, j, t: (b, h, i, 0))


def _gathered_block(rows, d, per_sample):
    """The block named by the table at step j (the active block being visited)."""
    return pl.BlockSpec((None, None, rows, d), lambda b, h, i, j, t: (b, h, t[b * per_sample, h, i, 1 + j], 0))


def _gathered_keys_valid(block_k, per_sample):
    """Key validity as [B, H, 1, Lk] (see `_keys_valid_4d`), the block of step j."""
    return pl.BlockSpec((None, None, 1, block_k), lambda b, h, i, j, t: (b, h, 0, t[b * per_sample, h, i, 1 + j]))


def _keys_valid_4d(key_valid):
    """[B, H, Lk] -> [B, H, 1, Lk]: Mosaic needs a block's second-minor size to equal the
    array's or be a multiple of 8, so the per-head rows get their own unit axis."""
    return None if key_valid is None else key_valid[:, :, None, :]


def _forward_kernel(table, *refs, names, sm_scale, num_steps, per_sample):
    r = _named(names, refs)
    b, h, i, j = pl.program_id(0), pl.program_id(1), pl.program_id(2), pl.program_id(3)
    m_ref, l_ref, acc_ref = r["m"], r["l"], r["acc"]

    @pl.when(j == 0)
    def _init():
        m, l, acc = tiles.init_row_state(*acc_ref.shape)
        m_ref[...], l_ref[...], acc_ref[...] = m, l, acc

    @pl.when(j < table[b * per_sample, h, i, 0])
    def _step():
        key_valid = r["key_valid"][...] if "key_valid" in r else None
        s = tiles.tile_logits(
            r["q"][...], r["k"][...], sm_scale=sm_scale,
            q_scale=r["q_scale"][...] if "q_scale" in r else None,
            k_scale=r["k_scale"][...] if "k_scale" in r else None,
            key_valid=key_valid,
        )
        m, l, acc = tiles.online_softmax_step(
            s, r["v"][...], m_ref[...], l_ref[...], acc_ref[...],
            v_scale=r["v_scale"][...] if "v_scale" in r else None, key_valid=key_valid,
        )
        m_ref[...], l_ref[...], acc_ref[...] = m, l, acc

    @pl.when(j == num_steps - 1)
    def _write():
        out, lse = tiles.finalize(m_ref[...], l_ref[...], acc_ref[...])
        r["out"][...] = out.astype(r["out"].dtype)
        r["lse"][...] = lse


def forward(q, k, v, table, *, key_valid, q_scale, k_scale, v_scale, sm_scale, block_q, block_k, out_dtype,
            interpret):
    """Block-sparse attention forward: returns (out [B, H, Lq, D], lse [B, H, Lq, 1] f32)."""
    batch, heads, lq, d = q.shape
    num_steps = table.shape[-1] - 1
    per_sample = int(table.shape[0] > 1)
    inputs = [
        ("q", _row_block(block_q, d), q),
        ("k", _gathered_block(block_k, d, per_sample), k),
        ("v", _gathered_block(block_k, d, per_sample), v),
        ("key_valid", _gathered_keys_valid(block_k, per_sample), _keys_valid_4d(key_valid)),
        ("q_scale", _row_block(block_q, 1), q_scale),
        ("k_scale", pl.BlockSpec((None, None, 1, block_k),
                                 lambda b, h, i, j, t: (b, h, 0, t[b * per_sample, h, i, 1 + j])), k_scale),
        ("v_scale", pl.BlockSpec((None, None, 1, d), lambda b, h, i, j, t: (b, h, 0, 0)), v_scale),
    ]
    inputs = [x for x in inputs if x[2] is not None]
    names = tuple(n for n, _, _ in inputs) + ("out", "lse", "m", "l", "acc")
    grid_spec = pltpu.PrefetchScalarGridSpec(
        num_scalar_prefetch=1,
        grid=(batch, heads, lq // block_q, num_steps),
        in_specs=[spec for _, spec, _ in inputs],
        out_specs=[_row_block(block_q, d), _row_block(block_q, 1)],
        scratch_shapes=[pltpu.VMEM((block_q, 1), jnp.float32), pltpu.VMEM((block_q, 1), jnp.float32),
                        pltpu.VMEM((block_q, d), jnp.float32)],
    )
    return pl.pallas_call(
        functools.partial(_forward_kernel, names=names, sm_scale=sm_scale, num_steps=num_steps,
                          per_sample=per_sample),
        grid_spec=grid_spec,
        out_shape=[jax.ShapeDtypeStruct((batch, heads, lq, d), out_dtype),
                   jax.ShapeDtypeStruct((batch, heads, lq, 1), jnp.float32)],
        compiler_params=_SEMANTICS,
        interpret=interpret,
        name="block_sparse_attention_fwd",
    )(table, *[x for _, _, x in inputs])


def _dq_kernel(table, *refs, names, sm_scale, num_steps, per_sample):
    r = _named(names, refs)
    b, h, i, j = pl.program_id(0), pl.program_id(1), pl.program_id(2), pl.program_id(3)

    @pl.when(j == 0)
    def _init():
        r["acc"][...] = jnp.zeros(r["acc"].shape, jnp.float32)

    @pl.when(j < table[b * per_sample, h, i, 0])
    def _step():
        r["acc"][...] += tiles.tile_dq(
            r["q"][...], r["k"][...], r["v"][...], r["do"][...], r["lse"][...], r["delta"][...],
            sm_scale=sm_scale, key_valid=r["key_valid"][...] if "key_valid" in r else None,
        )

    @pl.when(j == num_steps - 1)
    def _write():
        r["dq"][...] = r["acc"][...].astype(r["dq"].dtype)


def _dkv_kernel(table, *refs, names, sm_scale, num_steps, per_sample):
    r = _named(names, refs)
    b, h, i, j = pl.program_id(0), pl.program_id(1), pl.program_id(2), pl.program_id(3)

    @pl.when(j == 0)
    def _init():
        r["dk_acc"][...] = jnp.zeros(r["dk_acc"].shape, jnp.float32)
        r["dv_acc"][...] = jnp.zeros(r["dv_acc"].shape, jnp.float32)

    @pl.when(j < table[b * per_sample, h, i, 0])
    def _step():
        dk, dv = tiles.tile_dkv(
            r["q"][...], r["k"][...], r["v"][...], r["do"][...], r["lse"][...], r["delta"][...],
            sm_scale=sm_scale, key_valid=r["key_valid"][...] if "key_valid" in r else None,
        )
        r["dk_acc"][...] += dk
        r["dv_acc"][...] += dv

    @pl.when(j == num_steps - 1)
    def _write():
        r["dk"][...] = r["dk_acc"][...].astype(r["dk"].dtype)
        r["dv"][...] = r["dv_acc"][...].astype(r["dv"].dtype)


def backward(q, k, v, do, lse, delta, kv_table, q_table, *, key_valid, sm_scale, block_q, block_k, interpret):
    """Gradients (dq, dk, dv) through the same block mask; float inputs only."""
    batch, heads, lq, d = q.shape
    lk = k.shape[2]
    valid = [_keys_valid_4d(key_valid)] if key_valid is not None else []
    valid_names = ("key_valid",) if valid else ()

    per_sample = int(kv_table.shape[0] > 1)
    steps = kv_table.shape[-1] - 1
    dq_spec = pltpu.PrefetchScalarGridSpec(
        num_scalar_prefetch=1,
        grid=(batch, heads, lq // block_q, steps),
        in_specs=[_row_block(block_q, d), _gathered_block(block_k, d, per_sample),
                  _gathered_block(block_k, d, per_sample), _row_block(block_q, d), _row_block(block_q, 1),
                  _row_block(block_q, 1)] + [_gathered_keys_valid(block_k, per_sample)] * len(valid),
        out_specs=_row_block(block_q, d),
        scratch_shapes=[pltpu.VMEM((block_q, d), jnp.float32)],
    )
    dq = pl.pallas_call(
        functools.partial(_dq_kernel, names=("q", "k", "v", "do", "lse", "delta") + valid_names + ("dq", "acc"),
                          sm_scale=sm_scale, num_steps=steps, per_sample=per_sample),
        grid_spec=dq_spec,
        out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
        compiler_params=_SEMANTICS,
        interpret=interpret,
        name="block_sparse_attention_dq",
    )(kv_table, q, k, v, do, lse, delta, *valid)

    steps = q_table.shape[-1] - 1
    dkv_spec = pltpu.PrefetchScalarGridSpec(
        num_scalar_prefetch=1,
        grid=(batch, heads, lk // block_k, steps),
        in_specs=[_gathered_block(block_q, d, per_sample), _row_block(block_k, d), _row_block(block_k, d),
                  _gathered_block(block_q, d, per_sample), _gathered_block(block_q, 1, per_sample),
                  _gathered_block(block_q, 1, per_sample)]
        + [pl.BlockSpec((None, None, 1, block_k), lambda b, h, i, j, t: (b, h, 0, i))] * len(valid),
        out_specs=[_row_block(block_k, d), _row_block(block_k, d)],
        scratch_shapes=[pltpu.VMEM((block_k, d), jnp.float32), pltpu.VMEM((block_k, d), jnp.float32)],
    )
    dk, dv = pl.pallas_call(
        functools.partial(_dkv_kernel,
                          names=("q", "k", "v", "do", "lse", "delta") + valid_names + ("dk", "dv", "dk_acc", "dv_acc"),
                          sm_scale=sm_scale, num_steps=steps, per_sample=per_sample),
        grid_spec=dkv_spec,
        out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
        compiler_params=_SEMANTICS,
        interpret=interpret,
        name="block_sparse_attention_dkv",
    )(q_table, q, k, v, do, lse, delta, *valid)
    return dq, dk, dv
