"""The dense attention backend's CPU form (`heads_first_attention`: heads-first dots, hand-written
backward passes, long query sequences in blocks) against float64 attention and against
jax.nn.dot_product_attention."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seedjax.models import attention as attention_lib

B, L, H, D = 2, 7, 3, 8


def inputs(dtype=np.float64):
    rng = np.random.default_rng(0)
    q, k, v, w = (rng.standard_normal((B, L, H, D)).astype(dtype) for _ in range(4))
    mask = np.ones((B, L), bool)
    mask[1, 5:] = False  # padded keys of the second example
    return q, k, v, w, mask


def float64_attention(q, k, v, mask):
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(D)
    logits = np.where(mask[:, None, None, :], logits, -np.inf)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    return np.einsum("bhqk,bkhd->bqhd", p / p.sum(-1, keepdims=True), v)


def float64_grads(q, k, v, w, mask):
    """d/d(q, k, v) of sum(attention * w) by hand, in float64."""
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(D)
    logits = np.where(mask[:, None, None, :], logits, -np.inf)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    dp = np.einsum("bqhd,bkhd->bhqk", w, v)
    ds = p * (dp - (p * dp).sum(-1, keepdims=True)) / np.sqrt(D)
    return (np.einsum("bhqk,bkhd->bqhd", ds, k), np.einsum("bhqk,bqhd->bkhd", ds, q),
            np.einsum("bhqk,bqhd->bkhd", p, w))


@pytest.mark.parametrize("block", [None, 3, 1])  # stored probabilities; 3 blocks (2 queries padded); 7
def test_heads_first_attention_equals_float64_forward_and_backward(block):
    q, k, v, w, mask = inputs()
    f32 = [jnp.asarray(x, jnp.float32) for x in (q, k, v)]
    out = attention_lib.heads_first_attention(*f32, jnp.asarray(mask), block=block)
    np.testing.assert_allclose(np.asarray(out, np.float64), float64_attention(q, k, v, mask), atol=1e-6)
    loss = lambda q, k, v: jnp.sum(attention_lib.heads_first_attention(q, k, v, jnp.asarray(mask), block=block) * w)
    grads = jax.jit(jax.grad(loss, (0, 1, 2)))(*f32)
    for got, want in zip(grads, float64_grads(q, k, v, w, mask)):
        np.testing.assert_allclose(np.asarray(got, np.float64), want, atol=2e-6)
    assert not np.any(np.asarray(grads[1])[1, 5:]) and not np.any(np.asarray(grads[2])[1, 5:])  # padded keys


@pytest.mark.parametrize("block", [None, 3])
def test_heads_first_attention_equals_jax_and_keeps_the_dtype(block):
    q, k, v, w, mask = inputs(np.float32)
    for key_mask in (None, mask):
        ours = lambda q, k, v: jnp.sum(attention_lib.heads_first_attention(q, k, v, key_mask, block=block) * w)
        mask4 = None if key_mask is None else key_mask[:, None, None, :]
        theirs = lambda q, k, v: jnp.sum(jax.nn.dot_product_attention(q, k, v, mask=mask4) * w)
        for a, b in zip(jax.grad(ours, (0, 1, 2))(q, k, v), jax.grad(theirs, (0, 1, 2))(q, k, v)):
            np.testing.assert_allclose(a, b, atol=2e-6)
    bf16 = [jnp.asarray(x, jnp.bfloat16) for x in (q, k, v)]
    out = attention_lib.heads_first_attention(*bf16, block=block)
    grads = jax.grad(lambda *a: jnp.sum(attention_lib.heads_first_attention(*a, block=block).astype(jnp.float32)),
                     (0, 1, 2))(*bf16)
    assert out.dtype == jnp.bfloat16 and all(g.dtype == jnp.bfloat16 for g in grads)
    np.testing.assert_allclose(np.asarray(out, np.float32), float64_attention(q, k, v, np.ones((B, L), bool)),
                               atol=3e-2)


@pytest.mark.parametrize("implementation,expected", [(None, "heads_first"), ("xla", "jax.nn")])
def test_the_dense_backend_on_cpu_chooses_by_implementation(implementation, expected, monkeypatch):
    q, k, v, _, mask = inputs(np.float32)
    calls = []
    monkeypatch.setattr(attention_lib, "heads_first_attention", lambda *a: calls.append("heads_first") or a[0])
    monkeypatch.setattr(jax.nn, "dot_product_attention", lambda *a, **kw: calls.append("jax.nn") or a[0])
    attention_lib.attention(q, k, v, key_mask=mask, backend="dense", implementation=implementation)
    assert calls == [expected]


def test_long_query_sequences_run_in_equal_blocks_of_at_most_512():
    assert [attention_lib.query_block(n) for n in (7, 512, 513, 1056, 4096)] == [7, 512, 257, 352, 512]


def test_query_blocks_keep_no_probabilities_for_the_backward_pass():
    # One example, 2 heads, 1,024 queries: the probabilities alone are 8 MiB in float32. With
    # them stored, the gradient's buffers hold at least that; in blocks of 256, a block's 2 MiB.
    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.standard_normal((1, 1024, 2, 16)), jnp.float32) for _ in range(3))

    def temp_mib(block):
        grad = jax.jit(jax.grad(lambda q, k, v: jnp.sum(attention_lib.heads_first_attention(q, k, v, block=block)),
                                (0, 1, 2)))
        return grad.lower(q, k, v).compile().memory_analysis().temp_size_in_bytes / 2**20

    stored, blocked = temp_mib(1024), temp_mib(256)
    assert stored >= 8 and blocked < stored / 2, (stored, blocked)
