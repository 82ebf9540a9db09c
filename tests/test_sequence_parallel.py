"""Sequence-parallel attention (seedjax/parallel/sequence.py) against dense references on 8 fake CPU devices.

The references here are independent of the module: masks are written out element by element from the
rule definitions (and one hand-written table); attention is an explicit float64 numpy softmax over the
masked scores (rows without any allowed key set to 0) with its gradients from the softmax derivative
written out, so no reference needs a compilation. Meshes come from
`seedjax.parallel.mesh.make_mesh`, as in the training loop, so axis types are Auto (GSPMD places
the global arrays, the functions under test run their own shard_map); inputs are placed with
NamedShardings on 'sequence' where the length divides the axis. Each case compiles one forward + VJP.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from seedjax.parallel import sequence as sp
from seedjax.parallel.mesh import make_mesh

H, D = 8, 8
TOL = dict(atol=1e-5, rtol=1e-5)


def reference_mask(rule, q_ids, k_ids, key_valid, window=0):
    """[B, Lq, Lk] bool, one element at a time from the rule definitions."""
    q_ids, k_ids, key_valid = np.asarray(q_ids), np.asarray(k_ids), np.asarray(key_valid)
    out = np.zeros((q_ids.shape[0], q_ids.shape[1], k_ids.shape[1]), bool)
    for b, i, j in np.ndindex(*out.shape):
        qi, kj = int(q_ids[b, i]), int(k_ids[b, j])
        causal = kj <= qi and (window == 0 or qi - kj < window or kj <= 0)  # text (-1) and block 0 kept
        allowed = {"all": True, "block_causal": causal, "same": kj == qi,
                   "window": kj < 0 or 0 <= qi - kj < window}[rule]
        out[b, i, j] = allowed and bool(key_valid[b, j])
    return out


def reference_attention(q, k, v, allowed, cotangent):
    """Float64 numpy: softmax over explicit masked scores (rows with no allowed key give 0), and the
    gradients (dq, dk, dv) of <out, cotangent> from the softmax derivative written out."""
    q, k, v, cotangent = (np.asarray(x, np.float64) for x in (q, k, v, cotangent))
    scale = 1.0 / np.sqrt(q.shape[-1])
    mask = np.asarray(allowed)[:, None]  # [B, 1, Lq, Lk]
    has_key = mask.any(-1, keepdims=True)
    scores = np.where(mask, np.einsum("bqhd,bkhd->bhqk", q, k) * scale, -np.inf)
    weights = np.where(mask, np.exp(scores - np.where(has_key, scores.max(-1, keepdims=True), 0.0)), 0.0)
    probs = weights / np.where(has_key, weights.sum(-1, keepdims=True), 1.0)
    d_probs = np.einsum("bqhd,bkhd->bhqk", cotangent, v)
    d_scores = probs * (d_probs - (d_probs * probs).sum(-1, keepdims=True))
    grads = (np.einsum("bhqk,bkhd->bqhd", d_scores, k) * scale, np.einsum("bhqk,bqhd->bkhd", d_scores, q) * scale,
             np.einsum("bhqk,bqhd->bkhd", probs, cotangent))
    return np.einsum("bhqk,bkhd->bqhd", probs, v), grads


def forward_and_vjp(fn, args, cotangent):
    def both(*a):
        out, vjp = jax.vjp(fn, *a)
        return out, vjp(cotangent)

    return jax.jit(both)(*args)


def normal(rng, *shape):
    return jnp.asarray(rng.normal(size=shape), jnp.float32)


def place(mesh, x, spec):
    """A NamedSharding on the mesh when every split axis divides its dimension (else left as is)."""
    for dim, axis in zip(x.shape, spec):
        if axis is not None and dim % mesh.shape[axis]:
            return x
    return jax.device_put(x, NamedSharding(mesh, spec))


def frame_ids(batch, text, length, frame):
    """Text tokens id -1, then visual tokens id = their frame (`frame` tokens per frame)."""
    row = np.r_[np.full(text, -1), np.arange(length - text) // frame]
    return jnp.asarray(np.tile(row, (batch, 1)), jnp.int32)


def test_mask_rules_match_hand_written_table():
    ids = jnp.asarray([[-1, -1, 0, 0, 1, 2]], jnp.int32)
    valid = jnp.asarray([[True, True, True, False, True, True]])
    block_causal = np.array([[1, 1, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0],
                             [1, 1, 1, 0, 0, 0], [1, 1, 1, 0, 1, 0], [1, 1, 1, 0, 1, 1]], bool)
    same = np.array([[1, 1, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0], [0, 0, 1, 0, 0, 0],
                     [0, 0, 1, 0, 0, 0], [0, 0, 0, 0, 1, 0], [0, 0, 0, 0, 0, 1]], bool)
    window2 = np.array([[1, 1, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0],
                        [1, 1, 1, 0, 0, 0], [1, 1, 1, 0, 1, 0], [1, 1, 0, 0, 1, 1]], bool)
    for rule, table, window in (("block_causal", block_causal, 0), ("same", same, 0), ("window", window2, 2)):
        spec = sp.MaskSpec(rule, valid, ids, ids, window)
        np.testing.assert_array_equal(np.asarray(sp.mask_of(spec))[0], table, err_msg=rule)
        np.testing.assert_array_equal(np.asarray(sp.mask_of(spec))[0], reference_mask(rule, ids, ids, valid, window)[0])
        np.testing.assert_array_equal(np.asarray(sp.mask_of(spec, slice(2, 5), slice(1, 4)))[0], table[2:5, 1:4])
    # block_causal with a window of 2 blocks: the block before, the query's own, and always text and block 0.
    ids = jnp.asarray([[-1, 0, 1, 2, 3]], jnp.int32)
    causal_window2 = np.array([[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 1, 0, 1, 1]], bool)
    spec = sp.MaskSpec("block_causal", None, ids, ids, 2)
    np.testing.assert_array_equal(np.asarray(sp.mask_of(spec))[0], causal_window2)
    np.testing.assert_array_equal(causal_window2, reference_mask("block_causal", ids, ids, np.ones((1, 5)), 2)[0])
    np.testing.assert_array_equal(np.asarray(sp.mask_of(sp.MaskSpec("all", valid)))[0, 0], np.asarray(valid)[0])
    assert sp.mask_of(None) is None and sp.mask_of(sp.MaskSpec()) is None


# (mesh, impl, L, rule, window): every (sequence, impl) pair for 2, 4, 8; L = 37 is padded, 36 and 40
# divide; sequence 2 also splits the batch on 'data' and the heads on 'tensor'.
CASES = [
    ({"sequence": 2, "tensor": 2, "data": 2}, "ulysses", 37, "block_causal", 0),
    ({"sequence": 2, "tensor": 2, "data": 2}, "ring", 37, "block_causal", 0),
    ({"sequence": 4, "data": -1}, "ulysses", 36, "window", 2),
    ({"sequence": 4, "data": -1}, "ring", 36, "window", 2),
    ({"sequence": 8}, "ulysses", 40, "same", 0),
    ({"sequence": 8}, "ring", 40, "block_causal", 3),  # causal window: 3 blocks, text and block 0 kept
]


@pytest.mark.parametrize("mesh_cfg,impl,length,rule,window", CASES)
def test_attention_forward_and_gradients_match_dense(mesh_cfg, impl, length, rule, window):
    rng = np.random.default_rng(length)
    batch, text = 2, 5
    q, k, v, cotangent = (normal(rng, batch, length, H, D) for _ in range(4))
    ids = frame_ids(batch, text, length, frame=4)
    valid = np.ones((batch, length), bool)
    valid[0, rng.choice(np.arange(text, length), 3, replace=False)] = False
    valid[1, :text] = False  # batch 1's text queries see only text keys ('same', causal, window): none left
    mask = sp.MaskSpec(rule, jnp.asarray(valid), ids, ids, window=window)

    allowed = reference_mask(rule, ids, ids, valid, window=mask.window)
    assert not allowed[1, :text].any() and allowed.any(-1).sum() > batch * (length - text) // 2
    want_out, want_grads = reference_attention(q, k, v, allowed, cotangent)

    mesh = make_mesh(mesh_cfg)
    tokens = P("data" if mesh.shape["data"] > 1 else None, "sequence")
    q, k, v = (place(mesh, x, tokens) for x in (q, k, v))
    with jax.set_mesh(mesh):
        assert sp.sequence_size() == mesh_cfg["sequence"]
        out, grads = forward_and_vjp(lambda q, k, v, m: sp.attention(q, k, v, m, impl=impl), (q, k, v, mask), cotangent)
    chex.assert_trees_all_close(out, want_out, **TOL)
    chex.assert_trees_all_close(grads[:3], want_grads, **TOL)
    np.testing.assert_array_equal(np.asarray(out[1, :text]), 0.0)  # fully masked query rows
    assert all(np.isfinite(np.asarray(g)).all() for g in grads[:3])


def test_no_mesh_is_dense_and_fully_masked_rows_are_zero():
    rng = np.random.default_rng(1)
    q, k, v = (normal(rng, 1, 6, 2, 4) for _ in range(3))
    ids = jnp.asarray([[0, 0, 1, 1, 5, 2]], jnp.int32)  # id 5 has no key of its own under 'same'
    mask = sp.MaskSpec("same", None, ids, ids.at[0, 4].set(3))
    assert sp.sequence_size() == 1
    allowed = reference_mask("same", ids, ids.at[0, 4].set(3), np.ones((1, 6), bool))
    want, _ = reference_attention(q, k, v, allowed, jnp.zeros_like(q))
    outs = jax.jit(lambda q, k, v, m: [sp.attention(q, k, v, m, impl=impl) for impl in sp.IMPLS])(q, k, v, mask)
    for out in outs:
        chex.assert_trees_all_close(out, want, **TOL)
        np.testing.assert_array_equal(np.asarray(out[0, 4]), 0.0)


def test_explicit_mesh_axes_with_padding():
    """On Explicit axes shard_map wants inputs already in its layout and padded outputs must be gathered
    before cropping: both are done inside (the training loop's meshes are Auto, covered above)."""
    mesh = jax.make_mesh((1, 1, 1, 4), ("data", "fsdp", "tensor", "sequence"), axis_types=(AxisType.Explicit,) * 4)
    rng = np.random.default_rng(2)
    q, k, v = (normal(rng, 1, 37, H, D) for _ in range(3))
    video = normal(rng, 1, 8, 5, H, D)
    frame_valid = np.ones((1, 8), bool)
    want, _ = reference_attention(q, k, v, np.ones((1, 37, 37), bool), q)
    want_video, _ = reference_temporal(video, video, video, reference_frame_mask(frame_valid, 3), video)
    video = jax.device_put(video, NamedSharding(mesh, P(None, "sequence")))
    with jax.set_mesh(mesh):
        out, out_video = jax.jit(lambda q, k, v, x: (sp.attention(q, k, v, impl="ring"),
                                                     sp.temporal_attention(x, x, x, window=3)))(q, k, v, video)
    chex.assert_trees_all_close((out, out_video), (want, want_video), **TOL)


def test_bad_arguments_are_one_clear_error():
    x = jnp.zeros((1, 8, 6, 4))
    with pytest.raises(ValueError, match="impl"):
        sp.attention(x, x, x, impl="flash")
    with pytest.raises(ValueError, match="rule"):
        sp.MaskSpec("causal")
    video = jnp.zeros((1, 2, 6, 2, 4))
    with pytest.raises(ValueError, match="group 4 must be >= 1 and divide the 6 positions"):
        sp.temporal_attention(video, video, video, group=4)
    with pytest.raises(ValueError, match="needs q_ids"):
        sp.attention(x, x, x, sp.MaskSpec("same"), impl="dense")
    with pytest.raises(ValueError, match="key_valid must have shape"):
        sp.attention(x, x, x, sp.MaskSpec("all", jnp.ones((1, 7), bool)), impl="dense")
    with jax.set_mesh(make_mesh({"sequence": 4, "data": -1})):
        with pytest.raises(ValueError, match="not divisible by sequence=4"):
            sp.attention(x, x, x, impl="ulysses")  # 6 heads over 4 devices


def reference_frame_mask(frame_valid, window, causal=False):
    """[B, F, F]: same window of `window` frames (0: all) and a valid key frame; `causal`: an earlier
    frame or the query's own, within the `window` most recent (0: all), frame 0 always."""
    batch, frames = frame_valid.shape
    allowed = np.zeros((batch, frames, frames), bool)
    for b, f, g in np.ndindex(*allowed.shape):
        if causal:
            ok = g <= f and (window == 0 or f - g < window or g == 0)
        else:
            ok = window == 0 or f // window == g // window
        allowed[b, f, g] = ok and bool(frame_valid[b, g])
    return allowed


def reference_temporal(q, k, v, allowed, cotangent, group=1):
    """Per window of `group` consecutive positions, attention over its tokens in all frames with the
    frame mask `allowed` [B, F, F] (expanded to tokens one by one); output and gradients."""
    batch, frames, positions = q.shape[:3]
    windows = positions // group
    per_window = lambda x: np.moveaxis(np.asarray(x).reshape(batch, frames, windows, group, *x.shape[3:]), 2, 1
                                       ).reshape(batch * windows, frames * group, *x.shape[3:])
    back = lambda x: np.moveaxis(x.reshape(batch, windows, frames, group, *x.shape[2:]), 1, 2
                                 ).reshape(batch, frames, positions, *x.shape[2:])
    token_frame = np.arange(frames * group) // group
    tokens = np.zeros((batch, frames * group, frames * group), bool)
    for b, i, j in np.ndindex(*tokens.shape):
        tokens[b, i, j] = allowed[b, token_frame[i], token_frame[j]]
    out, grads = reference_attention(*map(per_window, (q, k, v)), np.repeat(tokens, windows, axis=0),
                                     per_window(cotangent))
    return back(out), tuple(map(back, grads))


@pytest.mark.parametrize("sequence,frames,positions,window,group,causal", [
    (4, 8, 5, 3, 1, False), (8, 6, 3, 0, 1, False), (4, 6, 6, 2, 3, False), (2, 5, 4, 0, 4, False),
    (4, 7, 4, 3, 2, True)])
def test_temporal_attention_matches_per_window_dense(sequence, frames, positions, window, group, causal):
    """Per spatial window (`group` consecutive positions; 1: each position alone), attention over frames;
    frames and windows padded where they do not divide the axis; block-causal over frames (`causal`)."""
    rng = np.random.default_rng(frames)
    q, k, v, cotangent = (normal(rng, 2, frames, positions, H, D) for _ in range(4))
    frame_valid = np.ones((2, frames), bool)
    frame_valid[1, -2:] = False  # padded frames; with a frame window (3 of 8, 2 of 6) batch 1's last is empty
    allowed = reference_frame_mask(frame_valid, window, causal)
    want_out, want_grads = reference_temporal(q, k, v, allowed, cotangent, group)
    mesh = make_mesh({"sequence": sequence, "data": -1})
    q, k, v = (place(mesh, x, P(None, "sequence")) for x in (q, k, v))
    with jax.set_mesh(mesh):
        out, grads = forward_and_vjp(
            lambda q, k, v, fv: sp.temporal_attention(q, k, v, fv, window=window, group=group, causal=causal),
            (q, k, v, jnp.asarray(frame_valid)), cotangent)
    chex.assert_trees_all_close(out, want_out, **TOL)
    chex.assert_trees_all_close(grads[:3], want_grads, **TOL)
    empty = ~allowed.any(-1)  # [B, F] query frames with no key frame
    assert empty.any() == (window > 0 and not causal)  # a causal frame always sees itself (if valid)
    np.testing.assert_array_equal(np.asarray(out)[empty], 0.0)


@pytest.mark.parametrize("sequence,visual", [(4, 18), (2, 20)])
def test_replicated_queries_over_sharded_keys_merge_partial_softmax(sequence, visual):
    rng = np.random.default_rng(visual)
    batch, text = 2, 6
    q, k_rep, v_rep, cotangent = (normal(rng, batch, text, H, D) for _ in range(4))
    k_sh, v_sh = normal(rng, batch, visual, H, D), normal(rng, batch, visual, H, D)
    text_ids = jnp.asarray(np.tile([0, 0, 0, 1, 1, 2], (batch, 1)), jnp.int32)  # shot of each caption token
    visual_ids = jnp.asarray(np.tile(np.arange(visual) * 2 // visual, (batch, 1)), jnp.int32)  # shots 0, 1
    rep_valid = np.ones((batch, text), bool)
    rep_valid[1, 5] = False  # batch 1: the shot-2 caption token sees nothing (no shot-2 frames either)
    sh_valid = np.ones((batch, visual), bool)
    sh_valid[0, 1] = False

    allowed = reference_mask("same", text_ids, np.concatenate([text_ids, visual_ids], 1),
                             np.concatenate([rep_valid, sh_valid], 1))
    want_out, (dq, dk, dv) = reference_attention(q, np.concatenate([k_rep, k_sh], 1), np.concatenate([v_rep, v_sh], 1),
                                                 allowed, cotangent)
    want_grads = (dq, dk[:, :text], dv[:, :text], dk[:, text:], dv[:, text:])
    args = (q, k_rep, v_rep, k_sh, v_sh)

    mesh = make_mesh({"sequence": sequence, "data": -1})
    args = args[:3] + tuple(place(mesh, x, P(None, "sequence")) for x in (k_sh, v_sh))

    def split(q, kr, vr, ks, vs):
        return sp.attention_to_sharded_keys(q, kr, vr, ks, vs, rule="same", q_ids=text_ids, k_rep_ids=text_ids,
                                            k_sh_ids=visual_ids, k_rep_valid=jnp.asarray(rep_valid),
                                            k_sh_valid=jnp.asarray(sh_valid))

    with jax.set_mesh(mesh):
        out, grads = forward_and_vjp(split, args, cotangent)
    chex.assert_trees_all_close(out, want_out, **TOL)
    chex.assert_trees_all_close(grads, want_grads, **TOL)
    np.testing.assert_array_equal(np.asarray(out[1, 5]), 0.0)
