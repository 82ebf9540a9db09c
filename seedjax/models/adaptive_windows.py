"""Adaptive (shifted) window attention for video restoration DiTs (SeedVR / SeedVR2), as block-sparse masks.

What. Visual tokens on a (t, h, w) grid (frame-major order: t, then h, then w, as in the video DiT)
are partitioned into 3-D windows; a token attends only to the tokens of its own window. Odd layers
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


def windowed_attention(q: jax.Array, k: jax.Array, v: jax.Array, grid, window, shift=(0, 0, 0), *,
                       backend: str = "dense", block: int = 64, impl: str = "auto", interpret: bool = False,
                       sequence_parallel: str = "dense") -> jax.Array:
    """Window attention over visual tokens q, k, v [B, N, H, D] (N = t * h * w, frame-major) -> [B, N, H, D].

    Each token attends to the tokens of its window of the partition (grid, window, shift); softmax
    scale 1/sqrt(D), float32 scores. `backend`:
    - 'dense': masked dense attention, the reference, through `sequence.attention` with the 'same'
      rule over window ids (so `sequence_parallel` 'ulysses' / 'ring' work under a sequence mesh);
    - 'block_sparse': permute into the block-padded `window_layout`, run `block_sparse_attention`
      with the block-diagonal mask (`impl`, `interpret` as there: 'xla' on CPU; Triton needs a
      power-of-two `block` >= 16, Mosaic a multiple of 128), un-permute.
    `grid`, `window` and `shift` must be static (Python ints)."""
    grid = _grid(grid)
    if q.ndim != 4 or q.shape != k.shape or k.shape != v.shape or q.shape[1] != math.prod(grid):
        raise ValueError(f"windowed_attention: expected q, k, v [B, {math.prod(grid)}, H, D] for grid {grid}, "
                         f"got {q.shape}, {k.shape}, {v.shape}")
    window, shift = tuple(int(p) for p in window), tuple(int(s) for s in shift)
    if backend == "dense":
        ids = jnp.broadcast_to(jnp.asarray(window_ids(grid, window, shift)), q.shape[:2])
        spec = sequence_lib.MaskSpec("same", q_ids=ids, k_ids=ids)
        return sequence_lib.attention(q, k, v, spec, impl=sequence_parallel)
    if backend != "block_sparse":
        raise ValueError(f"windowed_attention: backend must be one of {BACKENDS}, got {backend!r}")
    layout = window_layout(grid, window, shift, int(block))
    # Out-of-range slots (padding) gather zeros; their keys are masked and their rows dropped below.
    permute = lambda x: jnp.take(x, layout.slots, axis=1, mode="fill", fill_value=0)
    heads = q.shape[2]
    mask = np.broadcast_to(layout.block_mask, (heads, *layout.block_mask.shape))
    key_mask = jnp.broadcast_to(jnp.asarray(layout.key_valid), (q.shape[0], layout.slots.size))
    out = block_sparse_attention(permute(q), permute(k), permute(v), mask, key_mask=key_mask, block_q=layout.block,
                                 block_k=layout.block, impl=impl, interpret=interpret)
    return jnp.take(out, layout.positions, axis=1)
