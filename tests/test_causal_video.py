"""The block-causal video DiT and its KV cache (seedjax/models/causal_video.py, seedjax/diffusion/autoregressive.py).

- frame-by-frame generation with the KV cache (ring buffer, recycled previous frame, K = 2 sampler
  steps a frame, both commits) equals recomputing the whole block-causal sequence at every step of
  every frame, past the cache's length and the training length, compiled once; on one device and
  on a data x sequence mesh of 8 fake devices (the whole-sequence call under sequence parallelism too);
- causality: a change to frame k changes no output before frame k, in both attention modes;
- the attention masks, read off the attention weights: the window keeps the text and the first frame,
  the causal text stream sees text only;
- teacher forcing's recycled input (the previous frame) and the one-line config errors.
Models are built abstractly with random numpy weights (tests/test_video_dit.py's `_random`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from seedjax.diffusion.autoregressive import Stream
from seedjax.models import generator, video_dit
from seedjax.models.geometry import Geometry
from seedjax.parallel import mesh as mesh_lib
from seedjax.parallel import sharding
from seedjax.schema.models import text_config, video_dit_config
from tests.test_video_dit import _random

FRAME = Geometry.video(1, 4, 8, 3, patch=2)  # one latent frame: 2 x 4 tokens of 12 channels
P, C = 8, 12
FRAMES = 6  # generated: twice the "training length" of 3, past the 3-slot ring buffer twice
WINDOW = 3  # a frame sees the 2 frames before it and frame 0
# Per mode: the sampler (K = 2 Euler steps a frame, K = 1) and which keys/values a frame leaves in
# the cache (its last step's, AAPT's; an extra pass on the finished frame at t = 0).
SIGMAS = {"decoupled": (1.0, 0.6, 0.0), "full_3d": (1.0, 0.0)}
COMMIT = {"decoupled": "last", "full_3d": "clean"}


def _config(mode: str) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.text = text_config()
    config.text.update(width=32, depth=1, num_heads=2, max_len=8)
    # depth 2 for full_3d reads every per-layer cache (text, spatial, temporal); 1 keeps the other fast
    config.model = video_dit_config("tiny", num_heads=4, head_dim=8, axes_dims_rope=(2, 2, 4), text_dim=32,
                                    pooled_dim=32, depth=2 if mode == "full_3d" else 1, in_channels=C,
                                    attention=mode, sequence_parallel="ulysses",
                                    causal=True, causal_window=WINDOW, recycle=True,
                                    temporal_spatial_window=(1, 2) if mode == "decoupled" else (1, 1))
    return config


@functools.cache
def _model(mode: str):
    return _random(lambda: generator.build(_config(mode), nnx.Rngs(0)), scale=0.1)


BATCH = {"tokens": jnp.asarray(np.random.default_rng(0).integers(3, 200, (2, 8)), jnp.int32),
         "text_mask": jnp.asarray(np.arange(8)[None] < np.array([[5], [8]]))}
KEY = jax.random.key(7)


@functools.cache
def _full(mode: str):
    """The whole block-causal sequence of FRAMES frames at per-frame times: velocity [B, FRAMES * P, C]."""
    model = _model(mode)

    @jax.jit
    def full(x, t, recycled):
        cond = model.condition(BATCH)
        return model.dit(x, t, cond["text_embeddings"], cond["pooled"], grid=(FRAMES, 2, 4),
                         text_mask=cond["shot_mask"][:, 0], recycled=recycled)

    return full


@functools.cache
def _recomputed(mode: str) -> np.ndarray:
    """Reference generation: every Euler step of every frame recomputes the whole sequence, the frames
    made so far entering at the input they were committed with, later frames random (ignored by
    causality). Returns the frames' tokens [B, FRAMES, P, C]."""
    full, rng = _full(mode), np.random.default_rng(1)
    xs, rec = rng.normal(size=(2, FRAMES, P, C)).astype(np.float32), rng.normal(size=(2, FRAMES, P, C)).astype(np.float32)
    ts = rng.uniform(size=(2, FRAMES)).astype(np.float32)
    previous, frames = np.zeros((2, P, C), np.float32), []
    for f in range(FRAMES):
        x = np.asarray(FRAME.noise(jax.random.fold_in(KEY, f), 2))
        rec[:, f] = previous
        sigmas = SIGMAS[mode]
        for i in range(len(sigmas) - 1):
            xs[:, f], ts[:, f] = x, sigmas[i]
            v = np.asarray(full(*(jnp.asarray(a.reshape(2, FRAMES * P, -1) if a.ndim == 4 else a) for a in (xs, ts, rec))))
            x = x + (sigmas[i + 1] - sigmas[i]) * v.reshape(2, FRAMES, P, C)[:, f]
        if COMMIT[mode] == "clean":  # the cache holds the finished frame at t = 0
            xs[:, f], ts[:, f] = x, 0.0
        previous = x  # 'last': xs, ts keep the last step's input
        frames.append(x)
    return np.stack(frames, 1)


@functools.cache
def _stream(mode: str) -> Stream:
    return Stream(_model(mode), FRAME, SIGMAS[mode], commit=COMMIT[mode])


def _stream_frames(mode: str):
    """(frames [B, FRAMES, P, C] generated with the KV cache, the final state, compiled programs of
    `Stream.next` after each frame)."""
    stream = _stream(mode)
    state, frames, programs = stream.start(BATCH), [], []
    for _ in range(FRAMES):
        frame, state = stream.next(state, KEY)
        frames.append(np.asarray(frame))
        programs.append(stream._next._cache_size())
    return np.stack(frames, 1), state, programs


@pytest.mark.parametrize("mode", ["decoupled", "full_3d"])
def test_kv_cached_generation_equals_full_recompute(mode):
    got, state, programs = _stream_frames(mode)
    np.testing.assert_allclose(got, _recomputed(mode), atol=1e-5, rtol=0)
    assert programs == programs[:1] * FRAMES  # six frames, past the training length: no new compilation
    # The ring buffer after frames 0..5: slot 0 keeps frame 0, slots 1, 2 the two latest (5, then 4).
    np.testing.assert_array_equal(state.cache.slot_frame, [0, 5, 4])
    assert int(state.cache.frame) == FRAMES and state.cache.temporal_k.shape[2] == WINDOW
    stream = _stream(mode)
    video = stream.generate(BATCH, KEY, FRAMES)  # the same recurrence through the convenience loop
    clip = Geometry.video(FRAMES, 4, 8, 3, patch=2)
    np.testing.assert_allclose(video, clip.frames_of(jnp.asarray(got.reshape(2, -1, C))), atol=1e-6)
    # Interactive control: a stream started on other captions and switched to BATCH's before its first
    # frame makes BATCH's first frame (and without the switch, another one).
    other = {key: value[::-1] for key, value in BATCH.items()}
    frame, _ = stream.next(stream.prompt(stream.start(other), BATCH), KEY)
    np.testing.assert_allclose(frame, got[:, 0], atol=1e-6)
    assert np.abs(np.asarray(stream.next(stream.start(other), KEY)[0]) - got[:, 0]).max() > 1e-3


@pytest.mark.parametrize("mode", ["decoupled", "full_3d"])
def test_a_frame_changes_no_earlier_output(mode):
    full, rng = _full(mode), np.random.default_rng(2)
    x, rec = (rng.normal(size=(2, FRAMES * P, C)).astype(np.float32) for _ in range(2))
    t = rng.uniform(size=(2, FRAMES)).astype(np.float32)
    base = np.asarray(full(x, t, rec)).reshape(2, FRAMES, P, C)
    k = 3
    x2, rec2, t2 = x.copy(), rec.copy(), t.copy()
    x2[:, k * P:(k + 1) * P] += 1.0
    rec2[:, k * P:(k + 1) * P] -= 1.0
    t2[:, k] = 0.9 - t2[:, k]
    changed = np.asarray(full(x2, t2, rec2)).reshape(2, FRAMES, P, C)
    np.testing.assert_array_equal(changed[:, :k], base[:, :k])
    for f in range(k, FRAMES):  # frame k itself and every later frame (all within the window of k) move
        assert np.abs(changed[:, f] - base[:, f]).max() > 1e-3, f


# --------------------------------------------------------------------------- the masks, read off attention weights

# Frame q (rows) sees [text, frame 0, ..., frame 4] (columns) with a window of 2: itself, the frame
# before it and frame 0; text only for text queries.
SEES = np.array([[1, 1, 0, 0, 0, 0],
                 [1, 1, 1, 0, 0, 0],
                 [1, 1, 1, 1, 0, 0],
                 [1, 1, 0, 1, 1, 0],
                 [1, 1, 0, 0, 1, 1]], bool)


def _indicator_values(frames, p, num_text, heads=1, d=8):
    """Values that are one-hot in the key's block (0: text, 1 + g: frame g), so an attention output's
    channel c is the weight the query gives block c."""
    block = np.r_[np.zeros(num_text, int), 1 + np.repeat(np.arange(frames), p)]
    v = np.zeros((1, len(block), heads, d), np.float32)
    v[0, np.arange(len(block)), :, block] = 1.0
    return jnp.asarray(v[:, :num_text]), jnp.asarray(v[:, num_text:])


def test_causal_window_keeps_text_and_first_frame():
    frames, (h, w), num_text = 5, (1, 2), 3
    p = h * w
    rng = np.random.default_rng(3)
    qv, kv, qt, kt = (jnp.asarray(rng.normal(size=(1, n, 1, 8)), jnp.float32)
                      for n in (frames * p, frames * p, num_text, num_text))
    vt, vv = _indicator_values(frames, p, num_text)
    masks = video_dit.Masks.make(jnp.ones((1, num_text), bool), jnp.zeros((1, num_text), jnp.int32),
                                 jnp.zeros((1, frames), jnp.int32), jnp.ones((1, frames), bool))
    weight = lambda out, lo=0: np.asarray(out)[0, :, 0, lo:1 + frames]  # [queries, blocks] (text first)
    per_frame = lambda a: a.reshape(frames, p, -1)[:, 0]  # one query token per frame (all agree)

    full = video_dit.AttentionOps("full_3d", (frames, h, w), 2, "dense", "ring", causal=True)
    out_v, out_t = jax.jit(full.spatial)(qv, kv, vv, qt, kt, vt, masks)
    np.testing.assert_array_equal(weight(out_v).reshape(frames, p, -1)[:, :] > 0, np.repeat(SEES[:, None], p, 1))
    np.testing.assert_array_equal(weight(out_t) > 0, np.eye(1, 1 + frames, dtype=bool).repeat(num_text, 0))
    np.testing.assert_array_equal(per_frame(weight(jax.jit(full.temporal)(qv, kv, vv, masks), 1)) > 0, SEES[:, 1:])

    decoupled = video_dit.AttentionOps("decoupled", (frames, h, w), 2, "dense", "ring", area=(1, 2), causal=True)
    out_v, out_t = jax.jit(decoupled.spatial)(qv, kv, vv, qt, kt, vt, masks)
    own_frame = np.c_[np.ones(frames, bool), np.eye(frames, dtype=bool)]  # spatial: text and its own frame
    np.testing.assert_array_equal(per_frame(weight(out_v)) > 0, own_frame)
    np.testing.assert_array_equal(weight(out_t) > 0, np.eye(1, 1 + frames, dtype=bool).repeat(num_text, 0))
    np.testing.assert_array_equal(per_frame(weight(jax.jit(decoupled.temporal)(qv, kv, vv, masks), 1)) > 0,
                                  SEES[:, 1:])


# --------------------------------------------------------------------------- sequence parallelism


def test_sequence_parallel_matches_one_device():
    """On a data=2 x sequence=4 mesh (8 fake devices; 6 frames do not divide it): full_3d's whole-sequence
    call (ulysses with the block-causal MaskSpec and its window) equals the one-device call, and the
    decoupled model's KV-cached generation (the cache sharded like the activations: a frame's positions
    over 'sequence') equals the recomputed reference. (One of each keeps the compile time down; the
    causal temporal all-to-all is tests/test_sequence_parallel.py's.)"""
    rng = np.random.default_rng(4)
    x, rec = (rng.normal(size=(2, FRAMES * P, C)).astype(np.float32) for _ in range(2))
    t = rng.uniform(size=(2, FRAMES)).astype(np.float32)
    want, want_frames = np.asarray(_full("full_3d")(x, t, rec)), _recomputed("decoupled")  # models built off the mesh
    _stream("decoupled")
    programs = _full("full_3d")._cache_size()
    mesh = mesh_lib.make_mesh(ml_collections.ConfigDict(dict(data=2, fsdp=1, tensor=1, sequence=4)))
    with jax.set_mesh(mesh), sharding.axis_rules(sharding.rules_from_config(ml_collections.ConfigDict())):
        got_full = np.asarray(_full("full_3d")(x, t, rec))
        assert _full("full_3d")._cache_size() == programs + 1  # retraced under the mesh: sequence-parallel
        got, state, _ = _stream_frames("decoupled")  # the cached stream, retraced under the mesh
        assert state.cache.temporal_k.sharding.spec[3] == "sequence"
    np.testing.assert_allclose(got_full, want, atol=1e-5, rtol=0)
    np.testing.assert_allclose(got, want_frames, atol=1e-5, rtol=0)


def test_recycled_tokens_and_bad_causal_configs():
    clip = jnp.arange(2 * 3 * 2 * 1, dtype=jnp.float32).reshape(2, 3 * 2, 1)  # 3 frames of 2 tokens
    want = np.concatenate([np.zeros((2, 1, 2, 1)), np.asarray(clip).reshape(2, 3, 2, 1)[:, :2]], 1).reshape(2, 6, 1)
    np.testing.assert_array_equal(video_dit.recycled_tokens(clip, 3), want)  # frame f gets frame f - 1, frame 0 zeros
    for overrides, message in ((dict(recycle=True), "needs model.causal"),
                               (dict(causal=True, temporal_window=2), "causal_window"),
                               (dict(causal=True, causal_window=-1), "causal_window must be >= 0"),
                               (dict(causal=True, attention_backend="paro"), "attention_backend 'dense'")):
        with pytest.raises(ValueError, match=message):
            video_dit.VideoDiT(video_dit_config("tiny", **overrides), nnx.Rngs(0))
    bidirectional = _random(lambda: video_dit.VideoDiT(video_dit_config(
        "tiny", num_heads=2, head_dim=8, axes_dims_rope=(2, 2, 4), text_dim=8, pooled_dim=8, depth=1,
        in_channels=C), nnx.Rngs(0)))
    with pytest.raises(ValueError, match="a time per frame"):  # per-frame times need the causal model
        bidirectional(jnp.zeros((1, 2 * P, C)), jnp.zeros((1, 2)), jnp.zeros((1, 3, 8)), jnp.zeros((1, 8)),
                      grid=(2, 2, 4))


def test_rollout_is_the_streams_frames_in_one_call():
    """`autoregressive.rollout` (a block-causal run's sample hook and evaluators) makes the frames
    `Stream.next` makes, frame for frame."""
    from seedjax.diffusion.autoregressive import rollout

    mode = "decoupled"
    got, _, _ = _stream_frames(mode)
    graphdef, params = nnx.split(_model(mode))
    clip = Geometry.video(FRAMES, 4, 8, 3, patch=2)
    tokens = jax.jit(lambda p: rollout(nnx.merge(graphdef, p), BATCH, clip, SIGMAS[mode], KEY,
                                       commit=COMMIT[mode]))(params)
    np.testing.assert_allclose(np.asarray(tokens).reshape(2, FRAMES, P, C), got, atol=1e-5)


def test_a_bidirectional_checkpoint_loads_into_a_recycling_model_unchanged():
    """AAPT's adaptation starts from the bidirectional parameters: the recycled channels' input
    weights are zero, so the recycling model ignores the recycled frame until it is trained."""
    settings = dict(num_heads=2, head_dim=8, axes_dims_rope=(2, 2, 4), text_dim=8, pooled_dim=8, depth=1,
                    in_channels=C, causal=True, causal_window=0)
    plain = _random(lambda: video_dit.VideoDiT(video_dit_config("tiny", **settings), nnx.Rngs(0)))
    recycling = nnx.eval_shape(lambda: video_dit.VideoDiT(video_dit_config("tiny", recycle=True, **settings),
                                                          nnx.Rngs(0)))
    saved = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(plain)))
    widened = video_dit.widen_for_recycling(saved, recycling.cfg)
    kernel = saved["x_embedder"]["kernel"]
    assert widened["x_embedder"]["kernel"].shape == (kernel.shape[0] + C, kernel.shape[1])
    nnx.replace_by_pure_dict(state := nnx.state(recycling), jax.tree.map(jnp.asarray, widened))
    recycling = nnx.merge(nnx.graphdef(recycling), state)
    rng = np.random.default_rng(3)
    x, recycled = (jnp.asarray(rng.normal(size=(1, 3 * P, C)), jnp.float32) for _ in range(2))
    args = (x, jnp.full((1, 3), 0.5), jnp.asarray(rng.normal(size=(1, 3, 8)), jnp.float32), jnp.zeros((1, 8)))
    np.testing.assert_allclose(recycling(*args, grid=(3, 2, 4), recycled=recycled), plain(*args, grid=(3, 2, 4)),
                               atol=1e-6)
    assert video_dit.widen_for_recycling(widened, recycling.cfg) is widened  # already wide: unchanged
