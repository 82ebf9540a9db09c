"""Autoregressive video generation with a block-causal video DiT and its KV cache (AAPT).

Frames come one after another: frame f starts from noise, takes the sampler's K Euler steps
(K = 1 for a 1-NFE model) with the text, the cached earlier frames and (`model.recycle`) the
previous generated frame as input, and is committed to the cache. Which keys and values a frame
leaves in the cache (`commit`):
  'last'  those of its last sampler step (noisy input, t = sigmas[K-1]): AAPT's recurrence, no
          extra evaluation; with K = 1 the one evaluation that makes the frame fills the cache;
  'clean' those of one extra evaluation on the finished frame at t = 0 (K + 1 evaluations a frame).

    stream = Stream(model, geometry, sigmas)        # geometry: one frame's tokens (grid_hw, token_dim)
    state = stream.start(batch, max_frames=N)       # the caption's keys/values once, an empty cache
    frame, state = stream.next(state, rng)          # [B, P, C] tokens; jitted once, any frame index
    state = stream.prompt(state, other_batch)       # later frames follow another caption (same length)
    video = stream.generate(batch, rng, frames=N)   # [B, N, H, W, C]

`rollout(model, batch, geometry, sigmas, rng)` is the same recurrence over a whole clip in one
traceable call (a `lax.scan` over frames): how a block-causal model's sample hook and the
sampling tool generate, frame for frame the stream's frames.

`next` compiles once: every frame, past the training length too, has the same shapes (the cache
is a ring buffer; the frame index is data). The noise of frame f is drawn from fold_in(rng, f).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from flax import nnx

from seedjax.models import causal_video
from seedjax.models.geometry import Geometry

COMMITS = ("last", "clean")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class StreamState:
    """The recurrence's state: the KV cache and the previous frame's tokens [B, P, C] (zeros at first)."""

    cache: causal_video.KVCache
    previous: jax.Array


def frame_step(model, state: StreamState, noise, sigmas, *, grid_hw, commit: str = "last"):
    """One frame: K Euler steps over the decreasing `sigmas` [K + 1] from `noise` [B, P, C], then the
    commit. model: a `generator.DiffusionModel` (or anything with `.dit`). Returns (frame, state)."""
    if commit not in COMMITS:
        raise ValueError(f"commit must be one of {COMMITS}, got {commit!r}")
    sigmas = jnp.asarray(sigmas, jnp.float32)
    steps = sigmas.shape[0] - 1
    if steps < 1:
        raise ValueError(f"sigmas must hold at least 2 values (K >= 1 steps), got {sigmas.shape[0]}")
    run = functools.partial(causal_video.decode_frame, model.dit, grid_hw=grid_hw, recycled=state.previous)
    full = lambda s: jnp.full((noise.shape[0],), s, jnp.float32)

    def euler(i, x):
        return x + (sigmas[i + 1] - sigmas[i]) * run(state.cache, x, full(sigmas[i]), commit=False)[0]

    x = jax.lax.fori_loop(0, steps - 1, euler, noise)
    last = sigmas[steps - 1]
    velocity, cache = run(state.cache, x, full(last), commit=commit == "last")
    x = x + (sigmas[steps] - last) * velocity
    if commit == "clean":
        _, cache = run(state.cache, x, full(0.0), commit=True)
    return x, StreamState(cache, x.astype(state.previous.dtype))


def frame_geometry(geometry: Geometry) -> Geometry:
    """One latent frame of `geometry` (a block of the block-causal sequence)."""
    return Geometry.video(geometry.temporal_patch, geometry.height, geometry.width, geometry.channels,
                          geometry.patch, geometry.temporal_patch)


def caption_kwargs(model, batch: dict, grid_hw, guidance: float | None) -> dict:
    """The keyword arguments of `causal_video.init_cache` / `replace_text` for the batch's caption."""
    cond = model.condition(batch)
    if cond["shot_mask"].shape[1] != 1:
        raise ValueError("a block-causal stream follows one caption (shot) per video")
    n = cond["text_embeddings"].shape[0]
    return dict(text_embeddings=cond["text_embeddings"], pooled=cond["pooled"], grid_hw=grid_hw,
                text_mask=cond["shot_mask"][:, 0],
                guidance=None if guidance is None else jnp.full((n,), guidance, jnp.float32))


def clip_noise(geometry: Geometry, rng: jax.Array, n: int) -> jax.Array:
    """The noise `rollout` and `Stream` start each frame from, for a whole clip: [B, num_tokens,
    token_dim], frame f's from fold_in(rng, f)."""
    frame = frame_geometry(geometry)
    return jnp.concatenate([frame.noise(jax.random.fold_in(rng, f), n) for f in range(geometry.grid[0])], axis=1)


def rollout(model, batch: dict, geometry: Geometry, sigmas, rng: jax.Array, *, commit: str = "last",
            guidance: float | None = None, noise: jax.Array | None = None) -> jax.Array:
    """Every frame of `geometry` one after another (`Stream.next`'s frames, in one traceable call):
    tokens [B, num_tokens, token_dim] of the whole clip. The cache keeps every frame. `noise`
    [B, num_tokens, token_dim] replaces the noise drawn from `rng` (`clip_noise`)."""
    frame = frame_geometry(geometry)
    frames = geometry.grid[0]
    caption = caption_kwargs(model, batch, frame.grid_hw, guidance)
    n = caption["text_embeddings"].shape[0]
    cache = causal_video.init_cache(model.dit, max_frames=frames, **caption)
    state = StreamState(cache, jnp.zeros((n, *frame.token_shape), jnp.float32))
    if noise is None:
        noise = clip_noise(geometry, rng, n)
    per_frame = jnp.swapaxes(noise.reshape(n, frames, *frame.token_shape), 0, 1)  # [F, B, P, C]

    def one_frame(state, frame_noise):
        x, state = frame_step(model, state, frame_noise, sigmas, grid_hw=frame.grid_hw, commit=commit)
        return state, x

    _, xs = jax.lax.scan(one_frame, state, per_frame)  # [F, B, P, C]
    return jnp.swapaxes(xs, 0, 1).reshape(n, -1, frame.token_dim)


class Stream:
    """Frame-by-frame generation from one `generator.DiffusionModel` (see the module docstring).

    `geometry` describes one frame (its `grid_hw` and `token_dim`; its frame count is ignored);
    `sigmas` the per-frame sampler (e.g. `Sampler.make(K, shift).sigmas`); `guidance` the scale of
    a guidance-embedded model. The stream holds the model's parameters as they were at construction."""

    def __init__(self, model, geometry: Geometry, sigmas, *, commit: str = "last", guidance: float | None = None):
        if commit not in COMMITS:
            raise ValueError(f"commit must be one of {COMMITS}, got {commit!r}")
        causal_video.capacity(model.dit.cfg, 1)  # a causal model, or a one-line error
        self.geometry = frame_geometry(geometry)
        self.sigmas = tuple(float(s) for s in sigmas)
        self.commit = commit
        self.guidance = guidance
        self.graphdef, self.params = nnx.split(model)
        self._start = jax.jit(self._start_fn, static_argnames=("max_frames",))
        self._next = jax.jit(self._next_fn, donate_argnums=(1,))
        self._prompt = jax.jit(self._prompt_fn, donate_argnums=(1,))

    def _caption(self, model, batch) -> dict:
        return caption_kwargs(model, batch, self.geometry.grid_hw, self.guidance)

    def _start_fn(self, params, batch, *, max_frames):
        model = nnx.merge(self.graphdef, params)
        caption = self._caption(model, batch)
        cache = causal_video.init_cache(model.dit, max_frames=max_frames, **caption)
        n = caption["text_embeddings"].shape[0]
        return StreamState(cache, jnp.zeros((n, *self.geometry.token_shape), jnp.float32))

    def _prompt_fn(self, params, state, batch):
        model = nnx.merge(self.graphdef, params)
        return dataclasses.replace(state, cache=causal_video.replace_text(model.dit, state.cache,
                                                                          **self._caption(model, batch)))

    def _next_fn(self, params, state, rng):
        model = nnx.merge(self.graphdef, params)
        noise = self.geometry.noise(jax.random.fold_in(rng, state.cache.frame), state.previous.shape[0])
        return frame_step(model, state, noise, self.sigmas, grid_hw=self.geometry.grid_hw, commit=self.commit)

    def start(self, batch: dict, max_frames: int = 0) -> StreamState:
        """The state before the first frame (`max_frames`: the cache's length when every earlier frame
        is kept, model.causal_window = 0)."""
        return self._start(self.params, batch, max_frames=max_frames)

    def prompt(self, state: StreamState, batch: dict) -> StreamState:
        """The state with the batch's caption for the frames to come (AAPT's interactive control; the
        caption padded to the length of the first; `state` is donated)."""
        return self._prompt(self.params, state, batch)

    def next(self, state: StreamState, rng: jax.Array) -> tuple[jax.Array, StreamState]:
        """The next frame's tokens [B, P, C] and the state after it (`state` is donated)."""
        return self._next(self.params, state, rng)

    def generate(self, batch: dict, rng: jax.Array, frames: int) -> jax.Array:
        """`frames` frames one after another: [B, frames, H, W, C]."""
        state = self.start(batch, max_frames=frames)
        out = []
        for _ in range(frames):
            frame, state = self.next(state, rng)
            out.append(self.geometry.frames_of(frame))
        return jnp.concatenate(out, axis=1)
