"""Text encoder vs an independent PyTorch reference; padding; the conditioning helper."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from data_pipelines.core import tokenizer
from seedjax.models import text
from seedjax.schema.models import text_config

torch = pytest.importorskip("torch")


def small_encoder(seed=0):
    cfg = text_config()
    cfg.update(width=32, depth=2, num_heads=4, max_len=16)
    model = text.TextEncoder(cfg, rngs=nnx.Rngs(seed))
    rng = np.random.default_rng(seed)  # non-trivial norm scales and biases too
    state = nnx.state(model, nnx.Param)
    nnx.update(model, jax.tree.map(lambda x: x + jnp.asarray(0.1 * rng.standard_normal(x.shape), x.dtype), state))
    return model


def torch_reference(model, tokens, mask):
    """Same weights through torch.nn.MultiheadAttention (key_padding_mask) and torch ops, float64."""
    t = lambda a: torch.from_numpy(np.asarray(a, np.float64))
    ln = lambda x, norm: torch.nn.functional.layer_norm(x, x.shape[-1:], t(norm.scale[...]), t(norm.bias[...]), 1e-6)
    lin = lambda x, layer: x @ t(layer.kernel[...]) + t(layer.bias[...])
    cfg = model.cfg
    x = t(model.token_embed.embedding[...])[torch.from_numpy(np.asarray(tokens, np.int64))]
    x = x + t(model.pos_embed[...])[: tokens.shape[1]]
    pad = torch.from_numpy(~np.asarray(mask))
    for layer in model.layers:
        mha = torch.nn.MultiheadAttention(cfg.width, cfg.num_heads, batch_first=True, dtype=torch.float64)
        with torch.no_grad():
            mha.in_proj_weight.copy_(torch.cat([t(l.kernel[...]).T for l in (layer.q, layer.k, layer.v)]))
            mha.in_proj_bias.copy_(torch.cat([t(l.bias[...]) for l in (layer.q, layer.k, layer.v)]))
            mha.out_proj.weight.copy_(t(layer.out.kernel[...]).T)
            mha.out_proj.bias.copy_(t(layer.out.bias[...]))
            h = ln(x, layer.attn_norm)
            x = x + mha(h, h, h, key_padding_mask=pad, need_weights=False)[0]
            h = torch.nn.functional.gelu(lin(ln(x, layer.mlp_norm), layer.mlp.up), approximate="tanh")
            x = x + lin(h, layer.mlp.down)
    x = ln(x, model.final_norm) * (~pad)[..., None]
    pooled = x.sum(1) / (~pad).sum(1, keepdim=True)
    return x.numpy(), pooled.numpy()


def test_matches_torch_reference_with_padding():
    model = small_encoder()
    tokens, mask = tokenizer.tokenize(["seven", "a red 3 on the left", ""], max_len=16)
    emb, pooled = model(jnp.asarray(tokens), jnp.asarray(mask))
    ref_emb, ref_pooled = torch_reference(model, tokens, mask)
    np.testing.assert_allclose(np.asarray(emb), ref_emb, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(pooled), ref_pooled, rtol=1e-4, atol=1e-4)
    assert emb.shape == (3, 16, 32) and pooled.shape == (3, 32)


def test_padding_tokens_do_not_matter():
    model = small_encoder(1)
    tokens, mask = tokenizer.tokenize(["two blue digits", "9"], max_len=16)
    emb, pooled = model(jnp.asarray(tokens), jnp.asarray(mask))
    garbage = np.where(mask, tokens, np.random.default_rng(0).integers(3, 200, tokens.shape)).astype(np.int32)
    emb2, pooled2 = model(jnp.asarray(garbage), jnp.asarray(mask))
    np.testing.assert_allclose(np.asarray(emb2), np.asarray(emb), atol=1e-6)
    np.testing.assert_allclose(np.asarray(pooled2), np.asarray(pooled), atol=1e-6)
    # ... whereas without the mask the same change does reach the valid tokens.
    emb3, _ = model(jnp.asarray(garbage), jnp.ones(mask.shape, bool))
    assert np.abs(np.asarray(emb3) - np.asarray(emb))[mask].max() > 1e-3


def test_text_conditioning_sources_and_errors():
    model = small_encoder()
    tokens, mask = tokenizer.tokenize(["one", "four fives"], max_len=16)
    emb, out_mask, pooled = text.text_conditioning(model, {"tokens": jnp.asarray(tokens), "text_mask": jnp.asarray(mask)})
    ref_emb, ref_pooled = model(jnp.asarray(tokens), jnp.asarray(mask))
    np.testing.assert_array_equal(np.asarray(emb), np.asarray(ref_emb))
    np.testing.assert_array_equal(np.asarray(pooled), np.asarray(ref_pooled))
    np.testing.assert_array_equal(np.asarray(out_mask), mask)
    # Mask derived from PAD when the batch has none.
    _, derived, _ = text.text_conditioning(model, {"tokens": jnp.asarray(tokens)})
    np.testing.assert_array_equal(np.asarray(derived), mask)

    pre = {"text_embeddings": jnp.ones((2, 5, 8)), "pooled": jnp.zeros((2, 8))}
    e, m, p = text.text_conditioning(None, pre)
    assert e is pre["text_embeddings"] and p is pre["pooled"] and m.shape == (2, 5) and bool(m.all())

    with pytest.raises(ValueError, match="no 'pooled'"):
        text.text_conditioning(None, {"text_embeddings": jnp.ones((2, 5, 8))})
    with pytest.raises(ValueError, match="no text encoder"):
        text.text_conditioning(None, {"tokens": jnp.asarray(tokens)})
    with pytest.raises(ValueError, match=r"need 'tokens' or 'text_embeddings'.*\['image'\]"):
        text.text_conditioning(model, {"image": jnp.zeros((2, 8, 8, 1))})
    with pytest.raises(ValueError, match=r"T<=16.*\(2, 20\)"):
        model(jnp.zeros((2, 20), jnp.int32))


def test_the_tokenizer_writes_the_text_encoders_token_contract():
    """data_pipelines' byte tokenizer and the text encoder agree on the special ids, the
    vocabulary and the empty caption (CFG's unconditional input), without importing each other."""
    from data_pipelines.core import tokenizer
    from seedjax.models import text

    assert (tokenizer.PAD, tokenizer.BOS, tokenizer.EOS, tokenizer.VOCAB_SIZE) == \
        (text.PAD, text.BOS, text.EOS, text.BYTE_VOCAB_SIZE)
    tokens, mask = tokenizer.tokenize([""], 7)
    empty_tokens, empty_mask = text.empty_caption(7)
    np.testing.assert_array_equal(np.asarray(empty_tokens), tokens[0])
    np.testing.assert_array_equal(np.asarray(empty_mask), mask[0])
