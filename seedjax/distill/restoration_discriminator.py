"""SeedVR2's discriminator: the restoration DiT itself, initialised from the multi-step model,
with a patch head and its features for feature matching.

The backbone has the generator's architecture and reads a clean clip (real or restored) at t = 0
beside the same degraded clip and mask channel the generator was given (a conditional
discriminator: it judges a restoration *of this input*). The visual tokens after the blocks in
`feature_blocks` are returned for the feature-matching loss; the deepest of them goes through a
small head to one logit per token (a patch discriminator). The whole network trains.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from seedjax.distill.discriminator import TokenHead
from seedjax.models import generator
from seedjax.models.geometry import Geometry


def feature_block_indices(depth: int, blocks) -> tuple[int, ...]:
    """`blocks` (negative: from the end) as sorted indices into a backbone of `depth` blocks."""
    out = sorted({b + depth if b < 0 else b for b in (int(b) for b in blocks)})
    if not out or out[0] < 0 or out[-1] >= depth:
        raise ValueError(f"feature_blocks {tuple(blocks)} must name blocks of the {depth}-block backbone")
    return tuple(out)


class RestorationDiscriminator(nnx.Module):
    def __init__(self, config, rngs: nnx.Rngs, head_hidden: int, feature_blocks):
        self.backbone = generator.build(config, rngs, guidance_embed=False)
        self.feature_blocks = feature_block_indices(config.model.depth, feature_blocks)
        width = config.model.num_heads * config.model.head_dim
        self.head = TokenHead(width, head_hidden, rngs=rngs)

    def __call__(self, tokens: jax.Array, batch: dict, geometry: Geometry) -> tuple[jax.Array, list[jax.Array]]:
        """Clean clips tokens [B, N, C] conditioned as `batch` says (captions, degraded clip) ->
        (logits [B, N], [features [B, N, hidden] after each of `feature_blocks`])."""
        t = jnp.zeros((tokens.shape[0],), jnp.float32)
        _, features = self.backbone(tokens, t, self.backbone.condition(batch), geometry,
                                    feature_blocks=self.feature_blocks)
        return self.head(features[-1]), features
