"""Block-sparse attention: Pallas kernels (interpret mode), XLA path, reference, dense.

The Pallas kernels run in interpret mode here; the GPU (Triton) and TPU (Mosaic) code
paths are additionally lowered for their platforms with `jax.export`, which checks that
they trace and lower but not that they compile or run on the hardware.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export

from seedjax.kernels import block_sparse_xla, quant
from seedjax.kernels.block_sparse_attention import (
    block_sparse_attention,
    mask_table,
    reference_block_sparse_attention,
)

# (impl, block_q, block_k): Mosaic needs key blocks of 128.
KERNELS = [("triton", 64, 64), ("mosaic", 64, 128)]
ALL_IMPLS = KERNELS + [("xla", 64, 64)]

# Interpret mode is dominated by XLA compile time; these tests need no optimized code.
_jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0,
                                                    "xla_llvm_disable_expensive_passes": True})


def _qkv(seed, batch, lq, lk, heads, d, dtype=jnp.float32):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((batch, lq, heads, d))
    k = rng.standard_normal((batch, lk, heads, d))
    v = rng.standard_normal((batch, lk, heads, d))
    return tuple(jnp.asarray(x, dtype) for x in (q, k, v))


def _random_mask(seed, heads, nq, nk, density=0.5):
    """Random block mask with one fully masked query block and one dense one."""
    mask = np.random.default_rng(seed).random((heads, nq, nk)) < density
    mask[0, 0] = False
    mask[-1, -1] = True
    return mask


def _attend(q, k, v, mask, impl, bq, bk, **kw):
    fn = _jit(lambda q, k, v, m: block_sparse_attention(
        q, k, v, m, block_q=bq, block_k=bk, impl=impl, interpret=impl != "xla", **kw))
    return fn(q, k, v, mask)


def _reference64(q, k, v, mask, bq, bk, **kw):
    with jax.enable_x64(True):
        to64 = lambda x: jnp.asarray(np.asarray(x), jnp.float64)
        km = kw.get("key_mask")
        out = reference_block_sparse_attention(to64(q), to64(k), to64(v), mask, block_q=bq, block_k=bk,
                                               key_mask=None if km is None else jnp.asarray(km))
        return np.asarray(out)


@pytest.mark.parametrize("impl,bq,bk,d", [("triton", 64, 64, 64), ("triton", 64, 64, 128), ("mosaic", 64, 128, 128)])
def test_full_mask_equals_dense(impl, bq, bk, d):
    q, k, v = _qkv(d, 1, 256, 256, 2, d)
    full = np.ones((2, 256 // bq, 256 // bk), bool)
    out = _attend(q, k, v, full, impl, bq, bk)
    dense = jax.nn.dot_product_attention(q, k, v)
    np.testing.assert_allclose(np.asarray(out), np.asarray(dense), atol=2e-6, rtol=0)


@pytest.mark.parametrize("impl,bq,bk,lq,lk,d", [
    ("triton", 64, 64, 256, 256, 64), ("triton", 64, 64, 200, 300, 128), ("triton", 32, 64, 77, 260, 64),
    ("mosaic", 64, 128, 200, 300, 64), ("mosaic", 32, 128, 77, 260, 128),
    ("xla", 64, 64, 200, 300, 128), ("xla", 32, 64, 77, 260, 64),
])
def test_random_masks_match_float64_reference(impl, bq, bk, lq, lk, d):
    """Partial last blocks, Lq != Lk, an empty row (output 0) and a dense row."""
    q, k, v = _qkv(lq + lk + d, 2, lq, lk, 2, d)
    mask = _random_mask(lq * lk, 2, -(-lq // bq), -(-lk // bk))
    out = np.asarray(_attend(q, k, v, mask, impl, bq, bk))
    ref = _reference64(q, k, v, mask, bq, bk)
    np.testing.assert_allclose(out, ref, atol=3e-6, rtol=0)
    assert np.all(out[0, :bq, 0] == 0.0), "a query block with no active key block must output exactly 0"


@pytest.mark.parametrize("impl,bq,bk", ALL_IMPLS)
def test_gradients_match_reference(impl, bq, bk):
    """Per-sample block masks, a key mask, partial blocks and an empty query block."""
    lq, lk = 100, 200
    q, k, v = _qkv(7, 2, lq, lk, 2, 64)
    # One mask per sample ([B, H, nq, nk]), so the per-sample tables are covered too.
    mask = np.stack([_random_mask(seed, 2, -(-lq // bq), -(-lk // bk)) for seed in (8, 9)])
    key_mask = np.random.default_rng(9).random((2, lk)) < 0.8
    weights = jnp.asarray(np.random.default_rng(10).standard_normal(q.shape), jnp.float32)

    def loss(fn):
        return lambda q, k, v: jnp.sum(weights * fn(q, k, v))

    grads = _jit(jax.grad(loss(lambda q, k, v: block_sparse_attention(
        q, k, v, mask, key_mask=key_mask, block_q=bq, block_k=bk, impl=impl, interpret=impl != "xla")), (0, 1, 2)))(
        q, k, v)
    with jax.enable_x64(True):
        to64 = lambda x: jnp.asarray(np.asarray(x), jnp.float64)
        ref = jax.grad(loss(lambda q, k, v: reference_block_sparse_attention(
            q, k, v, mask, key_mask=key_mask, block_q=bq, block_k=bk)), (0, 1, 2))(to64(q), to64(k), to64(v))
        ref = [np.asarray(g) for g in ref]
    for name, got, want in zip("qkv", grads, ref):
        np.testing.assert_allclose(np.asarray(got), want, atol=2e-5, rtol=0, err_msg=f"d{name}")


@pytest.mark.parametrize("impl,bq,bk", KERNELS)
def test_key_mask_and_fully_masked_rows(impl, bq, bk):
    """Keys masked per batch element; a row whose active blocks hold only masked keys gets 0."""
    q, k, v = _qkv(3, 2, 128, 256, 2, 64)
    key_mask = np.ones((2, 256), bool)
    key_mask[1, :128] = False
    mask = np.zeros((2, 128 // bq, 256 // bk), bool)
    mask[:, :, 0] = True  # every row attends only to the first 128 keys ...
    mask[1, -1, -1] = True  # ... except the last query block of head 1
    out = np.asarray(_attend(q, k, v, mask, impl, bq, bk, key_mask=key_mask))
    ref = _reference64(q, k, v, mask, bq, bk, key_mask=key_mask)
    np.testing.assert_allclose(out, ref, atol=3e-6, rtol=0)
    assert np.all(out[1, :, 0] == 0.0) and np.all(np.isfinite(out))


def test_bfloat16_inputs():
    q, k, v = _qkv(4, 1, 192, 192, 2, 64, jnp.bfloat16)
    mask = _random_mask(5, 2, 3, 3, density=0.7)
    out = _attend(q, k, v, mask, "triton", 64, 64)
    assert out.dtype == jnp.bfloat16
    ref = _reference64(q, k, v, mask, 64, 64)
    np.testing.assert_allclose(np.asarray(out, np.float32), ref, atol=3e-2, rtol=0)


def _offset_qkv(seed, d):
    """Gaussian Q, V with per-channel magnitudes; K with a large per-channel offset (the
    case key smoothing is for)."""
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((1, 256, 2, d)) * 1.5
    k = rng.standard_normal((1, 256, 2, d)) + 2.0 * rng.standard_normal((1, 1, 2, d))
    v = rng.standard_normal((1, 256, 2, d)) * rng.uniform(0.2, 3.0, (1, 1, 1, d))
    return tuple(jnp.asarray(x, jnp.float32) for x in (q, k, v))


@pytest.mark.parametrize("impl,bq,bk,d", [("triton", 64, 64, 64), ("mosaic", 64, 128, 128), ("xla", 64, 64, 128)])
def test_int8_exact_on_dequantized_operands_and_within_stated_bound(impl, bq, bk, d):
    """INT8 products are exact: INT8 Q.K attention equals float64 attention on the
    dequantized Q and smoothed, dequantized K. Against float attention the error stays
    within the bound stated in the module docstring."""
    q, k, v = _offset_qkv(d, d)
    mask = _random_mask(d + 1, 2, 256 // bq, 256 // bk, density=0.6)
    out_qk, out_qkpv = _jit(lambda q, k, v: [
        block_sparse_attention(q, k, v, mask, block_q=bq, block_k=bk, impl=impl, interpret=impl != "xla",
                               int8_qk=True, int8_pv=pv) for pv in (False, True)])(q, k, v)

    qh, kh = jnp.swapaxes(q, 1, 2), jnp.swapaxes(k, 1, 2)
    q_deq = jnp.swapaxes(quant.fake_quantize_token_blocks(qh, bq), 1, 2)
    k_deq = jnp.swapaxes(quant.fake_quantize_token_blocks(quant.smooth_keys(kh, 256), bk), 1, 2)
    np.testing.assert_allclose(np.asarray(out_qk), _reference64(q_deq, k_deq, v, mask, bq, bk), atol=1e-5, rtol=0)

    ref = _reference64(q, k, v, mask, bq, bk)
    for name, out, bound in (("int8 qk", out_qk, 0.03), ("int8 qk+pv", out_qkpv, 0.04)):
        out = np.asarray(out, np.float64)
        rel = np.linalg.norm(out - ref) / np.linalg.norm(ref)
        cos = np.sum(out * ref) / np.linalg.norm(out) / np.linalg.norm(ref)
        assert rel <= bound and cos >= 0.999, (name, rel, cos)


def test_int8_gradients_are_float_gradients():
    q, k, v = _qkv(13, 1, 128, 128, 2, 64)
    mask = _random_mask(14, 2, 2, 2, density=0.7)

    weights = jnp.asarray(np.random.default_rng(15).standard_normal(q.shape), jnp.float32)

    def grad(**kw):  # a linear loss, so the output cotangent does not depend on the output
        f = lambda q, k, v: jnp.sum(weights * block_sparse_attention(q, k, v, mask, impl="triton", interpret=True, **kw))
        return _jit(jax.grad(f, (0, 1, 2)))(q, k, v)

    for got, want in zip(grad(int8_qk=True, int8_pv=True), grad()):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_mask_table_lists_active_blocks_and_pads_with_last():
    mask = np.array([[[0, 1, 0, 1], [0, 0, 0, 0], [1, 1, 1, 1]]], bool)
    table = np.asarray(mask_table(mask, 4))
    np.testing.assert_array_equal(table[0, 0], [2, 1, 3, 3, 3])
    np.testing.assert_array_equal(table[0, 1, 0], 0)
    np.testing.assert_array_equal(table[0, 2], [4, 0, 1, 2, 3])
    np.testing.assert_array_equal(np.asarray(mask_table(mask, 2))[0, 2], [2, 0, 1])  # truncated to the width
    np.testing.assert_array_equal(np.asarray(mask_table(jnp.asarray(mask), 4)), table)  # traced-mask path


def test_xla_pair_table_lists_active_blocks_row_major_and_pads_with_last():
    mask = np.array([[[0, 1, 0, 1], [0, 0, 0, 0], [1, 1, 1, 1]]], bool)
    table = block_sparse_xla.pair_table(mask, 8)
    # rows: (count, query block, key block); the two padding slots repeat the last pair (2, 3).
    np.testing.assert_array_equal(table[0], [[6] * 8, [0, 0, 2, 2, 2, 2, 2, 2], [1, 3, 0, 1, 2, 3, 3, 3]])
    np.testing.assert_array_equal(block_sparse_xla.pair_table(mask, 3)[0], [[3] * 3, [0, 0, 2], [1, 3, 0]])
    np.testing.assert_array_equal(np.asarray(block_sparse_xla.pair_table(jnp.asarray(mask), 8)), table)  # traced path
    np.testing.assert_array_equal(block_sparse_xla.pair_table(np.zeros((1, 2, 2), bool), 2)[0], np.zeros((3, 2)))


def test_xla_work_is_the_active_blocks_when_text_rows_are_dense():
    """A PARO-shaped mask: query and key block 0 hold text (dense row and column), the
    visual rows keep their diagonal block (head 1 one more). Rows padded to the widest
    row would compute all 5 x 5 blocks; the xla path computes the densest head's active
    blocks, 5 + 4 x 2 + 1 = 14 of 25, and still equals the float64 reference forward
    and backward, with the mask traced (chosen inside jit) and the bound passed."""
    heads, blocks, block = 2, 5, 16
    mask = np.zeros((heads, blocks, blocks), bool)
    mask[:, 0, :] = mask[:, :, 0] = True
    mask[:, np.arange(blocks), np.arange(blocks)] = True
    mask[1, 3, 1] = True
    assert block_sparse_xla.computed_fraction(mask) == 14 / 25
    assert block_sparse_xla.computed_fraction(mask, max_blocks_per_head=20) == 20 / 25

    lq = blocks * block - 6  # a partial last block
    q, k, v = _qkv(21, 1, lq, lq, heads, 32)
    weights = jnp.asarray(np.random.default_rng(22).standard_normal(q.shape), jnp.float32)

    def out_and_grads(attend, q, k, v):
        out, vjp = jax.vjp(attend, q, k, v)
        return out, vjp(weights.astype(out.dtype))

    got = _jit(lambda m, q, k, v: out_and_grads(lambda q, k, v: block_sparse_attention(
        q, k, v, m, block_q=block, block_k=block, impl="xla", max_blocks_per_head=14), q, k, v))(mask, q, k, v)
    with jax.enable_x64(True):
        to64 = lambda x: jnp.asarray(np.asarray(x), jnp.float64)
        want = out_and_grads(lambda q, k, v: reference_block_sparse_attention(
            q, k, v, mask, block_q=block, block_k=block), to64(q), to64(k), to64(v))
    np.testing.assert_allclose(np.asarray(got[0]), np.asarray(want[0]), atol=3e-6, rtol=0)
    for name, g, w in zip("qkv", got[1], want[1]):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=2e-5, rtol=0, err_msg=f"d{name}")


def test_traced_mask_under_jit():
    """A mask chosen inside jit (e.g. per timestep bucket) works, with and without a width."""
    q, k, v = _qkv(15, 1, 128, 128, 2, 64)
    masks = jnp.asarray(np.stack([_random_mask(s, 2, 2, 2) for s in (16, 17)]))

    @functools.partial(_jit, static_argnums=1)
    def f(bucket, width_given):
        return [block_sparse_attention(q, k, v, masks[bucket], impl="triton", interpret=True,
                                       max_active_blocks=2 if width_given else None)]

    for bucket in (0, 1):
        ref = _reference64(q, k, v, np.asarray(masks[bucket]), 64, 64)
        for width_given in (False, True):
            np.testing.assert_allclose(np.asarray(f(bucket, width_given)[0]), ref, atol=3e-6)


def test_bad_inputs_raise_clear_errors():
    q, k, v = _qkv(0, 1, 128, 128, 2, 64)
    with pytest.raises(ValueError, match=r"block_mask must have shape \(\[batch,\] heads, q blocks, kv blocks\) = \(\[1,\] 2, 2, 2\)"):
        block_sparse_attention(q, k, v, np.ones((2, 2, 3), bool))
    with pytest.raises(ValueError, match="impl must be one of"):
        block_sparse_attention(q, k, v, np.ones((2, 2, 2), bool), impl="cuda")
    with pytest.raises(ValueError, match="block_k % 128 == 0"):
        block_sparse_attention(q, k, v, np.ones((2, 2, 2), bool), impl="mosaic")
    with pytest.raises(ValueError, match=r"key_mask must have shape \(1, 128\)"):
        block_sparse_attention(q, k, v, np.ones((2, 2, 2), bool), key_mask=np.ones((1, 64), bool))


@pytest.mark.parametrize("impl,platform,target", [("triton", "cuda", "__gpu$xla.gpu.triton"),
                                                  ("mosaic", "tpu", "tpu_custom_call")])
def test_compiled_paths_lower_for_their_platform(impl, platform, target):
    """Forward (float and INT8) and backward lower to Triton / Mosaic kernels."""
    lq, heads, d = 1000, 2, 128
    bk = 64 if impl == "triton" else 128
    mask = np.random.default_rng(0).random((heads, -(-lq // 64), -(-lq // bk))) < 0.3
    spec = jax.ShapeDtypeStruct((1, lq, heads, d), jnp.bfloat16)

    def loss(q, k, v):
        out = block_sparse_attention(q, k, v, mask, block_q=64, block_k=bk, impl=impl, int8_qk=True, int8_pv=True)
        return jnp.sum(out.astype(jnp.float32))

    exported = export.export(_jit(jax.value_and_grad(loss, (0, 1, 2))), platforms=[platform],
                             disabled_checks=[export.DisabledSafetyCheck.custom_call(target)])(spec, spec, spec)
    # INT8 forward, float forward for the residuals, dq, dk/dv.
    assert exported.mlir_module().count(f"@{target}(") == 4
