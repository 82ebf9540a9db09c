"""Adaptive (shifted) window attention (seedjax/models/adaptive_windows.py).

- window sizes against hand-computed tables, for both references (the grid itself; SeedVR2's 720p area);
- window ids of a small grid against hand-written arrays, unshifted and shifted;
- partitions: every token in exactly one window (checked against independently built slice boxes),
  shifted windows split pairs that unshifted ones keep together and the other way round;
- the block-padded layout: a permutation of the tokens plus padding, windows block-aligned;
- dense windowed attention against float64 numpy attention computed window by window;
- the block-sparse backend (the 'xla' kernel, and one Triton kernel in interpret mode) against the
  dense one, on grids the windows do not divide and an aspect ratio never seen.
"""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seedjax.models import adaptive_windows as aw

# Grids of every kind: one frame, odd sides, sides the windows do not divide, several windows in t.
GRIDS = [(1, 6, 10), (4, 9, 7), (2, 16, 24), (3, 5, 5)]
REFERENCE = (2, 2, 2)  # windows per axis at the reference grid

_jit = functools.partial(jax.jit, static_argnames=("grid", "window", "shift", "backend", "block", "impl",
                                                   "interpret", "num_text"))
attend = _jit(aw.windowed_attention)


def _qkv(seed, grid, heads=2, d=8, batch=2):
    rng = np.random.default_rng(seed)
    shape = (batch, int(np.prod(grid)), heads, d)
    return tuple(rng.standard_normal(shape).astype(np.float32) for _ in range(3))


def _partitions(grid):
    window = aw.window_size(grid, REFERENCE)
    return window, [(0, 0, 0), aw.half_shift(grid, window)]


def test_window_size_tables():
    # The grid as its own reference: the count is fixed, windows grow with the resolution.
    plain = {(1, 8, 8): (1, 4, 4), (1, 16, 24): (1, 8, 12), (1, 9, 7): (1, 5, 4), (5, 9, 7): (3, 5, 4),
             (1, 1, 3): (1, 1, 2)}
    for grid, want in plain.items():
        assert aw.window_size(grid, (2, 2, 2)) == want, grid
    # SeedVR2's rule with an 8 x 8 reference area: sides rescaled to area 64 first, so 16 x 24 ->
    # round(6.53) x round(9.80) = 7 x 10 -> windows ceil(7/2) x ceil(10/2) = 4 x 5 (20 windows, not 4);
    # 9 x 7 -> 9 x 7 (scale 1.008) -> 5 x 4; 4 x 4 -> 8 x 8 -> windows of 4 = the whole axis.
    ref64 = {(1, 8, 8): (1, 4, 4), (1, 16, 24): (1, 4, 5), (1, 9, 7): (1, 5, 4), (1, 4, 4): (1, 4, 4),
             (1, 32, 32): (1, 4, 4)}
    for grid, want in ref64.items():
        assert aw.window_size(grid, (1, 2, 2), reference_area=64) == want, grid
    # SeedVR2's setting: (4, 3, 3) windows of the 720p grid (45 x 80), at most 30 frames.
    seedvr2 = functools.partial(aw.window_size, reference_windows=aw.SEEDVR2_WINDOWS,
                                reference_area=aw.SEEDVR2_REFERENCE_AREA, max_frames=aw.SEEDVR2_MAX_FRAMES)
    assert seedvr2((21, 45, 80)) == (6, 15, 27)  # 720p: ceil(21/4), 45/3, ceil(80/3)
    assert seedvr2((21, 68, 120)) == (6, 15, 27)  # 1080p: same window (same aspect), 5 x 5 of them
    assert seedvr2((100, 45, 80)) == (8, 15, 27)  # long clip: ceil(min(100, 30) / 4)
    assert seedvr2((1, 80, 45)) == (1, 27, 15)  # portrait: the window turns with the frame


def test_window_ids_hand_written():
    grid, window = (1, 4, 6), (1, 2, 4)
    assert aw.half_shift(grid, window) == (0, 1, 2)
    want = [[0, 0, 0, 0, 1, 1],
            [0, 0, 0, 0, 1, 1],
            [2, 2, 2, 2, 3, 3],
            [2, 2, 2, 2, 3, 3]]
    np.testing.assert_array_equal(aw.window_ids(grid, window).reshape(4, 6), want)
    # Borders move by half a window (1 row, 2 columns), cut at the edges: the first and last rows
    # and the first two columns become smaller windows.
    shifted = [[0, 0, 1, 1, 1, 1],
               [2, 2, 3, 3, 3, 3],
               [2, 2, 3, 3, 3, 3],
               [4, 4, 5, 5, 5, 5]]
    np.testing.assert_array_equal(aw.window_ids(grid, window, (0, 1, 2)).reshape(4, 6), shifted)
    # Two frames, windows of 2 x 2 x 3 on a 2 x 3 x 3 grid: t and w split, h whole (never shifted).
    grid, window = (2, 3, 3), (1, 3, 2)
    assert aw.half_shift(grid, window) == (0, 0, 1)
    ids = aw.window_ids(grid, window, aw.half_shift(grid, window)).reshape(grid)
    np.testing.assert_array_equal(ids[0], [[0, 1, 1]] * 3)
    np.testing.assert_array_equal(ids[1], [[2, 3, 3]] * 3)
    assert [aw.layer_shift(i, grid, window) for i in range(3)] == [(0, 0, 0), (0, 0, 1), (0, 0, 0)]


def _boxes(grid, window, shift):
    """The windows as (t, h, w) slice boxes, built from their borders (the reference code's form)."""
    axes = []
    for n, p, s in zip(grid, window, shift):
        borders = sorted({0, n, *range(s, n, p)} if s else {0, n, *range(0, n, p)})
        axes.append([slice(a, b) for a, b in zip(borders, borders[1:])])
    return list(itertools.product(*axes))


@pytest.mark.parametrize("grid", GRIDS + [(7, 13, 11), (1, 1, 1)])
def test_every_token_in_exactly_one_window(grid):
    window = aw.window_size(grid, (3, 3, 2))
    for shift in ((0, 0, 0), aw.half_shift(grid, window)):
        ids = aw.window_ids(grid, window, shift).reshape(grid)
        cover = np.zeros(grid, int)
        for box in _boxes(grid, window, shift):
            cover[box] += 1
            assert len(np.unique(ids[box])) == 1, (grid, shift, box)  # a box is one window ...
            assert all(b.stop - b.start <= p for b, p in zip(box, window))  # ... no larger than the window
        np.testing.assert_array_equal(cover, 1)
        assert ids.max() + 1 == len(_boxes(grid, window, shift))  # ... and no window spans two boxes
        layout = aw.window_layout(grid, window, shift, 8)
        np.testing.assert_array_equal(np.sort(layout.slots[layout.key_valid]), np.arange(ids.size))
        np.testing.assert_array_equal(layout.slots[layout.positions], np.arange(ids.size))
        order, inverse = aw.window_permutation(ids.reshape(-1))
        assert np.all(np.diff(ids.reshape(-1)[order]) >= 0) and np.array_equal(order[inverse], np.arange(ids.size))
        # Block-aligned windows: every block holds one window (or its padding) only.
        block_ids = np.where(layout.key_valid, ids.reshape(-1)[np.minimum(layout.slots, ids.size - 1)], -1)
        for row in block_ids.reshape(-1, 8):
            assert len(np.unique(row[row >= 0])) <= 1


@pytest.mark.parametrize("grid", GRIDS)
def test_shifted_windows_differ_from_unshifted(grid):
    window, (zero, half) = _partitions(grid)
    plain, shifted = (aw.window_ids(grid, window, s) for s in (zero, half))
    same_plain, same_shifted = plain[:, None] == plain[None], shifted[:, None] == shifted[None]
    assert np.any(same_plain & ~same_shifted) and np.any(same_shifted & ~same_plain)


def _numpy_windows(q, k, v, ids):
    """float64 attention, one window at a time: softmax over the window's keys only."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    out = np.zeros_like(q)
    for window in np.unique(ids):
        idx = np.flatnonzero(ids == window)
        s = np.einsum("bqhd,bkhd->bhqk", q[:, idx], k[:, idx]) / np.sqrt(q.shape[-1])
        p = np.exp(s - s.max(-1, keepdims=True))
        out[:, idx] = np.einsum("bhqk,bkhd->bqhd", p / p.sum(-1, keepdims=True), v[:, idx])
    return out


@pytest.mark.parametrize("grid", GRIDS)
def test_dense_matches_float64_window_by_window(grid):
    q, k, v = _qkv(0, grid)
    window, shifts = _partitions(grid)
    for shift in shifts:
        got = attend(q, k, v, grid=grid, window=window, shift=shift)
        want = _numpy_windows(q, k, v, aw.window_ids(grid, window, shift))
        np.testing.assert_allclose(np.asarray(got, np.float64), want, atol=1e-6, rtol=0)


@pytest.mark.parametrize("grid,block", [((1, 6, 10), 8), ((4, 9, 7), 16), ((2, 16, 24), 16), ((3, 5, 5), 4)])
def test_block_sparse_matches_dense(grid, block):
    q, k, v = _qkv(1, grid)
    window, shifts = _partitions(grid)
    for shift in shifts:
        dense = attend(q, k, v, grid=grid, window=window, shift=shift)
        sparse = attend(q, k, v, grid=grid, window=window, shift=shift, backend="block_sparse", block=block,
                        impl="xla")
        np.testing.assert_allclose(np.asarray(sparse), np.asarray(dense), atol=2e-6, rtol=0)
    # The blocks a window-aligned layout computes: far fewer than dense attention's.
    layout = aw.window_layout(grid, window, shifts[1], block)
    assert layout.block_mask.mean() < 0.5 or layout.block_mask.size <= 4


def test_block_sparse_pallas_interpret_and_gradients():
    """A Pallas kernel (Triton, interpret mode) runs the same layout; gradients match dense ones."""
    grid = (2, 5, 6)
    q, k, v = _qkv(2, grid, heads=1, d=16, batch=1)
    window = aw.window_size(grid, REFERENCE)
    shift = aw.half_shift(grid, window)
    dense = attend(q, k, v, grid=grid, window=window, shift=shift)
    triton = attend(q, k, v, grid=grid, window=window, shift=shift, backend="block_sparse", block=16,
                    impl="triton", interpret=True)
    np.testing.assert_allclose(np.asarray(triton), np.asarray(dense), atol=2e-6, rtol=0)
    loss = lambda backend: jax.jit(jax.grad(lambda q, k, v: jnp.sum(jnp.sin(aw.windowed_attention(
        q, k, v, grid, window, shift, backend=backend, block=8, impl="xla"))), argnums=(0, 1, 2)))
    for a, b in zip(loss("dense")(q, k, v), loss("block_sparse")(q, k, v)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-5, rtol=0)


def test_unseen_resolution_and_aspect_ratio():
    """Trained at 8 x 8 with 2 x 2 windows (reference area 64); run at twice the width and an odd
    portrait grid: windows of about the training window's token count (3 x 6 vs 4 x 4), both backends agree."""
    for grid in ((2, 8, 16), (1, 11, 5)):
        window = aw.window_size(grid, (1, 2, 2), reference_area=64)
        q, k, v = _qkv(3, grid)
        for layer in (0, 1):
            shift = aw.layer_shift(layer, grid, window)
            dense = attend(q, k, v, grid=grid, window=window, shift=shift)
            sparse = attend(q, k, v, grid=grid, window=window, shift=shift, backend="block_sparse", block=8,
                            impl="xla")
            assert dense.shape == sparse.shape == q.shape
            np.testing.assert_allclose(np.asarray(sparse), np.asarray(dense), atol=2e-6, rtol=0)
    assert aw.window_size((2, 8, 16), (1, 2, 2), reference_area=64) == (2, 3, 6)  # 5.66 x 11.3 -> 6 x 11


def test_model_window_rules_hand_computed():
    """The three rules a model picks (model.window.rule), trained on an 8 x 8 token grid with 2 x 2
    windows per frame: at the training grid all give 4 x 4; at 2x (16 x 16) 'adaptive' and 'fixed'
    keep 4 x 4 windows (16 of them) and 'grow' doubles them; at 16 x 8, 'adaptive' follows the
    aspect ratio (rescaled to area 64: round(11.31) x round(5.66) = 11 x 6 -> 6 x 3), 'fixed' keeps
    4 x 4 and 'grow' takes half of each side (8 x 4)."""
    rule = lambda grid, r: aw.model_window(grid, (2, 2, 2), (8, 8), r, max_frames=None)
    for r in aw.RULES:
        assert rule((4, 8, 8), r) == (2, 4, 4)
    assert [rule((4, 16, 16), r) for r in ("adaptive", "fixed", "grow")] == [(2, 4, 4), (2, 4, 4), (2, 8, 8)]
    assert [rule((1, 16, 8), r) for r in ("adaptive", "fixed", "grow")] == [(1, 6, 3), (1, 4, 4), (1, 8, 4)]
    assert rule((1, 3, 2), "fixed") == (1, 3, 2)  # clipped to a grid smaller than the window
    with pytest.raises(ValueError, match="rule"):
        rule((1, 8, 8), "big")


def _numpy_joint(q, k, v, ids, num_text, text_valid):
    """float64 reference of the joint text + windows attention: a visual token's keys are the valid
    text and its window; a text token's keys the valid text."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    length = q.shape[1]
    out = np.zeros_like(q)
    for b in range(q.shape[0]):
        for n in range(length):
            keys = np.zeros(length, bool)
            keys[:num_text] = text_valid[b]
            if n >= num_text:
                keys[num_text:] = ids == ids[n - num_text]
            s = np.einsum("hd,khd->hk", q[b, n], k[b, keys]) / np.sqrt(q.shape[-1])
            p = np.exp(s - s.max(-1, keepdims=True))
            out[b, n] = np.einsum("hk,khd->hd", p / p.sum(-1, keepdims=True), v[b, keys])
    return out


@pytest.mark.parametrize("grid,num_text,block", [((2, 5, 6), 5, 8), ((1, 4, 4), 3, 4)])
def test_text_keys_with_windows_match_float64(grid, num_text, block):
    """The restoration DiT's spatial sublayer: text tokens first, padded text keys masked; dense and
    block-sparse (text padded to whole blocks) both equal the float64 reference, shifted or not."""
    rng = np.random.default_rng(4)
    shape = (2, num_text + int(np.prod(grid)), 2, 8)
    q, k, v = (rng.standard_normal(shape).astype(np.float32) for _ in range(3))
    text_valid = np.ones((2, num_text), bool)
    text_valid[1, -2:] = False
    window = aw.window_size(grid, REFERENCE)
    for shift in ((0, 0, 0), aw.half_shift(grid, window)):
        want = _numpy_joint(q, k, v, aw.window_ids(grid, window, shift), num_text, text_valid)
        for backend in ("dense", "block_sparse"):
            got = attend(q, k, v, grid=grid, window=window, shift=shift, num_text=num_text, text_valid=text_valid,
                         backend=backend, block=block, impl="xla")
            np.testing.assert_allclose(np.asarray(got, np.float64), want, atol=1e-5, rtol=0, err_msg=backend)


def test_rejects_bad_inputs():
    q = np.zeros((1, 12, 1, 4), np.float32)
    with pytest.raises(ValueError, match="expected q, k, v"):
        aw.windowed_attention(q, q, q, (1, 3, 5), (1, 2, 2))
    with pytest.raises(ValueError, match="backend"):
        aw.windowed_attention(q, q, q, (1, 3, 4), (1, 2, 2), backend="flash")
    with pytest.raises(ValueError, match="shift"):
        aw.window_ids((1, 3, 4), (1, 2, 2), (0, 2, 0))
