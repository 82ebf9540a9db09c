"""Adaptive (shifted) window attention for video restoration DiTs (SeedVR / SeedVR2), as block-sparse masks.

What. Visual tokens on a (t, h, w) grid (frame-major order: t, then h, then w, as in the video DiT)
are partitioned into 3-D windows; a token attends only to the tokens of its own window (and, when
text tokens lead the sequence, to the valid text, which itself attends to the text alone). Odd layers
use a partition shifted by half a window (Swin), so information crosses window borders every other
layer. `windowed_attention` runs it densely (the reference: a [N, N] "same window" mask) or on the
existing block-sparse kernels (`seedjax.kernels.block_sparse_attention`): tokens are permuted so that
every window is one contiguous run, each run padded to whole blocks, and the mask becomes exactly
block-diagonal.

Why adaptive. With a fixed window (SeedVR: 64x64 pixels) a test resolution or aspect ratio unlike the
training one cuts frames into windows the model never saw (thin edge windows, different shapes),
which shows as seams. SeedVR2 (arXiv 2506.05301, "adaptive window attention") derives the window
from the input instead. The rule here is the one of the public SeedVR2 code
(`make_720Pwindows_bysize` / `make_shifted_720Pwindows_bysize`, window=(4, 3, 3), alternating per
layer), restated, for a grid (t, h, w), window counts (nt, nh, nw), a reference area A and a frame cap:

    s = sqrt(A / (h * w));  h' = round(h * s);  w' = round(w * s)      # the grid rescaled to area A
    window = (ceil(min(t, cap) / nt), ceil(h' / nh), ceil(w' / nw))    # then clipped to [1, axis]

SeedVR2 uses A = 45 * 80 (the 720p token grid: 8x VAE, 2x2 patches) and cap = 30 latent frames.
Note what that means: the window's *shape* follows the aspect ratio and its token count stays
~A / (nh * nw) at every resolution; a higher resolution gets *more* windows, not bigger ones (so
attention cost stays linear in the area and every window looks like a training window). With
`reference_area=None` the grid itself is the reference (s = 1): a fixed count of windows whose size
grows with the resolution. Both are the same formula; pick with `reference_area`.

Edges. The partition is cut at the grid's edges: no padding tokens, no roll. Along an axis the
windows are [0, p), [p, 2p), ... and the last one is smaller when p does not divide the axis. The
shifted partition (SeedVR2's rule) moves the borders by p // 2 on every axis that has more than one
window: [0, p//2), [p//2, p//2 + p), ..., so both edge windows may be smaller; an axis that one
window covers is not shifted (it would only split that window). Every token is in exactly one window.

Block-sparse layout. Kernels mask whole blocks, so a block holding the tail of one window and the
head of the next would leak attention between them. Each window's run is therefore padded with
zero tokens to a multiple of `block`; padded keys are masked with the kernels' `key_mask` and padded
query rows are dropped, which makes the result exact for any window size (at the cost of at most
block - 1 idle slots per window).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from seedjax.kernels.block_sparse_attention import block_sparse_attention
from seedjax.parallel import sequence as sequence_lib

Grid = tuple[int, int, int]

# SeedVR2's published setting: 4 x 3 x 3 windows of the 720p token grid, at most 30 frames a window.
SEEDVR2_WINDOWS: Grid = (4, 3, 3)
SEEDVR2_REFERENCE_AREA = 45 * 80
SEEDVR2_MAX_FRAMES = 30
BACKENDS = ("dense", "block_sparse")


def _grid(grid) -> Grid:
    t, h, w = (int(n) for n in grid)
    if min(t, h, w) < 1:
        raise ValueError(f"adaptive windows: grid sides must be >= 1, got {tuple(grid)}")
    return t, h, w


def window_size(grid, reference_windows, *, reference_area: int | None = None,
                max_frames: int | None = None) -> Grid:
    """The (t, h, w) window shape for a token grid: see the module docstring for the rule.

    `reference_windows` (nt, nh, nw) is the number of windows per axis on the reference grid;
    `reference_area` (None: the grid's own area) the h * w the spatial axes are rescaled to first;
    `max_frames` (None: no cap) the most frames the temporal count is taken over."""
    t, h, w = _grid(grid)
    nt, nh, nw = (int(n) for n in reference_windows)
    if min(nt, nh, nw) < 1:
        raise ValueError(f"adaptive windows: reference_windows must be >= 1, got {tuple(reference_windows)}")
    scale = 1.0 if reference_area is None else math.sqrt(reference_area / (h * w))
    # Python's round, as the reference code: the rescaled sides, not the window, are rounded.
    rh, rw = (round(n * scale) for n in (h, w))
    frames = t if max_frames is None else min(t, max_frames)
    size = (math.ceil(frames / nt), math.ceil(rh / nh), math.ceil(rw / nw))
    # A window larger than its axis is the whole axis; an extreme aspect ratio may round a side to 0.
    return tuple(min(max(p, 1), n) for p, n in zip(size, (t, h, w)))


RULES = ("adaptive", "fixed", "grow")


def model_window(grid, counts, reference, rule: str = "adaptive", max_frames: int | None = None) -> Grid:
    """The window a model with window `counts` (nt, nh, nw), trained on the (h, w) token grid
    `reference`, uses on `grid`, by `rule`:
    - 'adaptive' (SeedVR2): `window_size` with the reference's area: windows keep about the token
      count they had in training and take the grid's aspect ratio; a larger grid gets more windows;
    - 'fixed' (SeedVR): the reference grid's window at every resolution (clipped to the grid);
    - 'grow': the counts of the grid itself, so windows grow with the resolution.
    The temporal side is `window_size`'s for the grid's own frames in all three."""
    t, h, w = _grid(grid)
    rh, rw = (int(n) for n in reference)
    if rule not in RULES:
        raise ValueError(f"adaptive windows: rule must be one of {RULES}, got {rule!r}")
    if rule == "adaptive":
        return window_size(grid, counts, reference_area=rh * rw, max_frames=max_frames)
    size = window_size(grid, counts, max_frames=max_frames)
    if rule == "grow":
        return size
    _, wh, ww = window_size((t, rh, rw), counts, max_frames=max_frames)
    return size[0], min(wh, h), min(ww, w)


def half_shift(grid, window) -> Grid:
    """The shifted partition's offset: half a window (p // 2) on every axis with more than one window."""
    return tuple(int(p) // 2 if int(p) < n else 0 for n, p in zip(_grid(grid), window))


def layer_shift(layer: int, grid, window) -> Grid:
    """Shift of attention layer `layer`: unshifted windows on even layers, shifted on odd ones."""
    return (0, 0, 0) if layer % 2 == 0 else half_shift(grid, window)


def _axis_ids(length: int, size: int, shift: int) -> np.ndarray:
    """Window index of positions 0..length-1 along one axis: borders at shift + k * size (cut at the
    edges), so a shifted axis starts with a window of `shift` positions. Indices are 0, 1, ... with
    no gap: every window spans `size` consecutive positions, so none is empty."""
    if not 0 <= shift < size:
        raise ValueError(f"adaptive windows: shift must be in [0, window) per axis, got {shift} for window {size}")
    return (np.arange(length) + (size - shift) % size) // size


def window_ids(grid, window, shift=(0, 0, 0)) -> np.ndarray:
    """int32 [t * h * w]: the window of every token (frame-major order), windows numbered
    frame-major too ((it * nh + ih) * nw + iw)."""
    grid = _grid(grid)
    it, ih, iw = (_axis_ids(n, int(p), int(s)) for n, p, s in zip(grid, window, shift))
    nh, nw = ih[-1] + 1, iw[-1] + 1
    ids = (it[:, None, None] * nh + ih[None, :, None]) * nw + iw[None, None, :]
    return ids.reshape(-1).astype(np.int32)


def window_permutation(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(order, inverse): x[:, order] lists the tokens window by window (frame-major inside each),
    so the window pattern is block-diagonal over the permuted sequence; y[:, inverse] undoes it."""
    order = np.argsort(ids, kind="stable").astype(np.int32)
    return order, np.argsort(order).astype(np.int32)


@dataclasses.dataclass(frozen=True)
class WindowLayout:
    """The permuted, block-padded sequence of one partition, for the block-sparse kernels.

    slots [L] (L a multiple of `block`): the token in each slot, or N (out of range) for padding;
    positions [N]: the slot of each token (the inverse map); key_valid [L]: False on padding;
    block_mask [L / block, L / block]: True where query and key block hold the same window."""

    slots: np.ndarray
    positions: np.ndarray
    key_valid: np.ndarray
    block_mask: np.ndarray
    block: int

    @property
    def padded_fraction(self) -> float:
        """Share of the slots that are padding (the kernels' idle work on rows and columns)."""
        return float(1.0 - self.key_valid.mean())


@functools.lru_cache(maxsize=64)  # one per (grid, partition, block): every layer of a call shares it
def window_layout(grid, window, shift=(0, 0, 0), block: int = 64) -> WindowLayout:
    """The `WindowLayout` of the partition (grid, window, shift) at block size `block`."""
    ids = window_ids(grid, window, shift)
    order, _ = window_permutation(ids)
    counts = np.bincount(ids)
    padded = -(-counts // block) * block  # each window's run rounded up to whole blocks
    starts = np.concatenate([[0], np.cumsum(padded)[:-1]])
    # A token's slot: its window's start plus its rank inside the window (order is window-major).
    rank = np.arange(ids.size) - np.concatenate([[0], np.cumsum(counts)[:-1]])[ids[order]]
    positions = np.empty(ids.size, np.int32)
    positions[order] = starts[ids[order]] + rank
    slots = np.full(int(padded.sum()), ids.size, np.int32)
    slots[positions] = np.arange(ids.size, dtype=np.int32)
    block_window = np.repeat(np.arange(counts.size), padded // block)  # every block is in one window
    layout = WindowLayout(slots, positions, slots < ids.size, block_window[:, None] == block_window[None, :], block)
    for array in (layout.slots, layout.positions, layout.key_valid, layout.block_mask):
        array.setflags(write=False)  # cached and shared: nobody may edit it in place
    return layout


def joint_block_mask(layout: WindowLayout, text_blocks: int) -> np.ndarray:
    """[T + L/block, T + L/block] bool for a sequence of `text_blocks` blocks of text then the
    permuted windows of `layout`: text sees text; a window's blocks see the text and their window."""
    size = text_blocks + layout.block_mask.shape[0]
    mask = np.zeros((size, size), bool)
    mask[:, :text_blocks] = True
    mask[text_blocks:, text_blocks:] = layout.block_mask
    return mask


def windowed_attention(q: jax.Array, k: jax.Array, v: jax.Array, grid, window, shift=(0, 0, 0), *,
                       num_text: int = 0, text_valid: jax.Array | None = None, backend: str = "dense",
                       block: int = 64, impl: str = "auto", interpret: bool = False,
                       sequence_parallel: str = "dense") -> jax.Array:
    """Window attention over q, k, v [B, Lt + N, H, D]: `num_text` text tokens, then the visual
    tokens (N = t * h * w, frame-major) -> [B, Lt + N, H, D].

    Each visual token attends to the valid text (`text_valid` [B, Lt], None = all) and to the tokens
    of its window of the partition (grid, window, shift); a text token attends to the text alone.
    Softmax scale 1/sqrt(D), float32 scores. `backend`:
    - 'dense': masked dense attention, the reference, through `sequence.attention` with the
      'same_or_text' rule over window ids (text id -1), so `sequence_parallel` 'ulysses' / 'ring'
      work under a sequence mesh;
    - 'block_sparse': the text padded to whole blocks, then the visual tokens permuted into the
      block-padded `window_layout`, run by `block_sparse_attention` with `joint_block_mask`
      (`impl`, `interpret` as there: 'xla' on CPU; Triton needs a power-of-two `block` >= 16,
      Mosaic a multiple of 128), un-permuted.
    `grid`, `window`, `shift` and `num_text` must be static (Python ints)."""
    grid = _grid(grid)
    length = num_text + math.prod(grid)
    if q.ndim != 4 or q.shape != k.shape or k.shape != v.shape or q.shape[1] != length:
        raise ValueError(f"windowed_attention: expected q, k, v [B, {length}, H, D] for {num_text} text tokens and "
                         f"grid {grid}, got {q.shape}, {k.shape}, {v.shape}")
    window, shift = tuple(int(p) for p in window), tuple(int(s) for s in shift)
    batch = q.shape[0]
    text_valid = jnp.ones((batch, num_text), bool) if text_valid is None else text_valid.astype(bool)
    if backend == "dense":
        ids = np.concatenate([np.full(num_text, -1, np.int32), window_ids(grid, window, shift)])
        ids = jnp.broadcast_to(jnp.asarray(ids), (batch, length))
        key_valid = jnp.concatenate([text_valid, jnp.ones((batch, length - num_text), bool)], axis=1)
        spec = sequence_lib.MaskSpec("same_or_text", key_valid=key_valid, q_ids=ids, k_ids=ids)
        return sequence_lib.attention(q, k, v, spec, impl=sequence_parallel)
    if backend != "block_sparse":
        raise ValueError(f"windowed_attention: backend must be one of {BACKENDS}, got {backend!r}")
    layout = window_layout(grid, window, shift, int(block))
    text_blocks = -(-num_text // layout.block)
    text_pad = text_blocks * layout.block - num_text
    # The text (zero-padded to whole blocks), then the visual tokens slot by slot: out-of-range slots
    # (padding) gather zeros; their keys are masked and their rows dropped below.
    def arrange(x):
        text = jnp.pad(x[:, :num_text], ((0, 0), (0, text_pad), (0, 0), (0, 0)))
        visual = jnp.take(x[:, num_text:], layout.slots, axis=1, mode="fill", fill_value=0)
        return jnp.concatenate([text, visual], axis=1)

    heads = q.shape[2]
    mask = joint_block_mask(layout, text_blocks)
    key_mask = jnp.concatenate([jnp.pad(text_valid, ((0, 0), (0, text_pad))),
                                jnp.broadcast_to(jnp.asarray(layout.key_valid), (batch, layout.slots.size))], axis=1)
    out = block_sparse_attention(arrange(q), arrange(k), arrange(v), np.broadcast_to(mask, (heads, *mask.shape)),
                                 key_mask=key_mask, block_q=layout.block, block_k=layout.block, impl=impl,
                                 interpret=interpret)
    visual = jnp.take(out[:, text_blocks * layout.block:], layout.positions, axis=1)
    return jnp.concatenate([out[:, :num_text], visual], axis=1)
