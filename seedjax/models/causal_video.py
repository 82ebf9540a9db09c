"""The block-causal video DiT one latent frame at a time, with a KV cache (AAPT).

A causal video DiT (`model.causal`, see `seedjax.models.video_dit`) lets frame f attend to the
text, to itself and to earlier frames (with `model.causal_window` = W > 0: the W - 1 frames before
it and always the first). Its text stream attends to text only, at t = 0, so the text's keys and
values are a function of the caption alone. `init_cache` computes them once; `decode_frame` runs
the DiT on ONE new frame against the cache and, when it commits, writes the frame's keys and
values into the cache. The result equals recomputing the whole block-causal sequence (tests).

Cache layout (`KVCache`, a pytree of fixed-shape arrays, layers stacked on axis 0):
  text_k, text_v         [depth, B, Lt, H, Dh]  the spatial sublayer's text keys/values (RoPE applied)
  text_valid             [B, Lt]
  spatial_k, spatial_v   [depth, B, C, P, H, Dh]  full_3d only (the decoupled spatial sublayer sees
                         its own frame and the text alone): None for 'decoupled'
  temporal_k, temporal_v [depth, B, C, P, H, Dh]  the temporal sublayer's; for 'decoupled' the P
                         positions are in spatial-window order (`video_attention.window_order`)
  slot_frame [C] int32   the frame each slot holds (-1: empty); frame [] int32: the next frame
  shared [B, hidden]     the pooled caption (and guidance) embedding
C slots form a ring buffer over frames: slot 0 keeps frame 0 for good and slots 1 .. C-1 take frames
1, 2, ... in turn (frame f >= 1 in slot 1 + (f - 1) % (C - 1)). With W > 0, C = W: the cache holds
exactly the frames a new frame may see, and generation runs for any number of frames at one shape.
With W = 0 (every earlier frame) C = `max_frames`: exact up to that many frames; past it the cache
keeps the first frame and the latest C - 1 (a window of C). Keys are cached after
RoPE at their absolute positions, so a slot stays valid when the ring moves on; which slots a
frame sees is `sequence_lib.causal_allowed` on `slot_frame` (the rule of the whole-sequence masks).
Every array carries the activations' logical names (batch over 'batch', the P positions of a frame
over 'seq', heads over 'act_heads'), so under a mesh the cache is sharded like the activations.
Only one shot (one caption) per video; true CFG would need a second cache (not supported).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from seedjax.models import video_attention, video_dit
from seedjax.models.rope import rope_frequencies
from seedjax.parallel import sequence as sequence_lib
from seedjax.parallel.sharding import constrain

CACHE = ("layers", "batch", None, "seq", "act_heads", None)  # [depth, B, C, P, H, Dh]
TEXT = ("layers", "batch", None, "act_heads", None)  # [depth, B, Lt, H, Dh]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class KVCache:
    """Keys and values of the text and of the cached frames; see the module docstring."""

    text_k: jax.Array
    text_v: jax.Array
    text_valid: jax.Array
    spatial_k: jax.Array | None
    spatial_v: jax.Array | None
    temporal_k: jax.Array
    temporal_v: jax.Array
    slot_frame: jax.Array
    frame: jax.Array
    shared: jax.Array

    @property
    def capacity(self) -> int:
        return self.slot_frame.shape[0]


def capacity(cfg, max_frames: int) -> int:
    """Slots a cache needs: the causal window (first frame + W - 1 earlier ones), else every frame."""
    causal, window, _ = video_dit.causal_settings(cfg)
    if not causal:
        raise ValueError("a KV cache needs a block-causal video DiT (model.causal = True)")
    if window == 0 and max_frames < 1:
        raise ValueError(f"model.causal_window = 0 caches every frame: give max_frames >= 1, got {max_frames}")
    return window if window else max_frames


def _position_ids(num_text: int, grid_hw: tuple[int, int], batch: int):
    """MM-RoPE ids of one shot: (text [B, Lt, 3], frame 0's tokens [B, P, 3]); frame f adds f to time."""
    return video_dit.multishot_position_ids(jnp.zeros((batch, 1), jnp.int32), (1, *grid_hw), num_text, 1)


def text_cache(dit: video_dit.VideoDiT, text_embeddings, pooled, *, grid_hw: tuple[int, int], text_mask=None,
               guidance=None) -> dict:
    """The caption's part of a cache (text_k, text_v, text_valid, shared): the causal text stream run
    once. text_embeddings [B, Lt, text_dim] (one shot), pooled [B, pooled_dim], text_mask [B, Lt]."""
    cfg = dit.cfg
    batch, num_text = text_embeddings.shape[:2]
    text_mask = jnp.ones((batch, num_text), bool) if text_mask is None else text_mask.astype(bool)
    shared = dit.shared_conditioning(pooled, guidance, batch)
    cond_txt = dit.time_conditioning(jnp.zeros((batch,), jnp.float32), shared)  # the causal text stream's t = 0
    rope_txt = rope_frequencies(_position_ids(num_text, grid_hw, batch)[0], cfg.axes_dims_rope, cfg.rope_theta)
    txt = dit.context_embedder(text_embeddings).astype(jnp.float32)
    keys, values = [], []
    for block in dit.blocks:  # VideoBlock.spatial's text stream: text attends to (its shot's) text only
        mod = block.txt.modulation(cond_txt)
        q, k, v = video_dit.text_qkv(block.txt, txt, mod, rope_txt)
        keys.append(k)
        values.append(v)
        txt = video_dit.text_update(block.txt, txt, sequence_lib.dense_attention(q, k, v, text_mask[:, None]), mod)
    return dict(text_k=constrain(jnp.stack(keys), TEXT), text_v=constrain(jnp.stack(values), TEXT),
                text_valid=text_mask, shared=shared)


def init_cache(dit: video_dit.VideoDiT, text_embeddings, pooled, *, grid_hw: tuple[int, int], max_frames: int = 0,
               text_mask=None, guidance=None) -> KVCache:
    """An empty cache for videos of `grid_hw` tokens a frame, with the caption's keys and values
    (`text_cache`). `max_frames` matters only for model.causal_window = 0 (the cache then holds
    every frame)."""
    cfg = dit.cfg
    slots = capacity(cfg, max_frames)
    text = text_cache(dit, text_embeddings, pooled, grid_hw=grid_hw, text_mask=text_mask, guidance=guidance)
    batch = text_embeddings.shape[0]
    empty = lambda: constrain(jnp.zeros((cfg.depth, batch, slots, grid_hw[0] * grid_hw[1], cfg.num_heads,
                                         cfg.head_dim), text["text_k"].dtype), CACHE)
    spatial = (empty(), empty()) if cfg.attention == "full_3d" else (None, None)
    return KVCache(spatial_k=spatial[0], spatial_v=spatial[1], temporal_k=empty(), temporal_v=empty(),
                   slot_frame=jnp.full((slots,), -1, jnp.int32), frame=jnp.zeros((), jnp.int32), **text)


def replace_text(dit: video_dit.VideoDiT, cache: KVCache, text_embeddings, pooled, *, grid_hw: tuple[int, int],
                 text_mask=None, guidance=None) -> KVCache:
    """The cache with another caption of the same length (AAPT's interactive control): later frames
    attend to the new text; the cached frames, made under the old one, stay."""
    if text_embeddings.shape[1] != cache.text_k.shape[2]:
        raise ValueError(f"replace_text: a caption of {text_embeddings.shape[1]} tokens for a cache of "
                         f"{cache.text_k.shape[2]} (pad captions to one length)")
    text = text_cache(dit, text_embeddings, pooled, grid_hw=grid_hw, text_mask=text_mask, guidance=guidance)
    return dataclasses.replace(cache, **text)


def slot_of(cache: KVCache, frame):
    """(slot, whether to write it) of `frame` (traced int) in the ring buffer."""
    ring = cache.capacity - 1
    if ring == 0:  # C = 1: a frame sees only itself and frame 0, so only frame 0 is kept
        return jnp.zeros((), jnp.int32), frame == 0
    return jnp.where(frame == 0, 0, 1 + (frame - 1) % ring), jnp.asarray(True)


def _attend(q, parts):
    """q [B, Lq, H, D] over the concatenated key blocks `parts` = ((k, v, valid [B | 1, Lk]), ...)."""
    k, v, valid = (jnp.concatenate([jnp.broadcast_to(p[i], (q.shape[0], *p[i].shape[1:])) for p in parts], 1)
                   for i in range(3))
    return sequence_lib.dense_attention(q, k, v, valid[:, None])


def _temporal_decoupled(q, k, v, cached_k, cached_v, slot_ok, group: int):
    """The decoupled temporal sublayer for one frame: q, k, v [B, P, H, D] (window order) attend to the
    tokens of their spatial window (runs of `group` positions) in the valid cached slots and their own frame."""
    b, p, heads, d = q.shape
    g = p // group
    rows = lambda x: x.reshape(b * g, group, heads, d)
    slots = cached_k.shape[1]
    cached = lambda x: x.reshape(b, slots, g, group, heads, d).swapaxes(1, 2).reshape(b * g, slots * group, heads, d)
    valid = jnp.repeat(slot_ok, group)[None]
    out = _attend(rows(q), ((cached(cached_k), cached(cached_v), valid), (rows(k), rows(v), jnp.ones((1, group), bool))))
    return out.reshape(b, p, heads, d)


def decode_frame(dit: video_dit.VideoDiT, cache: KVCache, x, t, *, grid_hw: tuple[int, int], recycled=None,
                 cond_tokens=None, cond_mask=None, commit: bool = True):
    """The velocity of the next frame (index `cache.frame`) and the cache.

    x [B, P, in_channels] the frame's noisy tokens at flow time t [B] (or scalar); recycled [B, P, C]
    the previous clean frame (model.recycle; None = zeros); cond_tokens [B, P, C] / cond_mask [B, 1]
    a conditioning frame (image-to-video on frame 0). `commit` (static) writes the frame's keys and
    values into its slot and advances `cache.frame`; otherwise the cache comes back unchanged.
    Returns (velocity [B, P, out_channels] float32, cache)."""
    cfg = dit.cfg
    _, window, _ = video_dit.causal_settings(cfg)
    batch, positions = x.shape[:2]
    if positions != grid_hw[0] * grid_hw[1]:
        raise ValueError(f"decode_frame: x has {positions} tokens, a {grid_hw} frame has {grid_hw[0] * grid_hw[1]}")
    frame = cache.frame
    t_frames = jnp.broadcast_to(jnp.asarray(t, jnp.float32).reshape(-1, 1), (batch, 1))
    vis, t_frames, token_cond = dit.embed_frames(x, t_frames, cond_tokens, cond_mask, recycled)
    cond = dit.time_conditioning(t_frames, cache.shared)
    vis_ids = _position_ids(cache.text_k.shape[2], grid_hw, batch)[1] + jnp.stack([frame, 0, 0]).astype(jnp.float32)
    rope = rope_frequencies(vis_ids, cfg.axes_dims_rope, cfg.rope_theta)
    slot_ok = (cache.slot_frame >= 0) & sequence_lib.causal_allowed(frame, cache.slot_frame, window)  # [C]
    tokens_ok = jnp.repeat(slot_ok, positions)[None]
    order = video_attention.window_order(video_dit.temporal_spatial_window(cfg), (1, *grid_hw))
    group = int(np.prod(video_attention.window_tokens(video_dit.temporal_spatial_window(cfg), (1, *grid_hw))))
    flat = lambda c: c.reshape(batch, -1, *c.shape[3:])  # [B, C, P, H, D] -> [B, C*P, H, D]
    own = jnp.ones((1, positions), bool)
    new = {"spatial_k": [], "spatial_v": [], "temporal_k": [], "temporal_v": []}
    for i, block in enumerate(dit.blocks):
        mod = block.img.modulation(cond)
        q, k, v = video_dit.visual_qkv(block.img, vis, mod, rope)
        parts = [(cache.text_k[i], cache.text_v[i], cache.text_valid)]
        if cfg.attention == "full_3d":
            parts.append((flat(cache.spatial_k[i]), flat(cache.spatial_v[i]), tokens_ok))
            new["spatial_k"].append(k)
            new["spatial_v"].append(v)
        vis = video_dit.visual_update(block.img, vis, _attend(q, parts + [(k, v, own)]), mod)

        mod = block.temporal.modulation(cond)
        q, k, v = video_dit.visual_qkv(block.temporal, vis, mod, rope)
        if cfg.attention == "full_3d":
            out = _attend(q, [(flat(cache.temporal_k[i]), flat(cache.temporal_v[i]), tokens_ok), (k, v, own)])
        else:
            if order is not None:
                q, k, v = (a[:, order] for a in (q, k, v))
            out = _temporal_decoupled(q, k, v, cache.temporal_k[i], cache.temporal_v[i], slot_ok, group)
            if order is not None:
                out = out[:, np.argsort(order)]
        new["temporal_k"].append(k)
        new["temporal_v"].append(v)
        vis = video_dit.visual_update(block.temporal, vis, out, mod)
    velocity = dit.head(vis, x, t_frames, cond, token_cond)
    if not commit:
        return velocity, cache
    slot, write = slot_of(cache, frame)

    def put(old, entries):
        entry = jnp.where(write, jnp.stack(entries)[:, :, None], jax.lax.dynamic_slice_in_dim(old, slot, 1, 2))
        return constrain(jax.lax.dynamic_update_slice_in_dim(old, entry.astype(old.dtype), slot, 2), CACHE)

    updates = {name: put(getattr(cache, name), entries) for name, entries in new.items() if entries}
    slot_frame = cache.slot_frame.at[slot].set(jnp.where(write, frame, cache.slot_frame[slot]))
    return velocity, dataclasses.replace(cache, **updates, slot_frame=slot_frame, frame=frame + 1)
