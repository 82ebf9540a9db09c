"""The MMDiT's blocks (Flux's shapes): a stream's weights, the dual-stream block with one joint
attention over [text, image], and the single-stream block with attention and MLP in parallel.

Each block is split into its projections and its residual update around the attention call, so
that the reference pass (`seedjax.models.reference_cache`) and the video DiT's text stream run
the same weights the same way outside the joint sequence.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from seedjax.models import layers
from seedjax.models.rope import apply_rope
from seedjax.parallel.sharding import constrain

TOKENS = ("batch", "seq", "act_embed")


class StreamWeights(nnx.Module):
    """One modality's weights inside a dual-stream block (image or text)."""

    def __init__(self, hidden: int, head_dim: int, mlp_hidden: int, *, rngs: nnx.Rngs, dtype):
        self.head_dim = head_dim
        self.modulation = layers.Modulation(hidden, hidden, 6, rngs=rngs)
        self.q = layers.Linear(hidden, hidden, rngs=rngs, names=("embed", "heads"), dtype=dtype)
        self.k = layers.Linear(hidden, hidden, rngs=rngs, names=("embed", "heads"), dtype=dtype)
        self.v = layers.Linear(hidden, hidden, rngs=rngs, names=("embed", "heads"), dtype=dtype)
        self.q_norm = layers.RMSNorm(head_dim, rngs=rngs, eps=1e-6)
        self.k_norm = layers.RMSNorm(head_dim, rngs=rngs, eps=1e-6)
        self.out = layers.Linear(hidden, hidden, rngs=rngs, names=("heads", "embed"), dtype=dtype)
        self.norm = layers.LayerNorm(hidden, rngs=rngs, eps=1e-6)
        self.mlp = layers.MLP(hidden, mlp_hidden, hidden, rngs=rngs, activation_name="gelu_tanh", dtype=dtype)


def heads_qkv(mod, h: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Project to q, k, v [B, L, H, Dh] with QK RMSNorm (every MMDiT and video DiT attention)."""
    split = lambda y: y.reshape(*y.shape[:-1], -1, mod.head_dim)
    q, k, v = split(mod.q(h)), split(mod.k(h)), split(mod.v(h))
    names = ("batch", "seq", "act_heads", None)
    return constrain(mod.q_norm(q), names), constrain(mod.k_norm(k), names), constrain(v, names)


class DoubleStreamBlock(nnx.Module):
    """Separate image/text weights, one joint attention over [text, image] (Flux FluxTransformerBlock)."""

    def __init__(self, hidden: int, head_dim: int, mlp_hidden: int, *, rngs: nnx.Rngs, dtype):
        self.img = StreamWeights(hidden, head_dim, mlp_hidden, rngs=rngs, dtype=dtype)
        self.txt = StreamWeights(hidden, head_dim, mlp_hidden, rngs=rngs, dtype=dtype)

    def __call__(self, img, txt, cond, cos, sin, key_mask, *, attend):
        img_mod, txt_mod = self.img.modulation(cond), self.txt.modulation(cond)
        streams = [stream_qkv(w, x, mod) for x, w, mod in ((txt, self.txt, txt_mod), (img, self.img, img_mod))]
        q, k, v = (jnp.concatenate(parts, axis=1) for parts in zip(*streams))
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        out = attend(q, k, v, key_mask)
        num_txt = txt.shape[1]
        img = stream_update(self.img, img, out[:, num_txt:], img_mod)
        txt = stream_update(self.txt, txt, out[:, :num_txt], txt_mod)
        return constrain(img, TOKENS), constrain(txt, TOKENS)


def stream_qkv(w: StreamWeights, x: jax.Array, mod) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One stream's q, k, v [B, L, H, Dh] before RoPE. Chunk order of Flux's AdaLayerNormZero
    `mod`: shift, scale, gate (attention), shift, scale, gate (MLP)."""
    shift, scale = mod[0], mod[1]
    return heads_qkv(w, layers.modulate(w.norm(x), shift, scale))


def stream_update(w: StreamWeights, x: jax.Array, attn_out: jax.Array, mod) -> jax.Array:
    """One stream's residual updates from its attention output [B, L, H, Dh]: out projection, then MLP."""
    _, _, gate, shift, scale, gate_mlp = mod
    x = x + gate[:, None] * w.out(attn_out.reshape(*x.shape[:2], -1))
    return x + gate_mlp[:, None] * w.mlp(layers.modulate(w.norm(x), shift, scale))


class SingleStreamBlock(nnx.Module):
    """One weight set over the joint sequence; attention and MLP in parallel (Flux FluxSingleTransformerBlock)."""

    def __init__(self, hidden: int, head_dim: int, mlp_hidden: int, *, rngs: nnx.Rngs, dtype):
        self.head_dim = head_dim
        self.modulation = layers.Modulation(hidden, hidden, 3, rngs=rngs)
        self.q = layers.Linear(hidden, hidden, rngs=rngs, names=("embed", "heads"), dtype=dtype)
        self.k = layers.Linear(hidden, hidden, rngs=rngs, names=("embed", "heads"), dtype=dtype)
        self.v = layers.Linear(hidden, hidden, rngs=rngs, names=("embed", "heads"), dtype=dtype)
        self.q_norm = layers.RMSNorm(head_dim, rngs=rngs, eps=1e-6)
        self.k_norm = layers.RMSNorm(head_dim, rngs=rngs, eps=1e-6)
        self.mlp_in = layers.Linear(hidden, mlp_hidden, rngs=rngs, names=("embed", "mlp"), dtype=dtype)
        self.out = layers.Linear(hidden + mlp_hidden, hidden, rngs=rngs, names=("mlp", "embed"), dtype=dtype)
        self.norm = layers.LayerNorm(hidden, rngs=rngs, eps=1e-6)

    def __call__(self, x, cond, cos, sin, key_mask, *, attend):
        h, (q, k, v), gate = self.project(x, cond)
        attn = attend(apply_rope(q, cos, sin), apply_rope(k, cos, sin), v, key_mask)
        return self.update(x, h, attn, gate)

    def project(self, x, cond):
        """(the modulated input h, its q, k, v [B, L, H, Dh] before RoPE, the residual gate)."""
        shift, scale, gate = self.modulation(cond)
        h = layers.modulate(self.norm(x), shift, scale)
        return h, heads_qkv(self, h), gate

    def update(self, x, h, attn, gate):
        """The residual update from the attention output [B, L, H, Dh] and the parallel MLP on h."""
        mlp = jax.nn.gelu(self.mlp_in(h), approximate=True)
        x = x + gate[:, None] * self.out(jnp.concatenate([attn.reshape(*x.shape[:2], -1), mlp], axis=-1))
        return constrain(x, TOKENS)
