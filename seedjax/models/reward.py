"""A small vision-language reward model with a yes/no readout per reward dimension.

Seedream 3.0's reward model is a VLM asked "does this image match the instruction?" whose
reward is the normalised probability of answering "Yes"; several such questions give several
reward dimensions (Seedance 1.0: alignment, motion, aesthetics). This is that model at the size
of the bundled data:

    image -> conv stem -> patches -> Linear ─┐
    caption tokens -> embedding ─────────────┼─ [image, text, question_1..H] -> transformer -> LN
    one learned "question" token per head ───┘        (bidirectional, padding masked)
                                                   question_h's output -> answer -> (no, yes) logits

Every head shares the transformer and the two-word answer readout; a head is its question
token, like a different instruction given to the same VLM. `score` is the log-odds of "yes"
(logit(p_yes) with p_yes = softmax over (no, yes), i.e. Seedream's normalised Yes probability).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from seedjax.models import layers, mmdit, text
from seedjax.models.text import TextLayer
from seedjax.parallel.sharding import constrain

ANSWERS = ("no", "yes")


def validate_config(cfg) -> None:
    if not cfg.heads or len(set(cfg.heads)) != len(cfg.heads):
        raise ValueError(f"reward_model.heads must be distinct names, got {tuple(cfg.heads)}")
    if cfg.image_size % cfg.patch_size:
        raise ValueError(f"reward_model.image_size {cfg.image_size} is not divisible by patch_size {cfg.patch_size}")
    if cfg.width % cfg.num_heads:
        raise ValueError(f"reward_model.width {cfg.width} is not divisible by num_heads {cfg.num_heads}")
    if cfg.channels not in (1, 3):
        raise ValueError(f"reward_model.channels must be 1 or 3, got {cfg.channels}")


class RewardModel(nnx.Module):
    """(images [B, H, W, C] in [-1, 1], tokens [B, T], text_mask [B, T]) -> (no, yes) logits [B, heads, 2]."""

    def __init__(self, cfg: ml_collections.ConfigDict, rngs: nnx.Rngs):
        validate_config(cfg)
        self.cfg = cfg = ml_collections.FrozenConfigDict(cfg)
        dtype = layers.compute_dtype(cfg.dtype)
        width, p = cfg.width, cfg.patch_size
        conv = lambda cin, cout: nnx.Conv(
            cin, cout, (3, 3), kernel_init=nnx.with_partitioning(nnx.initializers.he_normal(), (
                "conv_spatial", "conv_spatial", "conv_in", "conv_out")),
            bias_init=nnx.with_partitioning(nnx.initializers.zeros, ("conv_out",)), rngs=rngs)
        stem = cfg.stem_channels
        self.stem = nnx.List([conv(cfg.channels, stem), conv(stem, stem)]) if stem else None
        patch_features = p * p * (stem or cfg.channels)
        num_patches = (cfg.image_size // p) ** 2
        self.patch_embed = layers.Linear(patch_features, width, rngs=rngs, names=("in_features", "embed"), dtype=dtype)
        self.image_pos = layers.param(rngs, nnx.initializers.normal(0.02), (num_patches, width), (None, "embed"))
        self.token_embed = layers.Embed(cfg.vocab_size, width, rngs=rngs)
        self.text_pos = layers.param(rngs, nnx.initializers.normal(0.02), (cfg.max_text_len, width), (None, "embed"))
        self.questions = layers.param(rngs, nnx.initializers.normal(0.02), (len(cfg.heads), width), (None, "embed"))
        self.layers = nnx.List([
            TextLayer(width, cfg.num_heads, int(width * cfg.mlp_ratio), rngs=rngs, dtype=dtype)
            for _ in range(cfg.depth)
        ])
        self.final_norm = layers.LayerNorm(width, rngs=rngs, use_scale=True, use_bias=True)
        self.answer = layers.Linear(width, len(ANSWERS), rngs=rngs, names=("embed", None), dtype=dtype)

    def head_index(self, name: str) -> int:
        if name not in self.cfg.heads:
            raise ValueError(f"reward model has no head {name!r}; its heads are {tuple(self.cfg.heads)}")
        return tuple(self.cfg.heads).index(name)

    def _image_tokens(self, images: jax.Array) -> jax.Array:
        cfg = self.cfg
        if images.ndim != 4 or images.shape[-1] != cfg.channels:
            raise ValueError(f"reward model: images must be [B, H, W, {cfg.channels}], got shape {images.shape}")
        x = jnp.clip(images.astype(jnp.float32), -1.0, 1.0)
        if x.shape[1:3] != (cfg.image_size, cfg.image_size):
            x = jax.image.resize(x, (x.shape[0], cfg.image_size, cfg.image_size, x.shape[-1]), "linear")
        if self.stem is not None:
            for conv in self.stem:
                x = jax.nn.gelu(conv(x))
        x = self.patch_embed(mmdit.patchify(x, cfg.patch_size)).astype(jnp.float32)
        return x + self.image_pos[...][None]

    def __call__(self, images: jax.Array, tokens: jax.Array, text_mask: jax.Array | None = None) -> jax.Array:
        cfg = self.cfg
        batch, length = tokens.shape
        if length > cfg.max_text_len:
            raise ValueError(f"reward model: {length} text tokens, reward_model.max_text_len is {cfg.max_text_len}")
        if images.shape[0] != batch:
            raise ValueError(f"reward model: {images.shape[0]} images but {batch} captions")
        mask = (tokens != text.PAD) if text_mask is None else text_mask.astype(bool)
        img = self._image_tokens(images)
        txt = self.token_embed(tokens).astype(jnp.float32) + self.text_pos[...][None, :length]
        questions = jnp.broadcast_to(self.questions[...][None], (batch, *self.questions.shape))
        x = constrain(jnp.concatenate([img, txt, questions], axis=1), ("batch", "seq", "act_embed"))
        key_mask = jnp.concatenate([jnp.ones((batch, img.shape[1]), bool), mask,
                                    jnp.ones((batch, questions.shape[1]), bool)], axis=1)
        for layer in self.layers:
            x = layer(x, key_mask)
        answers = self.final_norm(x[:, -len(cfg.heads):])
        return self.answer(answers).astype(jnp.float32)

    def score(self, images: jax.Array, tokens: jax.Array, text_mask: jax.Array | None = None) -> jax.Array:
        """Log-odds of "yes" per head, [B, heads]: logit of the normalised Yes probability."""
        logits = self(images, tokens, text_mask)
        return logits[..., 1] - logits[..., 0]
