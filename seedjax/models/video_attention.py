"""The video DiT's attention (seedjax/models/video_dit.py): who attends to whom in each sublayer.

`AttentionOps` holds one call's attention: the spatial sublayer (decoupled: each frame over its
own tokens and its shot's text; full_3d: over everything) and the temporal one (decoupled: across
frames within spatial windows of `temporal_spatial_window` tokens; full_3d: over all visual
tokens), on one device through the attention backend and under sequence parallelism through
`seedjax.parallel.sequence`. `Masks` are the per-call masks; with `causal` (model.causal) every
mask is the block-causal rule `sequence_lib.causal_allowed` over frames and the text stream sees
text only.

Mode 'window' (SeedVR's restoration DiT, `seedjax.models.adaptive_windows`): both sublayers attend
within 3-D windows of `window` (t, h, w) tokens; the spatial sublayer of block i uses the regular
partition and also attends to the valid text (of every shot), the temporal one the partition shifted
by half a window, so window borders move every sublayer. The text attends to the text alone.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from seedjax.models import adaptive_windows
from seedjax.models.attention import TokenLayout, attention
from seedjax.parallel import sequence as sequence_lib
from seedjax.parallel.sharding import constrain


def per_frame(x: jax.Array, frames: int) -> jax.Array:
    """[B, F*P, ...] -> [B, F, P, ...]."""
    return x.reshape(x.shape[0], frames, x.shape[1] // frames, *x.shape[2:])


def window_tokens(area: tuple[int, int], grid: tuple[int, int, int]) -> tuple[int, int]:
    """The (rows, cols) of a temporal window on the token grid (F, h, w); 0 = the whole axis."""
    _, h, w = grid
    rows, cols = (size if n == 0 else n for n, size in zip(area, (h, w)))
    if h % rows or w % cols:
        raise ValueError(f"model.temporal_spatial_window {tuple(area)} does not tile the {h} x {w} token grid "
                         f"of a frame; choose window sides that divide it (0 = the whole side)")
    return rows, cols


def window_order(area: tuple[int, int], grid: tuple[int, int, int]) -> np.ndarray | None:
    """Permutation of a frame's h*w positions (row-major) that makes every spatial window one run of
    rows*cols consecutive positions (window-major, row-major inside); None when windows are single
    positions (the identity)."""
    rows, cols = window_tokens(area, grid)
    if rows * cols == 1:
        return None
    _, h, w = grid
    ids = np.arange(h * w).reshape(h // rows, rows, w // cols, cols)
    return ids.transpose(0, 2, 1, 3).reshape(-1)


def frame_local_attention(q, k, v, key_mask) -> jax.Array:
    """Dense attention within each frame, q, k, v [B, F, L, H, D], key_mask [B, F, L], with the
    frame axis kept on the 'sequence' mesh axis: frames are a batch dimension of every
    contraction, so the partitioner splits them without moving a token (float32 softmax)."""
    names = ("batch", "seq", None, "act_heads", None)
    q, k, v = (constrain(x, names) for x in (q, k, v))
    scores = jnp.einsum("bfqhd,bfkhd->bfhqk", q, k, preferred_element_type=jnp.float32) / np.sqrt(q.shape[-1])
    scores = jnp.where(key_mask[:, :, None, None, :], scores, -jnp.inf)
    probs = jax.nn.softmax(scores, axis=-1)
    return constrain(jnp.einsum("bfhqk,bfkhd->bfqhd", probs.astype(v.dtype), v), names)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Masks:
    """Who attends to whom, computed once per call: text_valid [B, Lt] (padding), frame_text
    [B, F, Lt] (the valid text keys of each frame's shot), text_weights [B, F, Lt] (the weight of
    frame f in the mean that forms text token j's spatial update: 1 / frames of its shot), and
    frame_valid [B, F] (frames that are keys at all: all of them for a whole clip), and text_text
    [B, Lt, Lt] (the valid text keys of each text token's shot: the causal text stream's keys)."""

    text_valid: jax.Array
    frame_text: jax.Array
    text_weights: jax.Array
    frame_valid: jax.Array
    text_text: jax.Array

    @classmethod
    def make(cls, text_mask, text_shot, frame_shot, frame_valid):
        text_mask = text_mask.astype(bool)
        same = text_shot[:, None, :] == frame_shot[:, :, None]  # [B, F, Lt]
        frame_text = same & text_mask[:, None, :]
        counts = jnp.sum(same & frame_valid[:, :, None], axis=1, keepdims=True)
        weights = jnp.where(same & frame_valid[:, :, None], 1.0 / jnp.maximum(counts, 1), 0.0)
        text_text = (text_shot[:, :, None] == text_shot[:, None, :]) & text_mask[:, None, :]
        return cls(text_mask, frame_text, weights, frame_valid, text_text)


@dataclasses.dataclass(frozen=True)
class AttentionOps:
    """The attention of both sublayers for one call: mode, grid, backend and sequence parallelism."""

    mode: str
    grid: tuple[int, int, int]
    window: int
    backend: str
    sequence_parallel: str
    extra: dict = dataclasses.field(default_factory=dict, hash=False, compare=False)
    block: int | None = None
    area: tuple[int, int] = (1, 1)  # the temporal layers' spatial window (model.temporal_spatial_window)
    causal: bool = False  # block-causal over frames (model.causal); `window` is then model.causal_window
    windows: tuple[int, int, int] | None = None  # mode 'window': the (t, h, w) window of this grid
    window_backend: str = "dense"  # mode 'window': 'dense' | 'block_sparse' (model.window.backend)
    window_block: int = 64

    def at(self, block: int) -> "AttentionOps":
        return dataclasses.replace(self, block=block)

    def _backend(self, q, k, v, key_mask, layout, sublayer: int = 0, extra: dict | None = None):
        # Every block has two attentions, each with its own per-layer data (PARO plans): the
        # spatial one (sublayer 0) is attention layer 2 * block, the temporal one 2 * block + 1.
        index = None if self.block is None else 2 * self.block + sublayer
        return attention(q, k, v, key_mask=key_mask, backend=self.backend, layer_index=index, layout=layout,
                         **(self.extra if extra is None else extra))

    def _per_frame_extra(self, frames: int) -> dict:
        """The backend's per-call arguments for per-frame attention, whose batch is (sample, frame):
        a per-sample `timestep` [B] repeated over frames."""
        timestep = self.extra.get("timestep")
        if timestep is None or jnp.ndim(timestep) != 1:
            return self.extra
        return self.extra | {"timestep": jnp.repeat(timestep, frames)}

    def _windowed(self, q, k, v, sublayer: int, num_text: int = 0, text_valid=None):
        """Mode 'window': attention within this sublayer's partition (shifted on odd attention layers)."""
        layer = 2 * (self.block or 0) + sublayer
        shift = adaptive_windows.layer_shift(layer, self.grid, self.windows)
        impl = self.sequence_parallel if sequence_lib.sequence_size() > 1 else "dense"
        return adaptive_windows.windowed_attention(q, k, v, self.grid, self.windows, shift, num_text=num_text,
                                                   text_valid=text_valid, backend=self.window_backend,
                                                   block=self.window_block, sequence_parallel=impl)

    def spatial(self, qv, kv, vv, qt, kt, vt, masks: Masks):
        """(visual [B, N, H, D], text [B, Lt, H, D]) outputs of the spatial sublayer."""
        frames = self.grid[0]
        num_text = qt.shape[1]
        if self.mode == "window":
            q, k, v = (jnp.concatenate(p, axis=1) for p in ((qt, qv), (kt, kv), (vt, vv)))
            out = self._windowed(q, k, v, 0, num_text, masks.text_valid)
            return out[:, num_text:], out[:, :num_text]
        if self.mode == "full_3d":
            q, k, v = (jnp.concatenate(p, axis=1) for p in ((qt, qv), (kt, kv), (vt, vv)))
            key_mask = jnp.concatenate([masks.text_valid, jnp.repeat(masks.frame_valid, qv.shape[1] // frames, 1)], 1)
            out = self._joint(q, k, v, key_mask, TokenLayout(num_text, None, self.grid), num_text=num_text)
            return out[:, num_text:], out[:, :num_text]
        # Per frame: [text of every shot (keys masked to this frame's shot); the frame's tokens].
        split = lambda x: per_frame(x, frames)
        tile = lambda x: jnp.broadcast_to(x[:, None], (x.shape[0], frames, *x.shape[1:]))
        q, k, v = (jnp.concatenate([tile(t), split(x)], axis=2) for t, x in ((qt, qv), (kt, kv), (vt, vv)))
        p = qv.shape[1] // frames
        key_mask = jnp.concatenate([masks.frame_text, jnp.ones((*masks.frame_text.shape[:2], p), bool)], axis=2)
        if sequence_lib.sequence_size() > 1:  # frames stay split over 'sequence': no communication
            out = frame_local_attention(q, k, v, key_mask)
        else:
            flat = lambda x: x.reshape(-1, *x.shape[2:])
            extra = self._per_frame_extra(frames)
            out = self._backend(flat(q), flat(k), flat(v), flat(key_mask), TokenLayout(num_text, self.grid[1:]),
                                extra=extra)
            out = out.reshape(q.shape)
        if self.causal:  # text attends to its shot's text only: it never waits for a frame
            txt = sequence_lib.dense_attention(qt, kt, vt, masks.text_text)
        else:
            txt = jnp.einsum("bft,bfthd->bthd", masks.text_weights, out[:, :, :num_text])
        return out[:, :, num_text:].reshape(qv.shape), txt

    def temporal(self, q, k, v, masks: Masks):
        """[B, N, H, D] visual outputs of the temporal sublayer."""
        frames = self.grid[0]
        if self.mode == "window":
            return self._windowed(q, k, v, 1)
        if self.mode == "full_3d":
            key_mask = jnp.repeat(masks.frame_valid, q.shape[1] // frames, axis=1)
            return self._joint(q, k, v, key_mask, TokenLayout(0, None, self.grid), sublayer=1, num_text=0)
        q, k, v = (per_frame(x, frames) for x in (q, k, v))
        order = window_order(self.area, self.grid)
        group = int(np.prod(window_tokens(self.area, self.grid)))
        if order is not None:  # each spatial window becomes one run of consecutive positions
            q, k, v = (x[:, :, order] for x in (q, k, v))
        # One implementation on one device and on a sequence mesh (frames split, one all-to-all each way).
        out = sequence_lib.temporal_attention(q, k, v, frame_valid=masks.frame_valid, window=self.window,
                                              group=group, causal=self.causal)
        if order is not None:
            out = out[:, :, np.argsort(order)]
        return out.reshape(*out.shape[:1], -1, *out.shape[3:])

    def _joint(self, q, k, v, key_mask, layout, sublayer: int = 0, *, num_text: int):
        if self.causal:  # ids: text -1, visual tokens their frame (a text query sees text only)
            frames = jnp.repeat(jnp.arange(self.grid[0], dtype=jnp.int32), (q.shape[1] - num_text) // self.grid[0])
            ids = jnp.broadcast_to(jnp.concatenate([jnp.full((num_text,), -1, jnp.int32), frames]), key_mask.shape)
            spec = sequence_lib.MaskSpec("block_causal", key_mask, ids, ids, self.window)
            return sequence_lib.attention(q, k, v, spec, impl=self.sequence_parallel)  # dense on one device
        if sequence_lib.sequence_size() > 1:
            spec = sequence_lib.MaskSpec(key_valid=key_mask)
            return sequence_lib.attention(q, k, v, spec, impl=self.sequence_parallel)
        return self._backend(q, k, v, key_mask, layout, sublayer)
