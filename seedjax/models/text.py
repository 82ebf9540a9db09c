"""A small text encoder trained jointly with the DiT, and the one way stages get text conditioning.

Byte tokens (`data_pipelines.core.tokenizer`) -> token embedding + learned positions -> pre-norm
transformer layers (padding keys masked) -> final LayerNorm -> per-token embeddings
[B, T, width] and their masked mean `pooled` [B, width]. The MMDiT takes both
(cfg.text_dim = cfg.pooled_dim = width).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from seedjax.models import layers
from seedjax.models.attention import attention
from seedjax.parallel.sharding import constrain

TOKENS = ("batch", "seq", "act_embed")

# The token contract of the text encoder, which the byte tokenizer of the data pipeline
# (data_pipelines.core.tokenizer) writes: PAD, BOS, EOS, then UTF-8 bytes shifted by 3.
# Data never imports models and models never import data; tests/test_text_encoder.py checks
# that both sides agree.
PAD, BOS, EOS = 0, 1, 2
BYTE_VOCAB_SIZE = 3 + 256


def empty_caption(length: int) -> tuple[jax.Array, jax.Array]:
    """Tokens [length] and mask of the empty caption (BOS, EOS, padding): CFG's unconditional input."""
    tokens = jnp.zeros((length,), jnp.int32).at[0].set(BOS).at[1].set(EOS)
    return tokens, tokens != PAD


def train_flops_per_example(cfg: ml_collections.ConfigDict, num_tokens: int) -> float:
    """Analytic training FLOPs (3 x forward matmuls incl. attention) for `num_tokens` tokens."""
    d, m, t = cfg.width, int(cfg.width * cfg.mlp_ratio), num_tokens
    per_layer = t * (4 * d * d + 2 * d * m) + 2 * t * t * d
    return 3.0 * 2.0 * float(cfg.depth * per_layer)


class TextLayer(nnx.Module):
    """Pre-norm transformer layer: x + attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, width: int, num_heads: int, mlp_hidden: int, *, rngs: nnx.Rngs, dtype):
        self.num_heads = num_heads
        self.attn_norm = layers.LayerNorm(width, rngs=rngs, use_scale=True, use_bias=True)
        self.q = layers.Linear(width, width, rngs=rngs, names=("embed", "heads"), dtype=dtype)
        self.k = layers.Linear(width, width, rngs=rngs, names=("embed", "heads"), dtype=dtype)
        self.v = layers.Linear(width, width, rngs=rngs, names=("embed", "heads"), dtype=dtype)
        self.out = layers.Linear(width, width, rngs=rngs, names=("heads", "embed"), dtype=dtype)
        self.mlp_norm = layers.LayerNorm(width, rngs=rngs, use_scale=True, use_bias=True)
        self.mlp = layers.MLP(width, mlp_hidden, width, rngs=rngs, activation_name="gelu_tanh", dtype=dtype)

    def __call__(self, x: jax.Array, key_mask: jax.Array | None) -> jax.Array:
        h = self.attn_norm(x)
        split = lambda y: y.reshape(*y.shape[:-1], self.num_heads, -1)
        attn = attention(split(self.q(h)), split(self.k(h)), split(self.v(h)), key_mask=key_mask)
        x = x + self.out(attn.reshape(x.shape[:-1] + (-1,)))
        x = x + self.mlp(self.mlp_norm(x))
        return constrain(x, TOKENS)


class TextEncoder(nnx.Module):
    def __init__(self, cfg: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
        if cfg.width % cfg.num_heads:
            raise ValueError(f"text encoder width {cfg.width} is not divisible by num_heads {cfg.num_heads}")
        if cfg.vocab_size < BYTE_VOCAB_SIZE:
            raise ValueError(f"text encoder vocab_size {cfg.vocab_size} is below the byte tokenizer's {BYTE_VOCAB_SIZE}")
        self.cfg = cfg = ml_collections.FrozenConfigDict(cfg)  # hashable: nnx.jit-able GraphDef
        dtype = layers.compute_dtype(cfg.dtype)
        self.token_embed = layers.Embed(cfg.vocab_size, cfg.width, rngs=rngs)
        self.pos_embed = layers.param(rngs, nnx.initializers.normal(0.02), (cfg.max_len, cfg.width), (None, "embed"))
        self.layers = nnx.List([
            TextLayer(cfg.width, cfg.num_heads, int(cfg.width * cfg.mlp_ratio), rngs=rngs, dtype=dtype)
            for _ in range(cfg.depth)
        ])
        self.final_norm = layers.LayerNorm(cfg.width, rngs=rngs, use_scale=True, use_bias=True)

    def __call__(self, tokens: jax.Array, mask: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        """tokens int [B, T], mask bool [B, T] (None = tokens != PAD) ->
        (embeddings float32 [B, T, width], zero at padding; pooled float32 [B, width], masked mean)."""
        if tokens.ndim != 2 or tokens.shape[1] > self.cfg.max_len:
            raise ValueError(f"text encoder: tokens must be [B, T<={self.cfg.max_len}], got shape {tokens.shape}")
        mask = (tokens != PAD) if mask is None else mask.astype(bool)
        if mask.shape != tokens.shape:
            raise ValueError(f"text encoder: mask shape {mask.shape} != tokens shape {tokens.shape}")
        x = self.token_embed(tokens).astype(jnp.float32) + self.pos_embed[...][None, : tokens.shape[1]]
        x = constrain(x, TOKENS)
        for layer in self.layers:
            x = layer(x, mask)
        weights = mask.astype(jnp.float32)[..., None]
        x = self.final_norm(x) * weights
        pooled = jnp.sum(x, axis=1) / jnp.maximum(jnp.sum(weights, axis=1), 1.0)
        return x, pooled


def text_conditioning(encoder: TextEncoder | None, batch: dict) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(text_embeddings [B, T, D], text_mask [B, T] bool, pooled [B, D]) for a batch.

    Precomputed `text_embeddings` + `pooled` (+ optional `text_mask`) are used as they are;
    otherwise `tokens` (+ optional `text_mask`) go through `encoder`.
    """
    if "text_embeddings" in batch:
        if "pooled" not in batch:
            raise ValueError("batch has 'text_embeddings' but no 'pooled'; precomputed text needs both")
        embeddings = batch["text_embeddings"]
        mask = batch.get("text_mask")
        mask = jnp.ones(embeddings.shape[:2], bool) if mask is None else mask.astype(bool)
        return embeddings, mask, batch["pooled"]
    if "tokens" in batch:
        if encoder is None:
            raise ValueError("batch has 'tokens' but no text encoder was given to encode them")
        mask = batch.get("text_mask")
        mask = (batch["tokens"] != PAD) if mask is None else mask.astype(bool)
        embeddings, pooled = encoder(batch["tokens"], mask)
        return embeddings, mask, pooled
    raise ValueError(f"batch has no text: need 'tokens' or 'text_embeddings'+'pooled', got keys {sorted(batch)}")
