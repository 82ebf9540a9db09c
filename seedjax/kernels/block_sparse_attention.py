"""Multi-head attention with a per-head block mask: masked blocks are skipped, not zeroed.

    out = block_sparse_attention(q, k, v, block_mask)   # q [B, Lq, H, D], k, v [B, Lk, H, D]

`block_mask` is bool [H, ceil(Lq / block_q), ceil(Lk / block_k)] (default 64 x 64 blocks),
or [B, H, ...] for a mask per sample: True means the query block attends to the key
block. Semantics, exactly those of `reference_block_sparse_attention`: softmax over the keys of active blocks (and
`key_mask` [B, Lk] or per head [B, H, Lk], if given), scale 1/sqrt(D) unless `scale` says otherwise; a query row with no
key to attend to gets output 0. Lengths need not be multiples of the block sizes (the
last block is partial). Differentiable: the backward pass runs through the same block
mask, so the kernel serves sparse training as well as inference.

Implementations (`impl`):
- 'triton': Pallas kernels for GPUs (`block_sparse_gpu`), a loop over active blocks.
- 'mosaic': Pallas kernels for TPUs (`block_sparse_tpu`), splash-attention-style grid.
- 'xla': plain JAX over the flat list of active (query block, key block) pairs
  (`block_sparse_xla`): rows of any width cost what they hold, so dense rows (PARO's
  text rows) do not widen the others; every ([sample,] head) is padded to the densest
  one's count (`computed_fraction` gives the share of dense work). The fast path on
  CPU. INT8 here is emulated (quantize-dequantize, same rounding) with
  straight-through gradients.
- 'auto' (default): 'triton' on GPU, 'mosaic' on TPU, 'xla' elsewhere.
`interpret=True` runs a Pallas implementation in interpret mode (CPU tests).

The mask is converted to index tables, per ([sample,] head, query block) the count and
list of active key blocks and, for dk/dv, the transpose. Their width is `max_active_blocks`
(the largest count in any row): computed from the mask when it is concrete, else the
number of key blocks; pass it when the mask is traced and known to be sparse (rows with
more active blocks than `max_active_blocks` would be truncated). The 'xla' path's pair
list has `max_blocks_per_head` entries per ([sample,] head): from a concrete mask, its
densest head; for a traced mask pass it (default: query blocks x row width), with the
same truncation caveat.

INT8 (`int8_qk`, `int8_pv`): Q and K per-block symmetric INT8 with K smoothed (its token
mean removed, which softmax ignores), and optionally INT8 P.V with P at scale 1/127 and V
per channel; see `seedjax.kernels.quant`. The INT8 Q.K products are exact (int32), so
INT8 Q.K attention equals float attention on the dequantized Q and smoothed K up to
float32 rounding. Error bound against float attention (tested on unit-Gaussian Q, V and
K with a per-channel offset, D = 64 and 128): relative L2 error <= 3% for INT8 Q.K
(measured 1.6%) and <= 4% with INT8 P.V as well (measured 2.5%), cosine >= 0.999.
Gradients of INT8 attention are those of float block-sparse attention
(straight-through): the backward pass recomputes the softmax statistics in float.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from seedjax.kernels import block_sparse_gpu, block_sparse_tpu, block_sparse_xla, quant

IMPLS = ("auto", "triton", "mosaic", "xla")


# ----------------------------------------------------------------------------------------
# Mask representation
# ----------------------------------------------------------------------------------------


def _concrete(x) -> np.ndarray | None:
    try:
        return np.asarray(x)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


def max_active_blocks_of(mask, axis: int = -1) -> int:
    """Largest number of active blocks along `axis` of a concrete mask (at least 1)."""
    return max(1, int(np.asarray(mask, bool).sum(axis).max(initial=0)))


def mask_table(block_mask, width: int):
    """bool [..., R, C] -> int32 [..., R, 1 + width]: column 0 the number of active blocks in
    the row (capped at `width`), then their indices in increasing order, padded with the
    row's last active index (so a TPU pipeline re-uses the block instead of copying).

    A numpy mask gives a numpy table (built on the host, not constant-folded by XLA)."""
    xp = np if isinstance(block_mask, np.ndarray) else jnp
    mask = xp.asarray(block_mask, dtype=bool)
    counts = xp.minimum(xp.sum(mask, axis=-1, dtype=np.int32), width)
    order = xp.argsort(xp.logical_not(mask).astype(np.int8), axis=-1, stable=True)[..., :width].astype(np.int32)
    last = xp.take_along_axis(order, xp.maximum(counts - 1, 0)[..., None], axis=-1)
    idx = xp.where(xp.arange(width) < counts[..., None], order, last)
    return xp.concatenate([counts[..., None], idx], axis=-1).astype(np.int32)


# ----------------------------------------------------------------------------------------
# Reference semantics
# ----------------------------------------------------------------------------------------


def reference_block_sparse_attention(q, k, v, block_mask, *, key_mask=None, scale=None, block_q=64, block_k=64):
    """Dense attention with the block mask expanded to elements; the definition the
    kernels are tested against. Computes in float32 (float64 for float64 inputs) and
    returns that precision. Rows with nothing to attend to give 0."""
    lq, lk, d = q.shape[1], k.shape[1], q.shape[-1]
    dtype = jnp.promote_types(q.dtype, jnp.float32)
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    block_mask = jnp.asarray(block_mask, bool)
    block_mask = block_mask[None] if block_mask.ndim == 3 else block_mask
    elementwise = jnp.repeat(jnp.repeat(block_mask, block_q, axis=-2), block_k, axis=-1)
    mask = elementwise[..., :lq, :lk]
    if key_mask is not None:
        key_mask = jnp.asarray(key_mask, bool)
        mask = mask & (key_mask[:, None, None, :] if key_mask.ndim == 2 else key_mask[:, :, None, :])
    s = jnp.einsum("bqhd,bkhd->bhqk", q.astype(dtype), k.astype(dtype)) * scale
    s = jnp.where(mask, s, -jnp.inf)
    row_max = jnp.max(s, axis=-1, keepdims=True)
    p = jnp.where(mask, jnp.exp(s - jnp.where(jnp.isfinite(row_max), row_max, 0.0)), 0.0)
    total = jnp.sum(p, axis=-1, keepdims=True)
    out = jnp.einsum("bhqk,bkhd->bqhd", p / jnp.where(total > 0, total, 1.0), v.astype(dtype))
    return out


# ----------------------------------------------------------------------------------------
# Pallas implementations behind one custom VJP
# ----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Config:
    sm_scale: float
    block_q: int
    block_k: int
    kv_len: int  # number of real (unpadded) keys
    int8_qk: bool
    int8_pv: bool
    impl: str
    interpret: bool
    out_dtype: jnp.dtype

    @property
    def kernels(self):
        return block_sparse_gpu if self.impl == "triton" else block_sparse_tpu


def _kernel_forward(q, k, v, key_valid, kv_table, cfg: _Config, quantized: bool):
    q_scale = k_scale = v_scale = None
    if quantized and cfg.int8_qk:
        q, q_scale = quant.quantize_token_blocks(q, cfg.block_q)
        q_scale = (q_scale * cfg.sm_scale)[..., None]
        k, k_scale = quant.quantize_token_blocks(quant.smooth_keys(k, cfg.kv_len), cfg.block_k)
        k_scale = k_scale[:, :, None, :]
    if quantized and cfg.int8_pv:
        v, v_scale = quant.quantize_channels(v)
    return cfg.kernels.forward(
        q, k, v, kv_table, key_valid=key_valid, q_scale=q_scale, k_scale=k_scale, v_scale=v_scale,
        sm_scale=cfg.sm_scale, block_q=cfg.block_q, block_k=cfg.block_k, out_dtype=cfg.out_dtype,
        interpret=cfg.interpret,
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def _kernel_attention(q, k, v, key_valid, kv_table, q_table, cfg: _Config):
    return _kernel_forward(q, k, v, key_valid, kv_table, cfg, quantized=cfg.int8_qk or cfg.int8_pv)[0]


def _kernel_attention_fwd(q, k, v, key_valid, kv_table, q_table, cfg: _Config):
    out_float, lse = _kernel_forward(q, k, v, key_valid, kv_table, cfg, quantized=False)
    out = out_float
    if cfg.int8_qk or cfg.int8_pv:
        out = _kernel_forward(q, k, v, key_valid, kv_table, cfg, quantized=True)[0]
    return out, (q, k, v, key_valid, kv_table, q_table, out_float, lse)


def _kernel_attention_bwd(cfg: _Config, residuals, d_out):
    q, k, v, key_valid, kv_table, q_table, out, lse = residuals
    delta = jnp.sum(out.astype(jnp.float32) * d_out.astype(jnp.float32), axis=-1, keepdims=True)
    dq, dk, dv = cfg.kernels.backward(
        q, k, v, d_out.astype(q.dtype), lse, delta, kv_table, q_table, key_valid=key_valid,
        sm_scale=cfg.sm_scale, block_q=cfg.block_q, block_k=cfg.block_k, interpret=cfg.interpret,
    )
    return dq, dk, dv, None, None, None


_kernel_attention.defvjp(_kernel_attention_fwd, _kernel_attention_bwd)


# ----------------------------------------------------------------------------------------
# Public entry point
# ----------------------------------------------------------------------------------------


def _resolve_impl(impl: str, interpret: bool) -> str:
    if impl not in IMPLS:
        raise ValueError(f"block_sparse_attention: impl must be one of {IMPLS}, got {impl!r}")
    if impl == "auto":
        impl = {"gpu": "triton", "tpu": "mosaic"}.get(jax.default_backend(), "xla")
    if interpret and impl == "xla":
        raise ValueError("block_sparse_attention: interpret=True needs impl='triton' or 'mosaic'")
    return impl


def _check_blocks(impl: str, block_q: int, block_k: int):
    if impl == "triton":
        for name, size in (("block_q", block_q), ("block_k", block_k)):
            if size < 16 or size & (size - 1):
                raise ValueError(f"block_sparse_attention (triton): {name}={size} must be a power of two >= 16")
    if impl == "mosaic" and (block_k % 128 or block_q % 8):
        raise ValueError(f"block_sparse_attention (mosaic): needs block_k % 128 == 0 and block_q % 8 == 0, "
                         f"got block_q={block_q}, block_k={block_k}")


def _pad_axis(x, axis: int, size: int):
    if x.shape[axis] == size:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, size - x.shape[axis])
    return jnp.pad(x, widths)


def block_sparse_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    block_mask: jax.Array,
    *,
    key_mask: jax.Array | None = None,
    scale: float | None = None,
    block_q: int = 64,
    block_k: int = 64,
    int8_qk: bool = False,
    int8_pv: bool = False,
    max_active_blocks: int | None = None,
    max_blocks_per_head: int | None = None,
    impl: str = "auto",
    interpret: bool = False,
) -> jax.Array:
    """Block-sparse multi-head attention; see the module docstring for semantics.

    q [B, Lq, H, D], k and v [B, Lk, H, D], block_mask bool [H, ceil(Lq/block_q),
    ceil(Lk/block_k)] or [B, H, ...], key_mask bool [B, Lk] or [B, H, Lk] (True = attend) or None.
    Returns [B, Lq, H, D] in q's dtype.
    """
    if q.ndim != 4 or k.ndim != 4 or k.shape != v.shape or q.shape[0] != k.shape[0] or q.shape[2:] != k.shape[2:]:
        raise ValueError(f"block_sparse_attention: expected q [B, Lq, H, D] and k, v [B, Lk, H, D], "
                         f"got {q.shape}, {k.shape}, {v.shape}")
    batch, lq, heads, d = q.shape
    lk = k.shape[1]
    nq, nk = -(-lq // block_q), -(-lk // block_k)
    if tuple(block_mask.shape) not in ((heads, nq, nk), (batch, heads, nq, nk)):
        raise ValueError(f"block_sparse_attention: block_mask must have shape ([batch,] heads, q blocks, kv blocks) "
                         f"= ([{batch},] {heads}, {nq}, {nk}) for block sizes ({block_q}, {block_k}), "
                         f"got {tuple(block_mask.shape)}")
    if key_mask is not None and tuple(key_mask.shape) not in ((batch, lk), (batch, heads, lk)):
        raise ValueError(f"block_sparse_attention: key_mask must have shape {(batch, lk)} or {(batch, heads, lk)}, "
                         f"got {key_mask.shape}")
    impl = _resolve_impl(impl, interpret)
    _check_blocks(impl, block_q, block_k)

    concrete = _concrete(block_mask)  # None when traced
    block_mask = jnp.asarray(block_mask, bool) if concrete is None else concrete.astype(bool)
    block_mask = block_mask[None] if block_mask.ndim == 3 else block_mask  # [1 or B, H, nq, nk]
    if max_active_blocks is None:
        kv_width = max_active_blocks_of(concrete, axis=-1) if concrete is not None else nk
        q_width = max_active_blocks_of(concrete, axis=-2) if concrete is not None else nq
    else:
        kv_width, q_width = min(max_active_blocks, nk), nq

    d_kernel = d
    if impl == "triton":  # Triton tiles need power-of-two sizes; zero channels change nothing.
        d_kernel = max(16, 1 << (d - 1).bit_length())
    to_kernel = lambda x, length: _pad_axis(_pad_axis(jnp.swapaxes(x, 1, 2), 2, length), 3, d_kernel)
    qh, kh, vh = to_kernel(q, nq * block_q), to_kernel(k, nk * block_k), to_kernel(v, nk * block_k)

    key_valid = None
    if key_mask is not None or lk % block_k:
        valid = jnp.ones((batch, 1, lk), bool) if key_mask is None else jnp.asarray(key_mask, bool)
        valid = valid[:, None, :] if valid.ndim == 2 else valid  # [B, 1 or H, Lk]
        key_valid = jnp.broadcast_to(_pad_axis(valid.astype(jnp.int32), 2, nk * block_k), (batch, heads, nk * block_k))

    cfg = _Config(
        sm_scale=1.0 / math.sqrt(d) if scale is None else float(scale), block_q=block_q, block_k=block_k,
        kv_len=lk, int8_qk=int8_qk, int8_pv=int8_pv, impl=impl, interpret=interpret, out_dtype=q.dtype,
    )
    if impl == "xla":
        if max_blocks_per_head is None:
            max_blocks_per_head = (block_sparse_xla.max_blocks_per_head_of(concrete) if concrete is not None
                                   else nq * kv_width)
        pairs = block_sparse_xla.pair_table(block_mask, min(max_blocks_per_head, nq * nk))
        out = block_sparse_xla.attention(
            qh, kh, vh, key_valid, pairs, sm_scale=cfg.sm_scale, block_q=block_q, block_k=block_k, kv_len=lk,
            int8_qk=int8_qk, int8_pv=int8_pv, out_dtype=cfg.out_dtype)
    else:
        kv_table = mask_table(block_mask, kv_width)
        q_table = mask_table(block_mask.swapaxes(-1, -2), q_width)
        out = _kernel_attention(qh, kh, vh, key_valid, kv_table, q_table, cfg)
    return jnp.swapaxes(out[:, :, :lq, :d], 1, 2)
