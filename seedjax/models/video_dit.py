"""Video DiT in the Seedance 1.0 shape: decoupled spatial and temporal layers, multi-shot MM-RoPE.

    x [B, N = F*P, C] (+ conditioning frames and mask) --x_embedder--> vis --+
    text [B, S*Ts, D_text] (S shots of Ts tokens) ----context_embedder--> txt +
        --> `depth` blocks, each:
              spatial  (dual-stream weights, as the MMDiT): every frame attends jointly over
                       its own P visual tokens and the text of its own shot; the text stream's
                       update is the mean of its per-frame outputs over the frames of its shot
              temporal (visual only): every token attends across frames to the tokens of its
                       spatial window (`temporal_spatial_window` rows x columns of tokens; 1 x 1 =
                       its own position), optionally within windows of `temporal_window` frames
        --> visual tokens --> norm_out (adaLN) --> proj_out --> velocity [B, N, C_out]

`cfg.attention = 'full_3d'` is the baseline with the same weights: the spatial sublayer attends
jointly over all text and all visual tokens, the temporal one over all visual tokens.

`cfg.attention = 'window'` is SeedVR's restoration DiT: both sublayers attend within 3-D (t, h, w)
windows (`cfg.window`: counts per axis on the training grid, and the rule that sizes them at other
resolutions, SeedVR2's 'adaptive' by default), the spatial one also to the text, the temporal one
on windows shifted by half (`seedjax.models.adaptive_windows`). Restoration conditions through
'concat' below: the degraded clip on every frame (`seedjax.diffusion.tasks.restoration_task`). `cfg.residual` (with an x0 prediction)
adds the conditioning tokens to the predicted clean tokens: the network learns the correction to
the degraded clip, and starts out predicting the degraded clip itself.

Block-causal mode (`cfg.causal`, AAPT): a frame attends to the text, itself and earlier frames
(with `cfg.causal_window` = W > 0 the W most recent up to its own, plus always the first); the
text stream attends to text only and is conditioned at t = 0, so it depends on neither the
frames nor their noise levels and a KV cache computes it once (`seedjax.models.causal_video`).
`cfg.recycle` concatenates each frame's previous (clean) frame along channels.

Tasks are unified as Seedance does (`cfg.condition`):
- 'concat': clean conditioning frames (zeros where there are none) and a binary per-frame mask
  are concatenated with the noisy tokens along channels. Image-to-video conditions on frame 0,
  text-to-video has an all-zero mask, text-to-image is a one-frame video.
- 'timestep': per-frame timesteps, as Wan2.2's TI2V model: conditioning frames enter clean with
  t = 0 (their adaLN sees t = 0) and get velocity 0, so a sampler leaves them unchanged.

MM-RoPE (`multishot_position_ids`): 3D ids (t, h, w) for visual tokens and 1D ids (t, 0, 0) for
text, laid out as if each shot's caption were interleaved before its frames:
[text 1, frames of shot 1, text 2, frames of shot 2, ...] along the time axis.

Sequence parallelism: tokens are frame-major, so splitting the token axis on the `sequence`
mesh axis splits frames (`seedjax.parallel.sequence`). Who attends to whom in each sublayer, on
one device and under sequence parallelism: `seedjax.models.video_attention`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from seedjax.models import adaptive_windows, layers
from seedjax.models.attention import get_backend
from seedjax.models.mmdit import REMAT_POLICIES, TIMESTEP_CHANNELS, prediction, remat_policy
from seedjax.models.mmdit_blocks import TOKENS, StreamWeights, heads_qkv, stream_qkv, stream_update
from seedjax.models.rope import apply_rope, rope_frequencies
from seedjax.models.video_attention import AttentionOps, Masks, per_frame, window_tokens
from seedjax.parallel import sequence as sequence_lib
from seedjax.parallel.sharding import constrain

ATTENTION_MODES = ("decoupled", "full_3d", "window")
CONDITIONS = ("concat", "timestep")
SEQUENCE_PARALLEL = ("ulysses", "ring")


def validate_config(cfg) -> None:
    """Raise a one-line ValueError naming the first inconsistent video DiT setting."""
    if len(cfg.axes_dims_rope) != 3 or sum(cfg.axes_dims_rope) != cfg.head_dim or any(d % 2 for d in cfg.axes_dims_rope):
        raise ValueError(f"video DiT axes_dims_rope {tuple(cfg.axes_dims_rope)} must be 3 even sizes (t, h, w) summing "
                         f"to head_dim {cfg.head_dim}")
    if cfg.attention not in ATTENTION_MODES:
        raise ValueError(f"model.attention must be one of {ATTENTION_MODES}, got {cfg.attention!r}")
    if cfg.condition not in CONDITIONS:
        raise ValueError(f"model.condition must be one of {CONDITIONS}, got {cfg.condition!r}")
    if cfg.sequence_parallel not in SEQUENCE_PARALLEL:
        raise ValueError(f"model.sequence_parallel must be one of {SEQUENCE_PARALLEL}, got {cfg.sequence_parallel!r}")
    if cfg.temporal_window < 0:
        raise ValueError(f"model.temporal_window must be >= 0 (0 = all frames), got {cfg.temporal_window}")
    causal, window, recycle = causal_settings(cfg)
    if window < 0:
        raise ValueError(f"model.causal_window must be >= 0 (0 = all earlier frames), got {window}")
    if causal and cfg.temporal_window:
        raise ValueError("model.causal: the causal window over past frames is model.causal_window; "
                         f"leave model.temporal_window at 0 (got {cfg.temporal_window})")
    if causal and cfg.attention_backend != "dense":
        raise ValueError(f"model.causal needs attention_backend 'dense' (got {cfg.attention_backend!r})")
    if cfg.attention == "window":
        _validate_windows(cfg, causal)
    if cfg.get("residual", False) and (cfg.condition != "concat" or prediction(cfg)[0] != "x0"):
        raise ValueError("model.residual (the clean clip predicted as the conditioning clip plus a correction) needs "
                         "model.prediction='x0' and model.condition='concat'")
    if recycle and not causal:
        raise ValueError("model.recycle (the previous frame as input) needs model.causal = True")
    area = temporal_spatial_window(cfg)
    if len(area) != 2 or min(area) < 0:
        raise ValueError(f"model.temporal_spatial_window must be (rows, cols) >= 0 (0 = the whole frame), got {area}")
    if cfg.remat_policy not in REMAT_POLICIES:
        raise ValueError(f"model.remat_policy {cfg.remat_policy!r} is not one of {sorted(REMAT_POLICIES)}")
    for key, why in (("scan_layers", "scanned layers"), ("size_embed", "a size embedding"),
                     ("repa_layer", "REPA features"), ("meta_embed", "meta-info embedding")):
        if cfg.get(key, False) not in (False, -1):
            raise ValueError(f"model.{key}: the video DiT has no {why} yet; leave it at its default")
    layers.compute_dtype(cfg.dtype)
    target, _ = prediction(cfg)
    if target not in ("velocity", "x0"):
        raise ValueError(f"video DiT prediction {target!r} must be 'velocity' or 'x0'")
    for key in ("in_channels", "num_heads", "head_dim", "text_dim", "pooled_dim", "depth"):
        if cfg[key] <= 0:
            raise ValueError(f"video DiT config {key} must be positive, got {cfg[key]}")


def _validate_windows(cfg, causal: bool) -> None:
    w = cfg.window
    if causal or cfg.temporal_window or cfg.attention_backend != "dense":
        raise ValueError("model.attention='window' is bidirectional and picks its kernels with model.window.backend: "
                         "leave model.causal off, model.temporal_window 0 and model.attention_backend 'dense'")
    if len(w.counts) != 3 or min(w.counts) < 1 or len(w.reference) != 2 or min(w.reference) < 1:
        raise ValueError(f"model.window: counts must be 3 ints >= 1 (t, h, w) and reference the training (h, w) token "
                         f"grid, 2 ints >= 1; got counts={tuple(w.counts)}, reference={tuple(w.reference)}")
    if w.rule not in adaptive_windows.RULES or w.backend not in adaptive_windows.BACKENDS or w.block < 1:
        raise ValueError(f"model.window: rule must be one of {adaptive_windows.RULES}, backend one of "
                         f"{adaptive_windows.BACKENDS}, block >= 1; got {w.rule!r}, {w.backend!r}, {w.block}")


def grid_window(cfg, grid: tuple[int, int, int]) -> tuple[int, int, int]:
    """Mode 'window': the (t, h, w) window of the token grid `grid` (model.window's rule)."""
    w = cfg.window
    return adaptive_windows.model_window(grid, w.counts, w.reference, w.rule, w.max_frames or None)


def multishot_position_ids(frame_shot: jax.Array, grid: tuple[int, int, int], shot_len: int,
                           num_shots: int) -> tuple[jax.Array, jax.Array]:
    """MM-RoPE ids for S shots of `shot_len` text tokens and a (F, h, w) token grid.

    frame_shot [B, F] int: the shot of every token frame (shots are contiguous, in order).
    Along the time axis the sequence reads [text 1, frames of shot 1, text 2, ...]:
      text token j of shot s:        (s * shot_len + start_s + j, 0, 0)
      frame f of shot s, row h, col w: ((s + 1) * shot_len + f, h, w)
    where start_s is the first frame of shot s (the number of frames in earlier shots).
    Returns (txt_ids [B, S*shot_len, 3], vis_ids [B, F*h*w, 3]) float32.
    """
    frames, h, w = grid
    frame_shot = jnp.asarray(frame_shot, jnp.int32)
    batch = frame_shot.shape[0]
    shots = jnp.arange(num_shots)
    start = jnp.sum(frame_shot[:, None, :] < shots[None, :, None], axis=-1)  # [B, S]
    txt_t = shots[None, :, None] * shot_len + start[:, :, None] + jnp.arange(shot_len)[None, None, :]
    txt = jnp.stack([txt_t.reshape(batch, -1), *(jnp.zeros((batch, num_shots * shot_len), jnp.int32),) * 2], -1)
    frame_t = (frame_shot + 1) * shot_len + jnp.arange(frames)[None]  # [B, F]
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    vis_t = jnp.broadcast_to(frame_t[:, :, None], (batch, frames, h * w))
    vis_hw = jnp.broadcast_to(jnp.asarray(np.stack([rows, cols], -1).reshape(1, 1, h * w, 2)), (batch, frames, h * w, 2))
    vis = jnp.concatenate([vis_t[..., None], vis_hw], axis=-1).reshape(batch, frames * h * w, 3)
    return txt.astype(jnp.float32), vis.astype(jnp.float32)


def train_flops_per_example(cfg, grid: tuple[int, int, int], num_text: int) -> float:
    """Analytic training FLOPs of one example (3 x forward, 2 FLOPs per multiply-add): every
    matmul including attention scores and values; norms and activations ignored."""
    d = cfg.num_heads * cfg.head_dim
    m = int(d * cfg.mlp_ratio)
    frames, h, w = grid
    p = h * w
    n = frames * p
    in_ch = input_channels(cfg)
    out = cfg.out_channels or cfg.in_channels
    # Conditioning: the time embedding per frame and once for the text stream, pooled text, guidance.
    embed = TIMESTEP_CHANNELS * d + d * d
    per_example = (frames + 1 + int(cfg.guidance_embed)) * embed + (cfg.pooled_dim + d) * d
    # adaLN: the visual streams (spatial, temporal, output) per frame, the text stream once.
    per_example += cfg.depth * (2 * frames + 1) * 6 * d * d + 2 * d * d * frames
    tokens = n * (in_ch * d + d * out) + num_text * cfg.text_dim * d
    # Projections and MLPs: visual tokens in both sublayers, text tokens once per block.
    tokens += cfg.depth * (2 * n + num_text) * (4 * d * d + 2 * d * m)
    if cfg.attention == "window":
        tokens_per_window = int(np.prod(grid_window(cfg, grid)))
        spatial = num_text * num_text + n * (num_text + tokens_per_window)
        temporal = n * tokens_per_window
    elif cfg.attention == "decoupled":
        spatial = frames * (num_text + p) ** 2
        window = cfg.temporal_window or frames
        rows, cols = window_tokens(temporal_spatial_window(cfg), grid)
        temporal = n * min(window, frames) * rows * cols
    else:
        spatial = (num_text + n) ** 2
        temporal = n * n
    attention_macs = cfg.depth * 2 * (spatial + temporal) * d
    return 3.0 * 2.0 * float(per_example + tokens + attention_macs)


def causal_settings(cfg) -> tuple[bool, int, bool]:
    """(causal, causal_window, recycle); configs saved before the keys existed are bidirectional."""
    return bool(cfg.get("causal", False)), int(cfg.get("causal_window", 0)), bool(cfg.get("recycle", False))


def temporal_spatial_window(cfg) -> tuple[int, ...]:
    """(rows, cols) of the temporal layers' spatial windows; configs saved before the key existed get (1, 1)."""
    return tuple(int(x) for x in cfg.get("temporal_spatial_window", (1, 1)))


def input_channels(cfg) -> int:
    """Width of an input token: noisy tokens, plus clean conditioning tokens and a mask channel with
    'concat', plus the previous frame's tokens with `recycle`."""
    width = 2 * cfg.in_channels + 1 if cfg.condition == "concat" else cfg.in_channels
    return width + cfg.in_channels * causal_settings(cfg)[2]


def _modulate_frames(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
    """x [B, F*P, D] modulated by per-frame (shift, scale) [B, F, D]."""
    frames = shift.shape[1]
    y = per_frame(x, frames) * (1 + scale[:, :, None]) + shift[:, :, None]
    return y.reshape(x.shape)


def _gate_frames(gate: jax.Array, y: jax.Array) -> jax.Array:
    return (per_frame(y, gate.shape[1]) * gate[:, :, None]).reshape(y.shape)


def visual_qkv(w: StreamWeights, vis, mod, rope):
    """Visual tokens [B, F*P, D] -> q, k, v [B, F*P, H, Dh] (RoPE on q, k) under per-frame adaLN `mod`."""
    q, k, v = heads_qkv(w, _modulate_frames(w.norm(vis), mod[0], mod[1]))
    return apply_rope(q, *rope), apply_rope(k, *rope), v


def visual_update(w: StreamWeights, vis, attn, mod):
    """The gated residual attention output and MLP of the visual stream."""
    _, _, gate, shift, scale, gate_mlp = mod
    vis = vis + _gate_frames(gate, w.out(attn.reshape(*vis.shape[:2], -1)))
    vis = vis + _gate_frames(gate_mlp, w.mlp(_modulate_frames(w.norm(vis), shift, scale)))
    return constrain(vis, TOKENS)


def text_qkv(w: StreamWeights, txt, mod, rope):
    q, k, v = stream_qkv(w, txt, mod)
    return apply_rope(q, *rope), apply_rope(k, *rope), v


text_update = stream_update  # the text stream updates as the MMDiT's streams do


class VideoBlock(nnx.Module):
    """One spatial (dual-stream, per frame) + one temporal (visual only) sublayer."""

    def __init__(self, hidden: int, head_dim: int, mlp_hidden: int, *, rngs: nnx.Rngs, dtype):
        self.img = StreamWeights(hidden, head_dim, mlp_hidden, rngs=rngs, dtype=dtype)
        self.txt = StreamWeights(hidden, head_dim, mlp_hidden, rngs=rngs, dtype=dtype)
        self.temporal = StreamWeights(hidden, head_dim, mlp_hidden, rngs=rngs, dtype=dtype)

    def __call__(self, vis, txt, cond_frames, cond_txt, rope_vis, rope_txt, masks: Masks, *, ops: "AttentionOps"):
        vis, txt = self.spatial(vis, txt, cond_frames, cond_txt, rope_vis, rope_txt, masks, ops=ops)
        return self.temporal_layer(vis, cond_frames, rope_vis, masks, ops=ops), txt

    def spatial(self, vis, txt, cond_frames, cond_txt, rope_vis, rope_txt, masks: Masks, *, ops: "AttentionOps"):
        """Dual-stream weights (the MMDiT's), attention within each frame (full_3d: over everything)."""
        v_mod, t_mod = self.img.modulation(cond_frames), self.txt.modulation(cond_txt)
        qv, kv, vv = visual_qkv(self.img, vis, v_mod, rope_vis)
        qt, kt, vt = text_qkv(self.txt, txt, t_mod, rope_txt)
        vis_attn, txt_attn = ops.spatial(qv, kv, vv, qt, kt, vt, masks)
        return visual_update(self.img, vis, vis_attn, v_mod), text_update(self.txt, txt, txt_attn, t_mod)

    def temporal_layer(self, vis, cond_frames, rope_vis, masks: Masks, *, ops: "AttentionOps"):
        """Visual tokens across frames at each position (full_3d: over all visual tokens)."""
        mod = self.temporal.modulation(cond_frames)
        q, k, v = visual_qkv(self.temporal, vis, mod, rope_vis)
        return visual_update(self.temporal, vis, ops.temporal(q, k, v, masks), mod)


class VideoDiT(nnx.Module):
    """Seedance-style video DiT. See the module docstring and `__call__`."""

    def __init__(self, cfg: ml_collections.ConfigDict, rngs: nnx.Rngs):
        validate_config(cfg)
        self.cfg = cfg = ml_collections.FrozenConfigDict(cfg)
        dtype = layers.compute_dtype(cfg.dtype)
        hidden = cfg.num_heads * cfg.head_dim
        mlp_hidden = int(hidden * cfg.mlp_ratio)
        self.out_channels = cfg.out_channels or cfg.in_channels

        def embedder(in_features):
            return layers.MLP(in_features, hidden, hidden, rngs=rngs, activation_name="silu",
                              names=("in_features", "embed", "embed"))

        self.x_embedder = layers.Linear(input_channels(cfg), hidden, rngs=rngs, names=("in_features", "embed"),
                                        dtype=dtype)
        self.context_embedder = layers.Linear(cfg.text_dim, hidden, rngs=rngs, names=("in_features", "embed"),
                                              dtype=dtype)
        self.time_embedder = embedder(TIMESTEP_CHANNELS)
        self.pooled_embedder = embedder(cfg.pooled_dim)
        self.guidance_embedder = embedder(TIMESTEP_CHANNELS) if cfg.guidance_embed else None
        self.blocks = nnx.List([VideoBlock(hidden, cfg.head_dim, mlp_hidden, rngs=rngs, dtype=dtype)
                                for _ in range(cfg.depth)])
        self.final_norm = layers.LayerNorm(hidden, rngs=rngs, eps=1e-6)
        self.final_modulation = layers.Modulation(hidden, hidden, 2, rngs=rngs)
        self.proj_out = layers.Linear(hidden, self.out_channels, rngs=rngs, names=("embed", "in_features"),
                                      dtype=dtype, kernel_init=layers.ZEROS)

    def __call__(self, x, t, text_embeddings, pooled, *, grid, num_shots=1, text_mask=None, frame_shot=None,
                 cond_tokens=None, cond_mask=None, guidance=None, recycled=None, attention_kwargs=None,
                 return_features=False, feature_blocks=()):
        """Predict the flow velocity of video tokens.

        Args:
          x: [B, N, in_channels] noisy tokens, frame-major (N = F*h*w for `grid` = (F, h, w)).
          t: [B] (or scalar) flow time of the noisy frames; a causal model also takes [B, F], a
            time per frame (a KV cache's frames were made at their own times).
          text_embeddings: [B, S*Ts, text_dim]: the captions of S = `num_shots` shots (static), Ts
            tokens each, one after another; pooled [B, pooled_dim].
          text_mask: [B, S*Ts] bool (padding and unused shots False). None = all valid.
          frame_shot: [B, F] int shot of every token frame (contiguous, in order). None = shot 0.
          cond_tokens: [B, N, in_channels] clean conditioning tokens (zeros elsewhere); cond_mask
            [B, F] 1.0 on conditioning frames. None = no conditioning (text-to-video / image).
          guidance: [B] guidance scale (guidance-embedded models only).
          recycled: [B, N, in_channels] (model.recycle) every frame's previous clean frame (frame 0:
            zeros; `recycled_tokens` shifts a clean video). None = zeros.
          return_features: also return the last block's visual tokens [B, N, hidden] (what AAPT's
            frame discriminator reads).
          feature_blocks: block indices (static) whose output visual tokens to return as a list
            (what a discriminator's feature-matching loss compares).

        Returns: velocity [B, N, out_channels] float32 (0 on conditioning frames with 'timestep'),
        with `return_features` (velocity, features), with `feature_blocks` (velocity, [features]).
        """
        cfg = self.cfg
        batch, num_tokens, channels = x.shape
        frames, h, w = grid
        if frames * h * w != num_tokens:
            raise ValueError(f"VideoDiT: grid {tuple(grid)} has {frames * h * w} tokens but x has {num_tokens}")
        if channels != cfg.in_channels:
            raise ValueError(f"VideoDiT: x has {channels} channels, config in_channels is {cfg.in_channels}")
        num_text = text_embeddings.shape[1]
        if num_text % num_shots:
            raise ValueError(f"VideoDiT: {num_text} text tokens do not split into {num_shots} equal shots")
        shot_len = num_text // num_shots
        text_shot = jnp.broadcast_to(jnp.repeat(jnp.arange(num_shots, dtype=jnp.int32), shot_len), (batch, num_text))
        text_mask = jnp.ones((batch, num_text), bool) if text_mask is None else text_mask.astype(bool)
        frame_shot = jnp.zeros((batch, frames), jnp.int32) if frame_shot is None else frame_shot.astype(jnp.int32)
        get_backend(cfg.attention_backend)
        if cfg.attention_backend != "dense" and sequence_lib.sequence_size() > 1:
            raise ValueError(f"VideoDiT: attention backend {cfg.attention_backend!r} does not run with sequence "
                             f"parallelism (mesh.sequence > 1); use 'dense' there")
        causal, window, _ = causal_settings(cfg)
        t = jnp.asarray(t, jnp.float32)
        if t.ndim == 2 and not causal:
            raise ValueError("VideoDiT: a time per frame ([B, F]) needs model.causal; pass t as [B]")
        t_frames = jnp.broadcast_to(t if t.ndim == 2 else t.reshape(-1, 1), (batch, frames))
        vis, t_frames, token_cond = self.embed_frames(x, t_frames, cond_tokens, cond_mask, recycled)
        # The causal text stream is conditioned at t = 0: it depends on no frame's noise level.
        text_t = jnp.zeros((batch,), jnp.float32) if causal else jnp.broadcast_to(t, (batch,))
        shared = self.shared_conditioning(pooled, guidance, batch)
        cond_txt, cond_frames = self.time_conditioning(text_t, shared), self.time_conditioning(t_frames, shared)

        txt_ids, vis_ids = multishot_position_ids(frame_shot, (frames, h, w), shot_len, num_shots)
        rope_txt = rope_frequencies(txt_ids, cfg.axes_dims_rope, cfg.rope_theta)
        rope_vis = rope_frequencies(vis_ids, cfg.axes_dims_rope, cfg.rope_theta)
        masks = Masks.make(text_mask, text_shot, frame_shot, jnp.ones((batch, frames), bool))
        ops = AttentionOps(cfg.attention, (frames, h, w), window if causal else cfg.temporal_window,
                           cfg.attention_backend, cfg.sequence_parallel, attention_kwargs or {},
                           area=temporal_spatial_window(cfg), causal=causal,
                           **(self.window_ops((frames, h, w)) if cfg.attention == "window" else {}))

        txt = self.context_embedder(text_embeddings).astype(jnp.float32)
        policy = remat_policy(cfg) if cfg.remat else None
        collected = []
        for i, block in enumerate(self.blocks):
            run = functools.partial(VideoBlock.__call__, ops=ops.at(i))
            run = nnx.remat(run, policy=policy) if policy is not None else run
            vis, txt = run(block, vis, txt, cond_frames, cond_txt, rope_vis, rope_txt, masks)
            if i in feature_blocks:
                collected.append(vis)
        skip = cond_tokens * token_cond if cfg.get("residual", False) else None
        velocity = self.head(vis, x, t_frames, cond_frames, token_cond, skip)
        if feature_blocks:
            return velocity, collected
        return (velocity, vis) if return_features else velocity

    def window_ops(self, grid) -> dict:
        w = self.cfg.window
        if w.backend != "dense" and sequence_lib.sequence_size() > 1:
            raise ValueError(f"VideoDiT: model.window.backend {w.backend!r} does not run with sequence parallelism "
                             f"(mesh.sequence > 1); use 'dense' there")
        return dict(windows=grid_window(self.cfg, grid), window_backend=w.backend, window_block=int(w.block))

    def embed_frames(self, x, t_frames, cond_tokens=None, cond_mask=None, recycled=None):
        """Input tokens x [B, F*P, C] at per-frame times [B, F] -> (embedded [B, F*P, D], per-frame
        times the model conditions on, per-token conditioning flag [B, F*P, 1])."""
        cfg = self.cfg
        batch, frames = t_frames.shape
        per_frame = x.shape[1] // frames
        cond_mask = jnp.zeros((batch, frames), jnp.float32) if cond_mask is None else cond_mask.astype(jnp.float32)
        cond_tokens = jnp.zeros_like(x) if cond_tokens is None else cond_tokens.astype(x.dtype)
        token_cond = jnp.repeat(cond_mask, per_frame, axis=1)[..., None]  # [B, N, 1]
        if cfg.condition == "timestep":
            t_frames = t_frames * (1.0 - cond_mask)
            x_in = jnp.where(token_cond > 0, cond_tokens, x)
        else:
            x_in = jnp.concatenate([x, cond_tokens * token_cond, token_cond.astype(x.dtype)], axis=-1)
        if causal_settings(cfg)[2]:
            x_in = jnp.concatenate([x_in, jnp.zeros_like(x) if recycled is None else recycled.astype(x.dtype)], -1)
        return constrain(self.x_embedder(x_in).astype(jnp.float32), TOKENS), t_frames, token_cond

    def head(self, vis, x, t_frames, cond_frames, token_cond, skip=None):
        """Visual tokens -> the velocity [B, N, out_channels] float32 (x0 models convert; `skip`,
        model.residual's conditioning tokens, is added to the x0 prediction first)."""
        scale, shift = self.final_modulation(cond_frames)
        out = self.proj_out(_modulate_frames(self.final_norm(vis), shift, scale)).astype(jnp.float32)
        target, x0_min_t = prediction(self.cfg)
        if skip is not None:
            out = out + skip.astype(jnp.float32)
        if target == "x0":
            t_tokens = jnp.repeat(t_frames, x.shape[1] // t_frames.shape[1], axis=1)[..., None]
            out = (x.astype(jnp.float32) - out) / jnp.maximum(t_tokens, x0_min_t)
        if self.cfg.condition == "timestep":
            out = jnp.where(token_cond > 0, 0.0, out)
        return out

    def shared_conditioning(self, pooled, guidance, batch: int):
        """[B, hidden]: the pooled caption (and guidance scale) embedding every stream adds."""
        shared = self.pooled_embedder(pooled.astype(jnp.float32))
        if self.cfg.guidance_embed:
            if guidance is None:
                raise ValueError("VideoDiT: cfg.guidance_embed is on, pass guidance=[B] guidance scales")
            guide = jnp.broadcast_to(jnp.asarray(guidance, jnp.float32), (batch,))
            shared = shared + self.guidance_embedder(layers.timestep_embedding(guide * 1000.0, TIMESTEP_CHANNELS))
        elif guidance is not None:
            raise ValueError("VideoDiT: guidance was given but cfg.guidance_embed is off")
        return shared

    def time_conditioning(self, t, shared):
        """Flow times t [B] (text stream) or [B, F] (per frame) -> conditioning [B, (F,) hidden]."""
        embedded = self.time_embedder(layers.timestep_embedding(t.reshape(-1) * 1000.0, TIMESTEP_CHANNELS))
        return embedded.reshape(*t.shape, -1) + shared.reshape(shared.shape[0], *([1] * (t.ndim - 1)), -1)


def widen_for_recycling(dit_params: dict, cfg) -> dict:
    """A video DiT's parameters saved without `recycle`, for the same DiT with it (AAPT's adaptation
    of a bidirectional model): the input embedder gets zero rows for the recycled frame's channels
    (appended last, `embed_frames`), so the model starts out ignoring them. Other trees pass
    unchanged (a wrong shape is then `load_params`'s error)."""
    kernel = dit_params.get("x_embedder", {}).get("kernel")
    if kernel is None or not causal_settings(cfg)[2] or np.shape(kernel)[0] != input_channels(cfg) - cfg.in_channels:
        return dit_params
    zeros = np.zeros((cfg.in_channels, np.shape(kernel)[1]), np.asarray(kernel).dtype)
    embedder = {**dit_params["x_embedder"], "kernel": np.concatenate([np.asarray(kernel), zeros], axis=0)}
    return {**dit_params, "x_embedder": embedder}


def recycled_tokens(x: jax.Array, frames: int) -> jax.Array:
    """AAPT's recycled input for teacher forcing: every frame's previous frame of the clean tokens
    x [B, F*P, C] (frame 0 gets zeros: no previous frame)."""
    clip = per_frame(x, frames)
    return jnp.concatenate([jnp.zeros_like(clip[:, :1]), clip[:, :-1]], axis=1).reshape(x.shape)
