"""Discriminators for adversarial distillation.

`Discriminator`: a diffusion backbone (a `DiffusionModel`, initialised from the teacher) run
on a noisy input x_t at time t, with a light head on the image tokens of several blocks
(TSCD, ADP's latent discriminator, ADM, DMD2's GAN branch). The backbone is either frozen
(its weights are `Frozen`; only the heads train; gradients still flow through it to the
input) or trainable. Each head gives one logit per image token (a patch discriminator);
the logits of all levels are returned side by side.

Pixel-space discriminators (ADP's second one) are `seedjax.models.discriminators.PatchDiscriminator`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from seedjax.models import generator, layers, mmdit
from seedjax.models.frozen import freeze
from seedjax.models.geometry import Geometry
from seedjax.models.attention import TokenLayout
from seedjax.parallel.sharding import constrain


def block_indices(dit: mmdit.MMDiT, levels) -> tuple[int, ...]:
    total = dit.cfg.depth_double + dit.cfg.depth_single
    out = []
    for level in levels:
        index = level + total if level < 0 else level
        if not 0 <= index < total:
            raise ValueError(f"discriminator level {level} is outside the backbone's {total} blocks")
        out.append(index)
    return tuple(sorted(set(out)))


def trunk_features(dit: mmdit.MMDiT, x, t, cond: dict, grid_hw, extras: dict, indices) -> list[jax.Array]:
    """Image-token features [B, N, hidden] after each block in `indices` (the MMDiT's forward
    pass, stopped after the deepest one; the output projection is never run)."""
    batch, num_img, _ = x.shape
    text, pooled, text_mask = cond["text_embeddings"], cond["pooled"], cond["text_mask"]
    num_txt = text.shape[1]
    vec = dit._conditioning(t, pooled, extras.get("guidance"), extras.get("target_size"), batch)
    cos, sin = dit._rope_tables(num_img, num_txt, grid_hw, None, None)
    key_mask = jnp.concatenate([text_mask.astype(bool), jnp.ones((batch, num_img), bool)], axis=1)
    attend_at = functools.partial(mmdit._attend, backend=dit.cfg.attention_backend,
                                  layout=TokenLayout(num_txt, tuple(grid_hw)), extra={})
    img = constrain(dit.x_embedder(x).astype(jnp.float32), mmdit.TOKENS)
    txt = constrain(dit.context_embedder(text).astype(jnp.float32), mmdit.TOKENS)
    # Unrolled or scanned (model.scan_layers) alike; no remat, as before.
    _, features = dit.run_blocks(img, txt, vec, cos, sin, key_mask, attend_at, sorted(set(indices)),
                                 last_layer=max(indices), remat=False)
    return features


class TokenHead(nnx.Module):
    """LayerNorm -> Linear -> SiLU -> Linear(1): one logit per token."""

    def __init__(self, width: int, hidden: int, *, rngs: nnx.Rngs):
        self.norm = layers.LayerNorm(width, rngs=rngs)
        self.mlp = layers.MLP(width, hidden, 1, rngs=rngs, activation_name="silu", names=("embed", "mlp", None))

    def __call__(self, features: jax.Array) -> jax.Array:
        return self.mlp(self.norm(features))[..., 0]


class MultiLevelHeads(nnx.Module):
    """One `TokenHead` per chosen block of a backbone: (backbone, x_t, t, captions) -> logits [B, levels * N]."""

    def __init__(self, backbone, disc_cfg, rngs: nnx.Rngs):
        self.indices = block_indices(backbone.dit, disc_cfg.levels)
        width = backbone.dit.cfg.num_heads * backbone.dit.cfg.head_dim
        self.heads = nnx.List([TokenHead(width, disc_cfg.head_hidden, rngs=rngs) for _ in self.indices])

    def __call__(self, backbone, x: jax.Array, t: jax.Array, batch: dict, geometry: Geometry, guidance=None):
        cond = backbone.condition(batch)
        extras = generator.extras(backbone.dit.cfg, batch, x.shape[0], guidance)
        feats = trunk_features(backbone.dit, x, t, cond, geometry.grid_hw, extras, self.indices)
        return jnp.concatenate([head(f) for head, f in zip(self.heads, feats)], axis=1)


class Discriminator(nnx.Module):
    """A diffusion backbone (frozen or trainable) with multi-level heads; see the module doc."""

    def __init__(self, config, disc_cfg, rngs: nnx.Rngs, *, guidance_embed: bool):
        backbone = generator.build(config, rngs, guidance_embed)
        self.backbone = backbone if disc_cfg.train_backbone else freeze(backbone)
        self.heads = MultiLevelHeads(backbone, disc_cfg, rngs)

    def __call__(self, x: jax.Array, t: jax.Array, batch: dict, geometry: Geometry, guidance=None) -> jax.Array:
        return self.heads(self.backbone, x, t, batch, geometry, guidance)
