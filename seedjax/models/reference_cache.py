"""Reference images whose keys and values are computed once per generation (editing).

With `model.reference_attention = 'joint'` (FLUX.1 Kontext) the reference tokens sit in the
MMDiT's one sequence: they attend to the noisy target and are modulated at the target's t, so
their keys and values change at every sampler step. With 'cached', the references run through
the blocks on their own:

    reference tokens --x_embedder--> every block, attending to the (used) reference tokens only,
    modulated by the conditioning of t = 0 (clean inputs) and the caption's pooled embedding

and each block's reference keys (RoPE applied, at the ids of `model.reference_rope`) and values
are kept (`ReferenceKV`). The text and the target attend to their own tokens and to these keys;
the references never see the target, so the cache is a function of the references and the
caption alone. Training runs the same two passes, so the model learns what it samples with.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from seedjax.models import layers, mmdit
from seedjax.models.attention import attention
from seedjax.models.mmdit_blocks import DoubleStreamBlock, stream_qkv, stream_update
from seedjax.models.rope import apply_rope, rope_frequencies


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class ReferenceKV:
    """Every block's reference keys and values, batch first (CFG branches concatenate on axis 0)."""

    k: jax.Array  # [B, layers, Nr, H, Dh], RoPE applied
    v: jax.Array  # [B, layers, Nr, H, Dh]
    valid: jax.Array  # [B, Nr] bool: False on the tokens of unused reference slots


def blocks(dit: mmdit.MMDiT):
    """The MMDiT's blocks in order, one module each, for the unrolled and the scanned layout."""
    for stack in (dit.double_blocks, dit.single_blocks):
        if not mmdit.is_scanned(dit.cfg) or len(jax.tree.leaves(nnx.state(stack))) == 0:
            yield from stack
            continue
        graphdef, state = nnx.split(stack)
        for i in range(jax.tree.leaves(state)[0].shape[0]):
            layer = jax.tree.map(lambda x: x[i], state)
            yield nnx.merge(graphdef, nnx.spmd.remove_axis(layer, 0, {nnx.PARTITION_NAME: mmdit.LAYER_AXIS}))


def reference_kv(dit: mmdit.MMDiT, tokens: jax.Array, valid: jax.Array, ids, pooled: jax.Array) -> ReferenceKV:
    """The cache of packed reference tokens [B, Nr, in_channels] (valid [B, Nr], RoPE ids [Nr, 3])
    under the caption's pooled embedding [B, pooled_dim]."""
    batch = tokens.shape[0]
    t0 = layers.timestep_embedding(jnp.zeros((batch,), jnp.float32), mmdit.TIMESTEP_CHANNELS)
    cond = dit.time_embedder(t0) + dit.pooled_embedder(pooled.astype(jnp.float32))
    cos, sin = rope_frequencies(jnp.asarray(ids), dit.cfg.axes_dims_rope, dit.cfg.rope_theta)
    # An example without references attends over all its (unused) tokens: finite, and masked out
    # of the target's attention.
    key_mask = valid | ~jnp.any(valid, axis=1, keepdims=True)
    x = dit.x_embedder(tokens).astype(jnp.float32)
    keys, values = [], []
    every = list(blocks(dit))
    for i, block in enumerate(every):
        double = isinstance(block, DoubleStreamBlock)  # the references are its image stream
        if double:
            mod = block.img.modulation(cond)
            q, k, v = stream_qkv(block.img, x, mod)
        else:
            h, (q, k, v), gate = block.project(x, cond)
        k = apply_rope(k, cos, sin)
        keys.append(k)
        values.append(v)
        if i == len(every) - 1:
            break  # the last block's outputs are never read
        out = attention(apply_rope(q, cos, sin), k, v, key_mask=key_mask)
        x = stream_update(block.img, x, out, mod) if double else block.update(x, h, out, gate)
    return ReferenceKV(jnp.stack(keys, axis=1), jnp.stack(values, axis=1), valid.astype(bool))
