"""The video DiT (seedjax/models/video_dit.py) against independent references.

- MM-RoPE ids for single- and multi-shot layouts against hand-written tables;
- decoupled attention against explicit float64 per-frame and per-position attention loops,
  full_3d against float64 dense attention over all tokens;
- the spatial sublayer on one frame against the MMDiT's dual-stream block with the same weights;
- task conditioning: per-frame timesteps keep the conditioning frame exactly clean through the
  sampler; with channel concat the conditioning frame changes the output and a zero mask
  switches it off.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from seedjax.diffusion.sampling import Sampler, rollout
from seedjax.models import generator, mmdit_blocks, video_dit
from seedjax.models.geometry import Geometry
from seedjax.models.rope import rope_frequencies
from seedjax.schema.models import text_config, video_dit_config


def test_multishot_position_ids_single_shot():
    txt, vis = video_dit.multishot_position_ids(jnp.zeros((1, 2), jnp.int32), (2, 1, 2), shot_len=3, num_shots=1)
    np.testing.assert_array_equal(txt[0], [[0, 0, 0], [1, 0, 0], [2, 0, 0]])
    # Frames continue the time axis after the caption: t = 3 + f.
    np.testing.assert_array_equal(vis[0], [[3, 0, 0], [3, 0, 1], [4, 0, 0], [4, 0, 1]])


def test_multishot_position_ids_interleave_shots():
    # Shot 0 owns frames 0-1, shot 1 frame 2; 2 text tokens per shot. Reading order along time:
    # [txt0 txt0] [f0] [f1] [txt1 txt1] [f2]  ->  t = 0 1 | 2 | 3 | 4 5 | 6
    txt, vis = video_dit.multishot_position_ids(jnp.array([[0, 0, 1]]), (3, 1, 1), shot_len=2, num_shots=2)
    np.testing.assert_array_equal(txt[0, :, 0], [0, 1, 4, 5])
    np.testing.assert_array_equal(txt[0, :, 1:], 0)
    np.testing.assert_array_equal(vis[0], [[2, 0, 0], [3, 0, 0], [6, 0, 0]])


# --------------------------------------------------------------------------- attention references


def _dense64(q, k, v, mask):
    """float64 softmax attention; q [Lq, H, D], k, v [Lk, H, D], mask [Lq, Lk] bool."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    scores = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(q.shape[-1])
    scores = np.where(mask[None], scores, -np.inf)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    return np.einsum("hqk,khd->qhd", probs, v)


def _inputs(b, frames, p, num_text, heads=2, d=4, seed=0):
    keys = jax.random.split(jax.random.key(seed), 6)
    vis = [jax.random.normal(keys[i], (b, frames * p, heads, d)) for i in range(3)]
    txt = [jax.random.normal(keys[3 + i], (b, num_text, heads, d)) for i in range(3)]
    return vis, txt


def test_decoupled_attention_matches_per_frame_and_per_position_loops():
    b, frames, (h, w), shots, shot_len, window = 2, 4, (2, 2), 2, 3, 2
    p, num_text = h * w, shots * shot_len
    (qv, kv, vv), (qt, kt, vt) = _inputs(b, frames, p, num_text)
    frame_shot = jnp.array([[0, 0, 1, 1], [0, 0, 0, 1]])
    text_mask = jnp.array([[1, 1, 0, 1, 0, 0], [1, 0, 0, 1, 1, 1]], bool)
    text_shot = jnp.repeat(jnp.arange(shots), shot_len)[None].repeat(b, 0)
    masks = video_dit.Masks.make(text_mask, text_shot, frame_shot, jnp.ones((b, frames), bool))
    ops = video_dit.AttentionOps("decoupled", (frames, h, w), window, "dense", "ulysses")
    out_v, out_t = jax.jit(ops.spatial)(qv, kv, vv, qt, kt, vt, masks)
    out_temporal = jax.jit(ops.temporal)(qv, kv, vv, masks)

    for i in range(b):
        text_acc = np.zeros((num_text, 2, 4))
        counts = np.zeros(num_text)
        for f in range(frames):
            sl = slice(f * p, (f + 1) * p)
            q = np.concatenate([qt[i], qv[i, sl]])
            k = np.concatenate([kt[i], kv[i, sl]])
            v = np.concatenate([vt[i], vv[i, sl]])
            key_ok = np.concatenate([np.asarray(text_mask[i]) & (np.asarray(text_shot[i]) == int(frame_shot[i, f])),
                                     np.ones(p, bool)])
            ref = _dense64(q, k, v, np.broadcast_to(key_ok, (len(q), len(k))))
            np.testing.assert_allclose(out_v[i, sl], ref[num_text:], atol=2e-5)
            own = np.asarray(text_shot[i]) == int(frame_shot[i, f])  # text of this frame's shot
            text_acc[own] += ref[:num_text][own]
            counts[own] += 1
        np.testing.assert_allclose(out_t[i], text_acc / np.maximum(counts, 1)[:, None, None], atol=2e-5)
        for pos in range(p):  # temporal: each position across the frames of its window
            rows = np.arange(frames) * p + pos
            same_window = (np.arange(frames)[:, None] // window) == (np.arange(frames)[None] // window)
            ref = _dense64(qv[i, rows], kv[i, rows], vv[i, rows], same_window)
            np.testing.assert_allclose(out_temporal[i, rows], ref, atol=2e-5)


@pytest.mark.parametrize("area,window", [((2, 2), 0), ((1, 3), 2), ((0, 0), 0)])
def test_windowed_temporal_attention_matches_a_loop_over_spatial_windows(area, window):
    """Seedance's windowed temporal layers: a token attends, in every frame of its frame window, to
    the tokens of its spatial window ((0, 0): the whole frame)."""
    b, frames, (h, w) = 2, 4, (4, 6)
    p = h * w
    (qv, kv, vv), _ = _inputs(b, frames, p, 1, seed=2)
    frame_valid = jnp.array([[1, 1, 1, 1], [1, 1, 1, 0]], bool)  # batch 1's last frame is no key
    masks = video_dit.Masks.make(jnp.ones((b, 1), bool), jnp.zeros((b, 1), jnp.int32),
                                 jnp.zeros((b, frames), jnp.int32), frame_valid)
    ops = video_dit.AttentionOps("decoupled", (frames, h, w), window, "dense", "ulysses", area=area)
    out = np.asarray(jax.jit(ops.temporal)(qv, kv, vv, masks))
    rows, cols = (side if n == 0 else n for n, side in zip(area, (h, w)))
    r, c = np.divmod(np.arange(p), w)
    spatial_window = (r // rows) * (w // cols) + c // cols  # [P]
    tok_frame, tok_window = np.repeat(np.arange(frames), p), np.tile(spatial_window, frames)
    window_ids = np.arange(frames) // window if window else np.zeros(frames, int)
    for i in range(b):
        for n in range(frames * p):
            keys = (tok_window == tok_window[n]) & (window_ids[tok_frame] == window_ids[tok_frame[n]])
            keys &= np.asarray(frame_valid[i])[tok_frame]
            ref = _dense64(qv[i, n:n + 1], kv[i], vv[i], keys[None])
            np.testing.assert_allclose(out[i, n:n + 1], ref, atol=2e-5)
    if area == (0, 0) and window == 0:  # whole frames, all frames: full_3d's temporal sublayer
        full = video_dit.AttentionOps("full_3d", (frames, h, w), 0, "dense", "ulysses")
        np.testing.assert_allclose(out, jax.jit(full.temporal)(qv, kv, vv, masks), atol=2e-5)
    with pytest.raises(ValueError, match="does not tile"):
        video_dit.AttentionOps("decoupled", (frames, h, w), 0, "dense", "ulysses", area=(3, 4)).temporal(
            qv, kv, vv, masks)


def test_full_3d_attention_is_dense_over_all_tokens():
    b, frames, (h, w), num_text = 1, 3, (2, 2), 4
    (qv, kv, vv), (qt, kt, vt) = _inputs(b, frames, h * w, num_text, seed=1)
    text_mask = jnp.array([[1, 1, 1, 0]], bool)
    masks = video_dit.Masks.make(text_mask, jnp.zeros((1, num_text), jnp.int32), jnp.zeros((1, frames), jnp.int32),
                                 jnp.ones((1, frames), bool))
    ops = video_dit.AttentionOps("full_3d", (frames, h, w), 0, "dense", "ulysses")
    out_v, out_t = jax.jit(ops.spatial)(qv, kv, vv, qt, kt, vt, masks)
    q, k, v = (np.concatenate([t[0], x[0]]) for t, x in ((qt, qv), (kt, kv), (vt, vv)))
    key_ok = np.concatenate([np.asarray(text_mask[0]), np.ones(frames * h * w, bool)])
    ref = _dense64(q, k, v, np.broadcast_to(key_ok, (len(q), len(k))))
    np.testing.assert_allclose(out_t[0], ref[:num_text], atol=2e-5)
    np.testing.assert_allclose(out_v[0], ref[num_text:], atol=2e-5)
    out = jax.jit(ops.temporal)(qv, kv, vv, masks)
    np.testing.assert_allclose(out[0], _dense64(qv[0], kv[0], vv[0], np.ones((len(q) - num_text,) * 2, bool)),
                               atol=2e-5)


def test_window_mode_sublayers_use_regular_then_shifted_windows():
    """Mode 'window' (SeedVR): the spatial sublayer of block i is attention layer 2i (regular
    windows, text keys, text sees text), the temporal one layer 2i + 1 (windows shifted by half);
    both equal `windowed_attention` on those partitions (itself held to float64 in
    tests/test_adaptive_windows.py), and the block-sparse backend equals the dense one."""
    from seedjax.models import adaptive_windows as aw

    b, grid, num_text = 2, (2, 4, 6), 3
    p = grid[1] * grid[2]
    (qv, kv, vv), (qt, kt, vt) = _inputs(b, grid[0], p, num_text, seed=5)
    text_mask = jnp.array([[1, 1, 1], [1, 0, 0]], bool)
    masks = video_dit.Masks.make(text_mask, jnp.zeros((b, num_text), jnp.int32), jnp.zeros((b, grid[0]), jnp.int32),
                                 jnp.ones((b, grid[0]), bool))
    window = (1, 2, 4)
    shifted = aw.half_shift(grid, window)
    assert shifted == (0, 1, 2)
    joint = [jnp.concatenate(pair, axis=1) for pair in ((qt, qv), (kt, kv), (vt, vv))]
    want_spatial = aw.windowed_attention(*joint, grid, window, num_text=num_text, text_valid=text_mask)
    want_temporal = aw.windowed_attention(qv, kv, vv, grid, window, shifted)
    for backend in ("dense", "block_sparse"):
        ops = video_dit.AttentionOps("window", grid, 0, "dense", "ulysses", windows=window, window_backend=backend,
                                     window_block=8).at(1)
        out_v, out_t = jax.jit(ops.spatial)(qv, kv, vv, qt, kt, vt, masks)
        np.testing.assert_allclose(out_v, want_spatial[:, num_text:], atol=2e-5, err_msg=backend)
        np.testing.assert_allclose(out_t, want_spatial[:, :num_text], atol=2e-5, err_msg=backend)
        np.testing.assert_allclose(jax.jit(ops.temporal)(qv, kv, vv, masks), want_temporal, atol=2e-5,
                                   err_msg=backend)


# --------------------------------------------------------------------------- the model


def _random(make, seed: int = 0, scale: float = 0.2) -> nnx.Module:
    """The module `make()` builds with every parameter (the zero-initialised adaLN and output
    layers too) drawn from N(0, scale^2) by numpy. Built abstractly: no initialiser runs (on a
    CPU each would be a compile of its own)."""
    graphdef, state = nnx.split(nnx.eval_shape(make))
    leaves, tree = jax.tree.flatten(state)
    rng = np.random.default_rng(seed)
    values = [jnp.asarray(scale * rng.standard_normal(x.shape), x.dtype) for x in leaves]
    return nnx.merge(graphdef, jax.tree.unflatten(tree, values))


def test_spatial_sublayer_on_one_frame_is_the_mmdit_block():
    cfg = video_dit_config("tiny", num_heads=2, head_dim=16, axes_dims_rope=(4, 6, 6), text_dim=16, pooled_dim=16)
    block = _random(lambda: video_dit.VideoBlock(32, 16, 64, rngs=nnx.Rngs(0), dtype=jnp.float32))
    reference = _random(lambda: mmdit_blocks.DoubleStreamBlock(32, 16, 64, rngs=nnx.Rngs(1), dtype=jnp.float32), seed=1)
    nnx.update(reference, {"img": nnx.state(block.img), "txt": nnx.state(block.txt)})
    h, w, num_text = 2, 3, 5
    keys = jax.random.split(jax.random.key(3), 3)
    vis, txt = jax.random.normal(keys[0], (2, h * w, 32)), jax.random.normal(keys[1], (2, num_text, 32))
    cond = jax.random.normal(keys[2], (2, 32))
    txt_ids, vis_ids = video_dit.multishot_position_ids(jnp.zeros((2, 1), jnp.int32), (1, h, w), num_text, 1)
    rope_txt, rope_vis = (rope_frequencies(i, cfg.axes_dims_rope) for i in (txt_ids, vis_ids))
    text_mask = jnp.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
    masks = video_dit.Masks.make(text_mask, jnp.zeros((2, num_text), jnp.int32), jnp.zeros((2, 1), jnp.int32),
                                 jnp.ones((2, 1), bool))
    ops = video_dit.AttentionOps("decoupled", (1, h, w), 0, "dense", "ulysses")
    got_vis, got_txt = jax.jit(lambda *a: block.spatial(*a, ops=ops))(vis, txt, cond[:, None], cond, rope_vis,
                                                                      rope_txt, masks)
    cos, sin = (jnp.concatenate([a, b], axis=1) for a, b in zip(rope_txt, rope_vis))
    key_mask = jnp.concatenate([text_mask, jnp.ones((2, h * w), bool)], axis=1)
    attend = lambda q, k, v, m: jax.nn.dot_product_attention(q, k, v, mask=m[:, None, None, :])
    want_vis, want_txt = jax.jit(lambda *a: reference(*a, attend=attend))(vis, txt, cond, cos, sin, key_mask)
    np.testing.assert_allclose(got_vis, want_vis, atol=1e-5)
    np.testing.assert_allclose(got_txt, want_txt, atol=1e-5)


@functools.cache
def _generator(condition: str):
    config = ml_collections.ConfigDict()
    config.text = text_config()
    config.text.update(width=32, depth=1, num_heads=2, max_len=8)
    config.model = video_dit_config("tiny", num_heads=2, head_dim=16, axes_dims_rope=(4, 6, 6), text_dim=32,
                                    pooled_dim=32, depth=1, in_channels=3 * 4, condition=condition)
    return _random(lambda: generator.build(config, nnx.Rngs(0)))


GEOMETRY = Geometry.video(3, 4, 4, 3, patch=2)


def _batch(seed: int = 0, cond: bool = True) -> dict:
    rng = np.random.default_rng(seed)
    tokens = rng.integers(3, 200, (2, 8)).astype(np.int32)
    batch = {"tokens": jnp.asarray(tokens), "text_mask": jnp.ones((2, 8), bool)}
    if cond:
        frames = np.zeros((2, *GEOMETRY.shape), np.float32)
        frames[:, 0] = rng.uniform(-1, 1, (2, *GEOMETRY.shape[1:]))
        batch |= {"cond_frames": jnp.asarray(frames), "cond_mask": jnp.array([[1.0, 0, 0], [1.0, 0, 0]])}
    return batch


def test_per_frame_timestep_keeps_the_conditioning_frame_exactly_clean():
    model = _generator("timestep")
    batch = _batch()
    sampler = Sampler.make(3)

    @jax.jit
    def states_and_video(batch):
        noise = model.start(GEOMETRY.noise(jax.random.key(0), 2), batch, GEOMETRY)
        states = rollout(sampler.velocity(model, batch, GEOMETRY), noise, sampler.sigmas)
        return states, GEOMETRY.frames_of(states[-1])

    states, video = states_and_video(batch)
    clean = GEOMETRY.tokens(batch["cond_frames"])[:, : GEOMETRY.num_tokens // 3]
    for state in states:  # every state of the ODE, not just the sample
        np.testing.assert_array_equal(state[:, : GEOMETRY.num_tokens // 3], clean)
    assert float(jnp.abs(states[-1] - states[0])[:, GEOMETRY.num_tokens // 3:].min()) > 0  # the rest moved
    np.testing.assert_array_equal(video[:, 0], batch["cond_frames"][:, 0])


def test_channel_concat_conditioning_is_wired():
    model = _generator("concat")
    x = GEOMETRY.noise(jax.random.key(1), 2)
    t = jnp.array([0.5, 0.8])
    run = jax.jit(lambda b: model(x, t, model.condition(b), GEOMETRY))
    base = run(_batch(0))
    other = _batch(0)
    other["cond_frames"] = _batch(1)["cond_frames"]
    assert float(jnp.abs(run(other) - base).max()) > 1e-3  # another first frame, another video
    off = lambda b: b | {"cond_mask": jnp.zeros_like(b["cond_mask"])}
    np.testing.assert_array_equal(run(off(_batch(0))), run(off(other)))  # zero mask: the frame is ignored
    np.testing.assert_allclose(run(off(_batch(0))), run(_batch(0, cond=False)), atol=1e-5)  # = no conditioning


def test_one_block_with_one_window_is_full_3d():
    """With a single window (counts 1 x 1 x 1) a one-block window model is the full_3d model with
    the same weights: its visual tokens see all text and all visual tokens in both sublayers (the
    text stream differs, text-only keys, but one block's output never reads it)."""
    config = ml_collections.ConfigDict()
    config.text = text_config()
    config.text.update(width=32, depth=1, num_heads=2, max_len=8)
    config.model = video_dit_config("tiny", num_heads=2, head_dim=16, axes_dims_rope=(4, 6, 6), text_dim=32,
                                    pooled_dim=32, depth=1, in_channels=12, attention="full_3d")
    full = _random(lambda: generator.build(config, nnx.Rngs(0)))
    config.model.attention = "window"
    config.model.window.update(counts=(1, 1, 1), reference=(2, 3))  # the 2 x 3 grid: one window
    windowed = _random(lambda: generator.build(config, nnx.Rngs(0)))
    geometry = Geometry.video(3, 4, 6, 3, patch=2)
    x, t, batch = geometry.noise(jax.random.key(1), 2), jnp.array([0.3, 0.8]), _batch(cond=False)
    run = lambda m: jax.jit(lambda x: m(x, t, m.condition(batch), geometry))(x)
    np.testing.assert_allclose(run(windowed), run(full), atol=1e-5)


def test_bad_video_config_is_one_line():
    with pytest.raises(ValueError, match="model.attention"):
        video_dit.VideoDiT(video_dit_config("tiny", attention="sparse"), nnx.Rngs(0))
    with pytest.raises(ValueError, match="axes_dims_rope"):
        video_dit.VideoDiT(video_dit_config("tiny", axes_dims_rope=(8, 24)), nnx.Rngs(0))
    with pytest.raises(ValueError, match="model.window: counts"):  # the training grid must be named
        video_dit.VideoDiT(video_dit_config("tiny", attention="window"), nnx.Rngs(0))
    with pytest.raises(ValueError, match="model.window: rule"):
        cfg = video_dit_config("tiny", attention="window")
        cfg.window.update(reference=(4, 4), rule="huge")
        video_dit.VideoDiT(cfg, nnx.Rngs(0))


@pytest.mark.parametrize("attention,sequence_parallel", [("full_3d", "ring"), ("window", "ulysses")])
def test_sequence_parallel_model_matches_one_device(attention, sequence_parallel):
    """The whole full_3d model with ring attention, and the window model (regular and shifted
    windows with text keys) with Ulysses, on a data=2 x sequence=4 mesh (8 fake devices): loss and
    every parameter gradient equal the 1-device ones. (The decoupled model on a sequence mesh,
    padded frames included, is tests/test_video_e2e.py's run.)"""
    frames = 3
    from seedjax.parallel import mesh as mesh_lib
    from seedjax.parallel import sharding

    config = ml_collections.ConfigDict()
    config.text = text_config()
    config.text.update(width=32, depth=1, num_heads=2, max_len=8)
    config.model = video_dit_config("tiny", num_heads=4, head_dim=8, axes_dims_rope=(2, 2, 4), text_dim=32,
                                    pooled_dim=32, depth=1, in_channels=12, attention=attention,
                                    sequence_parallel=sequence_parallel, temporal_window=2)
    if attention == "window":
        config.model.update(temporal_window=0, window=dict(counts=(2, 2, 2), reference=(2, 2)))
    model = _random(lambda: generator.build(config, nnx.Rngs(0)))
    geometry = Geometry.video(frames, 4, 4, 3, patch=2)
    batch = _batch(cond=False)
    x, t = geometry.noise(jax.random.key(1), 2), jnp.array([0.3, 0.8])
    graphdef, params = nnx.split(model)

    def loss_and_grads(params):
        def loss(p):
            m = nnx.merge(graphdef, p)
            return jnp.mean(m(x, t, m.condition(batch), geometry) ** 2)
        return jax.value_and_grad(loss)(params)

    want, want_grads = jax.jit(loss_and_grads)(params)
    mesh = mesh_lib.make_mesh(ml_collections.ConfigDict(dict(data=2, fsdp=1, tensor=1, sequence=4)))
    with jax.set_mesh(mesh), sharding.axis_rules(sharding.rules_from_config(ml_collections.ConfigDict())):
        got, got_grads = jax.jit(loss_and_grads)(params)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    for g, w in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads)):
        np.testing.assert_allclose(g, w, atol=5e-5, rtol=1e-4)


@pytest.mark.parametrize("attention", ["decoupled", "full_3d"])
def test_analytic_flops_match_xla(attention):
    """`train_flops_per_example` (MFU and the decoupled-vs-full_3d comparison) against the FLOPs
    XLA counts in the compiled forward pass (x 3 for forward + backward): XLA also counts the
    elementwise work (norms, softmax, RoPE) the matmul convention leaves out, a few percent at
    this width, so the analytic count is at most XLA's and within 10% of it."""
    cfg = video_dit_config("tiny", num_heads=2, head_dim=16, axes_dims_rope=(4, 6, 6), text_dim=32, pooled_dim=32,
                           depth=2, in_channels=12, attention=attention)
    model = _random(lambda: video_dit.VideoDiT(cfg, nnx.Rngs(0)))
    grid, num_text = (6, 2, 3), 10
    x = jnp.zeros((1, 36, 12))
    text, pooled = jnp.zeros((1, num_text, 32)), jnp.zeros((1, 32))
    forward = jax.jit(lambda x, text, pooled: model(x, jnp.array([0.5]), text, pooled, grid=grid))
    counted = forward.lower(x, text, pooled).compile().cost_analysis()["flops"]
    assert 0.9 * 3 * counted <= video_dit.train_flops_per_example(cfg, grid, num_text) <= 3 * counted


def test_analytic_flops_of_windows():
    """Window mode counts the pairs its windows keep (the dense backend computes every pair and
    masks, so XLA's count is no reference): one window over the whole grid is full_3d less the text
    queries' visual keys (text sees text only), 2 x Lt x N pairs a block (scores and values) x d;
    windows of a quarter of the tokens keep a quarter of the visual pairs."""
    cfg = video_dit_config("tiny", num_heads=2, head_dim=16, axes_dims_rope=(4, 6, 6), text_dim=32, pooled_dim=32,
                           depth=2, in_channels=12, attention="full_3d")
    grid, num_text = (6, 2, 4), 10
    n, d = 48, 32
    flops = lambda c: video_dit.train_flops_per_example(c, grid, num_text)
    full = flops(cfg)
    cfg.attention = "window"
    cfg.window.update(counts=(1, 1, 1), reference=(2, 4))
    assert full - flops(cfg) == 3 * 2 * cfg.depth * 2 * d * num_text * n
    cfg.window.counts = (2, 1, 2)  # windows of 3 frames x 2 x 2 tokens: 12 tokens, a quarter
    saved = 3 * 2 * cfg.depth * 2 * d * (2 * n * (n - 12))  # both sublayers' visual keys outside the window
    assert full - flops(cfg) == 3 * 2 * cfg.depth * 2 * d * num_text * n + saved
