"""AAPT's discriminator: the block-causal video DiT, initialised from the diffusion model, with one
logit per latent frame.

The backbone has the generator's architecture (block-causal attention, the recycled previous
frame as input) and starts from the adapted diffusion model's weights; all of it trains. It reads
a clean clip at t = 0 with its captions; its last block's visual tokens, averaged over each frame,
go through a small head to one logit per frame. Block-causal attention makes frame f's logit a
function of frames 0..f only, so a long video can be judged segment by segment.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from seedjax.distill.discriminator import TokenHead
from seedjax.models import generator, video_dit
from seedjax.models.geometry import Geometry


class FrameDiscriminator(nnx.Module):
    def __init__(self, config, rngs: nnx.Rngs, head_hidden: int):
        self.backbone = generator.build(config, rngs, guidance_embed=False)
        width = config.model.num_heads * config.model.head_dim
        self.head = TokenHead(width, head_hidden, rngs=rngs)

    def __call__(self, tokens: jax.Array, batch: dict, geometry: Geometry) -> jax.Array:
        """Clips tokens [B, N, C] of `geometry` with the captions in `batch` -> logits [B, F]."""
        n, frames = tokens.shape[0], geometry.grid[0]
        recycled = video_dit.recycled_tokens(tokens, frames)
        t = jnp.zeros((n,), jnp.float32)
        _, features = self.backbone(tokens, t, self.backbone.condition(batch), geometry, recycled=recycled,
                                    return_features=True)
        per_frame = features.reshape(n, frames, -1, features.shape[-1]).mean(axis=2)  # [B, F, hidden]
        return self.head(per_frame)
