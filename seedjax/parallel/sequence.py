"""Sequence parallelism for attention on the 'sequence' mesh axis: Ulysses, ring, and the video DiT's layouts.

Layouts. Every function takes *global* arrays and runs its own `jax.shard_map` over the mesh made current
with `jax.set_mesh`. Tokens are split over 'sequence'; the batch axis over the mesh axes that the logical
rule 'batch' names (('data', 'fsdp') by default) and the heads axis over those of 'act_heads' ('tensor'), each
only where the axis divides the dimension (otherwise that dimension is replicated, which is still correct).
With no mesh, or a 'sequence' axis of size 1, every function is plain dense math. Scores and softmax are
float32 with scale 1/sqrt(D); a query whose every key is masked outputs 0 (never NaN), in every path.

Masks are ids plus a rule (`MaskSpec`), never an [L, L] array, so each device builds only the block it needs:
'all' (key validity only), 'block_causal' (k_id <= q_id: frame/block ids, text tokens id -1 so every query
sees them and text queries see only text; with `window` > 0 also q_id - k_id < window, except that keys of
id <= 0, the text and the first block, are always kept: `causal_allowed`), 'same' (k_id == q_id: shot ids),
'window' (text keys, id < 0, always; otherwise 0 <= q_id - k_id < window), 'same_or_text' (text keys, id < 0,
always; otherwise k_id == q_id: the video DiT's spatial windows, whose ids are windows). Key validity is ANDed
onto every rule.

Communication, with s = size of 'sequence' and per-device blocks of L/s tokens:
- `attention(impl='ulysses')`: all_to_all q, k, v from token-split [B, L/s, H, D] to head-split
  [B, L, H/s, D], dense attention over all L tokens, all_to_all back (ids: one all_gather). Needs the
  per-device head count divisible by s.
- `attention(impl='ring')`: each device keeps its L/s queries; K, V and the key ids/validity travel the ring
  in s-1 `ppermute` hops while an online softmax (running max, sum and output, float32) absorbs each block.
  Memory per device stays O(L/s); any head count.
- `temporal_attention`: [B, F, P, H, D] split over frames; one all_to_all to split over positions P instead
  (whole spatial windows per device), dense attention over the F frames of each window (or, `causal`, over
  the frames `causal_allowed` gives), one all_to_all back.
- `attention_to_sharded_keys`: short replicated queries (text) attend to replicated keys plus sequence-split
  keys (visual) without moving the visual keys: each device forms softmax statistics (output, max, sum,
  i.e. output and log-sum-exp) over its local keys (the replicated keys count on device 0 only); the parts
  are merged with one pmax and two psums.
Lengths that s does not divide are padded inside: padded keys are masked, padded query rows dropped.
Gradients are plain autodiff through shard_map / ppermute / all_to_all / psum (the running max is a
stop_gradient constant: the result does not depend on it).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from seedjax.parallel.sharding import logical_to_spec

SEQUENCE = "sequence"
MASK_RULES = ("all", "block_causal", "same", "window", "same_or_text")
IMPLS = ("dense", "ulysses", "ring")


@functools.partial(
    jax.tree_util.register_dataclass, data_fields=("key_valid", "q_ids", "k_ids"), meta_fields=("rule", "window")
)
@dataclasses.dataclass(frozen=True)
class MaskSpec:
    """An attention mask as a rule over ids: key_valid [B, Lk] bool, q_ids [B, Lq] / k_ids [B, Lk] int32.

    Ids are needed by every rule but 'all'; `window` (>= 1) by 'window', optional (0 = none) for
    'block_causal'. A pytree: the arrays are leaves, the rule and window are static.
    """

    rule: str = "all"
    key_valid: jax.Array | None = None
    q_ids: jax.Array | None = None
    k_ids: jax.Array | None = None
    window: int = 0

    def __post_init__(self):
        if self.rule not in MASK_RULES:
            raise ValueError(f"MaskSpec.rule must be one of {MASK_RULES}, got {self.rule!r}")
        if self.rule == "window" and int(self.window) < 1:
            raise ValueError(f"MaskSpec rule 'window' needs window >= 1, got {self.window}")
        if int(self.window) < 0:
            raise ValueError(f"MaskSpec window must be >= 0, got {self.window}")


def causal_allowed(q_ids, k_ids, window: int = 0):
    """The block-causal rule on broadcastable id arrays: a key block no later than the query's
    (k <= q) and, with `window` > 0, one of the `window` most recent blocks up to the query's own
    (q - k < window), except that ids <= 0 (text, -1, and the first block, 0) are always kept.
    Text queries (id -1) therefore see text only. The one definition of the video DiT's causal
    masks: whole sequences, temporal layers and the KV cache's slots."""
    allowed = k_ids <= q_ids
    if window:
        allowed = allowed & ((q_ids - k_ids < window) | (k_ids <= 0))
    return allowed


def _rule_mask(rule: str, window: int, q_ids, k_ids, key_valid) -> jax.Array | None:
    """[B, Lq, Lk] bool (or [B, 1, Lk] for validity alone; None when nothing is masked) from id blocks."""
    allowed = None
    if rule != "all":
        qi, ki = q_ids[:, :, None], k_ids[:, None, :]
        if rule == "block_causal":
            allowed = causal_allowed(qi, ki, window)
        elif rule == "same":
            allowed = ki == qi
        elif rule == "same_or_text":
            allowed = (ki == qi) | (ki < 0)
        else:  # window: text keys always, else the `window` most recent blocks up to the query's own
            allowed = (ki < 0) | ((qi - ki >= 0) & (qi - ki < window))
    if key_valid is not None:
        valid = key_valid.astype(bool)[:, None, :]
        allowed = valid if allowed is None else allowed & valid
    return allowed


def _check_mask(mask: MaskSpec | None, batch: int, lq: int, lk: int) -> None:
    if mask is None:
        return
    if mask.rule != "all" and (mask.q_ids is None or mask.k_ids is None):
        raise ValueError(f"MaskSpec rule {mask.rule!r} needs q_ids and k_ids")
    for name, shape in (("key_valid", (batch, lk)), ("q_ids", (batch, lq)), ("k_ids", (batch, lk))):
        value = getattr(mask, name)
        if value is not None and tuple(value.shape) != shape:
            raise ValueError(f"MaskSpec.{name} must have shape {shape}, got {tuple(value.shape)}")


def mask_of(mask: MaskSpec | None, q_slice: slice = slice(None), k_slice: slice = slice(None)) -> jax.Array | None:
    """The dense boolean block of `mask` for queries `q_slice` and keys `k_slice`: [B, Lq', Lk'], or
    [B, 1, Lk'] for rule 'all' (validity only); None when the spec masks nothing."""
    if mask is None:
        return None
    take = lambda x, sl: None if x is None else x[:, sl]
    return _rule_mask(mask.rule, mask.window, take(mask.q_ids, q_slice), take(mask.k_ids, k_slice),
                      take(mask.key_valid, k_slice))


# --------------------------------------------------------------------------- softmax statistics


def _partial_softmax(q, k, v, allowed):
    """Softmax statistics of queries q [b, lq, h, d] over one block of keys k, v [b, lk, h, d].

    Returns (o, m, l): o [b, lq, h, d] = sum_k exp(s - m) v (float32), m [b, lq, h] the row max of the
    allowed scores (-inf where none is allowed; a gradient constant), l [b, lq, h] = sum_k exp(s - m)."""
    scores = jnp.einsum("bqhd,bkhd->bqhk", q, k, preferred_element_type=jnp.float32) * (q.shape[-1] ** -0.5)
    if allowed is None:
        allowed = jnp.ones((1, 1, 1), bool)
    allowed = allowed[:, :, None, :]  # broadcast over heads
    m = jnp.max(jnp.where(allowed, jax.lax.stop_gradient(scores), -jnp.inf), axis=-1)
    m_safe = jnp.where(jnp.isfinite(m), m, 0.0)[..., None]
    # The inner where keeps masked scores finite so that neither exp nor its gradient sees inf.
    p = jnp.where(allowed, jnp.exp(jnp.where(allowed, scores, m_safe) - m_safe), 0.0)
    o = jnp.einsum("bqhk,bkhd->bqhd", p.astype(v.dtype), v, preferred_element_type=jnp.float32)
    return o, m, p.sum(-1)


def _merge(a, b):
    """Combine the statistics of two disjoint key blocks (the online-softmax step)."""
    (oa, ma, la), (ob, mb, lb) = a, b
    m = jnp.maximum(ma, mb)
    m_safe = jnp.where(jnp.isfinite(m), m, 0.0)
    wa, wb = jnp.exp(ma - m_safe), jnp.exp(mb - m_safe)  # exp(-inf) = 0 for an empty block
    return oa * wa[..., None] + ob * wb[..., None], m, la * wa + lb * wb


def _normalise(o, l, dtype):
    """o / l, with 0 for queries that saw no key (l == 0, where o is 0 too)."""
    return (o / jnp.where(l > 0, l, 1.0)[..., None]).astype(dtype)


def dense_attention(q, k, v, allowed=None):
    """Dense attention q [b, lq, h, d] over k, v [b, lk, h, d] with a boolean `allowed` [b | 1, lq | 1, lk]
    (None: every key); float32 scores and softmax, 0 for a query that sees no key."""
    o, _, l = _partial_softmax(q, k, v, allowed)
    return _normalise(o, l, q.dtype)


# --------------------------------------------------------------------------- mesh layout


def _current_mesh():
    mesh = jax.sharding.get_abstract_mesh()
    return None if mesh is None or mesh.empty else mesh


def sequence_size() -> int:
    """Size of the 'sequence' axis of the current mesh (1 with no mesh)."""
    mesh = _current_mesh()
    if mesh is None or SEQUENCE not in mesh.axis_names:
        return 1
    return int(mesh.shape[SEQUENCE])


def _split_axes(mesh, logical: str, dim: int, taken: tuple[str, ...] = ()) -> tuple[tuple[str, ...], int]:
    """Mesh axes the logical rules put on an activation dim of size `dim`, keeping those that divide it."""
    entry = logical_to_spec((logical,), mesh=mesh)[0]
    axes = entry if isinstance(entry, tuple) else (() if entry is None else (entry,))
    kept, size = [], 1
    for ax in axes:
        if ax != SEQUENCE and ax not in taken and dim % (size * mesh.shape[ax]) == 0:
            kept.append(ax)
            size *= mesh.shape[ax]
    return tuple(kept), size


def _layout(batch: int, heads: int):
    """(mesh, batch axes, heads axes, per-device head count) for arrays [B, ..., H, D]."""
    mesh = _current_mesh()
    batch_axes, _ = _split_axes(mesh, "batch", batch)
    head_axes, head_split = _split_axes(mesh, "act_heads", heads, taken=batch_axes)
    return mesh, (batch_axes or None), (head_axes or None), heads // head_split


def _pad(x, axis: int, multiple: int, value=0):
    extra = -x.shape[axis] % multiple
    if not extra:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, extra)
    return jnp.pad(x, widths, constant_values=value)


def _explicit(mesh) -> bool:
    return any(t == jax.sharding.AxisType.Explicit for t in mesh.axis_types)


def _run_split(body, mesh, in_specs, out_specs, args):
    """shard_map `body` over the mesh. On Explicit mesh axes the inputs are first resharded to `in_specs`
    (shard_map demands that there); on Auto axes (the training loop's mesh) GSPMD moves them as needed."""
    if _explicit(mesh):
        args = [jax.sharding.reshard(x, spec) for x, spec in zip(args, in_specs)]
    return jax.shard_map(body, mesh=mesh, in_specs=in_specs, out_specs=out_specs)(*args)


def _crop(x, mesh, spec, shape):
    """x without its padding, x[:shape[0], :shape[1], ...]. Explicit axes cannot slice a split dimension
    to a length they do not divide, so there the padded dimensions are gathered first."""
    if tuple(x.shape) == tuple(shape):
        return x
    if _explicit(mesh):
        x = jax.sharding.reshard(x, P(*(entry if n == m else None for entry, n, m in zip(spec, x.shape, shape))))
    return x[tuple(slice(0, n) for n in shape)]


def _all_to_all(x, split_axis: int, concat_axis: int):
    return jax.lax.all_to_all(x, SEQUENCE, split_axis, concat_axis, tiled=True)


def _gather(x):
    return jax.lax.all_gather(x, SEQUENCE, axis=1, tiled=True)


# --------------------------------------------------------------------------- self-attention


def attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: MaskSpec | None = None, *, impl: str) -> jax.Array:
    """Attention of q over k, v (global [B, L, H, D]) with `mask`, impl 'dense', 'ulysses' or 'ring'.

    'ulysses' and 'ring' treat q, k, v as one token-split sequence (self-attention: one shape for all
    three) and need the mesh set with `jax.set_mesh`; both are dense math when 'sequence' has size 1."""
    if impl not in IMPLS:
        raise ValueError(f"sequence-parallel attention impl must be one of {IMPLS}, got {impl!r}")
    if q.ndim != 4 or k.shape != v.shape or k.ndim != 4 or q.shape[:1] + q.shape[2:] != k.shape[:1] + k.shape[2:]:
        raise ValueError(f"attention expects q [B, Lq, H, D] and k, v [B, Lk, H, D]; got {q.shape}, {k.shape}, {v.shape}")
    batch, length, heads, _ = q.shape
    _check_mask(mask, batch, length, k.shape[1])
    size = sequence_size()
    if impl == "dense" or size == 1:
        return dense_attention(q, k, v, mask_of(mask))
    if q.shape != k.shape:
        raise ValueError(f"{impl} attention is self-attention over one sequence: q {q.shape} and k, v {k.shape} differ")
    mesh, batch_axes, head_axes, local_heads = _layout(batch, heads)
    if impl == "ulysses" and local_heads % size:
        raise ValueError(f"ulysses attention splits heads over the 'sequence' axis: {local_heads} heads per device "
                         f"(H={heads}) are not divisible by sequence={size}; use impl='ring'")
    mask = mask if mask is not None else MaskSpec()
    ids = lambda x: jnp.zeros((batch, length), jnp.int32) if x is None else x.astype(jnp.int32)
    key_valid = jnp.ones((batch, length), bool) if mask.key_valid is None else mask.key_valid.astype(bool)
    args = [_pad(x, 1, size) for x in (q, k, v, ids(mask.q_ids), ids(mask.k_ids))] + [_pad(key_valid, 1, size, False)]
    tokens, id_spec = P(batch_axes, SEQUENCE, head_axes, None), P(batch_axes, SEQUENCE)
    body = _ulysses_body if impl == "ulysses" else functools.partial(_ring_body, size=size)
    out = _run_split(functools.partial(body, rule=mask.rule, window=mask.window), mesh,
                     (tokens,) * 3 + (id_spec,) * 3, tokens, args)
    return _crop(out, mesh, tokens, q.shape)


def _ulysses_body(q, k, v, q_ids, k_ids, key_valid, *, rule, window):
    allowed = _rule_mask(rule, window, _gather(q_ids), _gather(k_ids), _gather(key_valid))
    heads_split = [_all_to_all(x, 2, 1) for x in (q, k, v)]  # [b, L, h/s, d]
    return _all_to_all(dense_attention(*heads_split, allowed), 1, 2)


def _ring_body(q, k, v, q_ids, k_ids, key_valid, *, rule, window, size):
    neighbour = [(i, (i + 1) % size) for i in range(size)]

    def absorb(stats, block):
        kb, vb, kid, valid = block
        return _merge(stats, _partial_softmax(q, kb, vb, _rule_mask(rule, window, q_ids, kid, valid)))

    def hop(_, carry):
        block, stats = carry
        block = tuple(jax.lax.ppermute(x, SEQUENCE, neighbour) for x in block)
        return block, absorb(stats, block)

    block = (k, v, k_ids, key_valid)
    stats = _partial_softmax(q, k, v, _rule_mask(rule, window, q_ids, k_ids, key_valid))
    _, (o, _, l) = jax.lax.fori_loop(1, size, hop, (block, stats))
    return _normalise(o, l, q.dtype)


# --------------------------------------------------------------------------- temporal attention


def _frame_window_mask(frames: int, window: int, frame_valid, causal: bool = False):
    """[B | 1, F, F] bool: same window of `window` consecutive frames (window 0: all), key frame valid;
    `causal`: the block-causal rule over frame indices instead (`causal_allowed`)."""
    allowed = None
    if causal:
        ids = jnp.arange(frames)
        allowed = causal_allowed(ids[:, None], ids[None, :], window)[None]
    elif window:
        block = jnp.arange(frames) // window
        allowed = (block[:, None] == block[None, :])[None]
    if frame_valid is not None:
        valid = frame_valid.astype(bool)[:, None, :]
        allowed = valid if allowed is None else allowed & valid
    return allowed


def _temporal_dense(q, k, v, frame_valid, window, group=1, causal=False):
    """Attention over frames within each window of `group` consecutive positions: [b, F, p, h, d] -> same."""
    b, frames, positions, h, d = q.shape
    g = positions // group
    per_window = lambda x: x.reshape(b, frames, g, group * h * d).swapaxes(1, 2).reshape(b * g, frames * group, h, d)
    allowed = _frame_window_mask(frames, window, frame_valid, causal)
    if allowed is not None:  # frame mask -> token mask, one per (batch, window) row of the flattened batch
        allowed = jnp.broadcast_to(allowed, (b, frames, frames))
        allowed = jnp.repeat(jnp.repeat(allowed, group, axis=1), group, axis=2)
        allowed = jnp.repeat(allowed, g, axis=0)
    out = dense_attention(per_window(q), per_window(k), per_window(v), allowed)
    return out.reshape(b, g, frames, group * h * d).swapaxes(1, 2).reshape(b, frames, positions, h, d)


def temporal_attention(q: jax.Array, k: jax.Array, v: jax.Array, frame_valid: jax.Array | None = None, *,
                       window: int = 0, group: int = 1, causal: bool = False) -> jax.Array:
    """Attention across frames within spatial windows; q, k, v global [B, F, P, H, D], frames split on 'sequence'.

    Every run of `group` consecutive positions is one spatial window (1: each position alone): its
    tokens in all frames attend to each other. `window` > 0: a frame attends only to frames in its
    own window of `window` consecutive frames ([0, w), [w, 2w), ...); `causal`: a frame attends to
    itself and earlier frames, with `window` > 0 the `window` most recent up to its own plus the
    first (`causal_allowed`). `frame_valid` [B, F] bool masks padded frames as keys."""
    if q.ndim != 5 or q.shape != k.shape or q.shape != v.shape:
        raise ValueError(f"temporal_attention expects q, k, v of one shape [B, F, P, H, D]; got {q.shape}, {k.shape}, {v.shape}")
    batch, frames, positions, heads, _ = q.shape
    if window < 0:
        raise ValueError(f"temporal_attention window must be >= 0 (0: all frames), got {window}")
    if group < 1 or positions % group:
        raise ValueError(f"temporal_attention group {group} must be >= 1 and divide the {positions} positions")
    if frame_valid is not None and tuple(frame_valid.shape) != (batch, frames):
        raise ValueError(f"frame_valid must have shape {(batch, frames)}, got {tuple(frame_valid.shape)}")
    size = sequence_size()
    if size == 1:
        return _temporal_dense(q, k, v, frame_valid, window, group, causal)
    mesh, batch_axes, head_axes, _ = _layout(batch, heads)
    valid = jnp.ones((batch, frames), bool) if frame_valid is None else frame_valid.astype(bool)
    # Padded frames go at the end (window ids of real frames unchanged) and are masked as keys;
    # padded positions form whole windows of their own (zeros), so every device holds whole windows.
    args = [_pad(_pad(x, 1, size), 2, size * group) for x in (q, k, v)] + [_pad(valid, 1, size, False)]
    video = P(batch_axes, SEQUENCE, None, head_axes, None)

    def body(q, k, v, valid):
        by_position = [_all_to_all(x, 2, 1) for x in (q, k, v)]  # [b, F, P/s, h, d]
        return _all_to_all(_temporal_dense(*by_position, _gather(valid), window, group, causal), 1, 2)

    out = _run_split(body, mesh, (video,) * 3 + (P(batch_axes, SEQUENCE),), video, args)
    return _crop(out, mesh, video, q.shape)


# --------------------------------------------------------------------------- replicated queries, split keys


def attention_to_sharded_keys(q: jax.Array, k_rep: jax.Array, v_rep: jax.Array, k_sh: jax.Array, v_sh: jax.Array, *,
                              rule: str = "same", window: int = 0, q_ids: jax.Array | None = None,
                              k_rep_ids: jax.Array | None = None, k_sh_ids: jax.Array | None = None,
                              k_rep_valid: jax.Array | None = None, k_sh_valid: jax.Array | None = None) -> jax.Array:
    """Replicated queries q [B, T, H, D] over keys [k_rep (replicated, [B, Tk, H, D]), k_sh ([B, N, H, D], split on
    'sequence')] with the mask `rule` over ids (q_ids [B, T] vs k_rep_ids [B, Tk] / k_sh_ids [B, N]) and
    validities. Equals dense attention over the concatenated keys; returns [B, T, H, D], replicated."""
    batch, queries, heads, _ = q.shape
    shapes = {"k_rep": (k_rep, (batch, None, heads, q.shape[3])), "v_rep": (v_rep, k_rep.shape),
              "k_sh": (k_sh, (batch, None, heads, q.shape[3])), "v_sh": (v_sh, k_sh.shape)}
    for name, (x, want) in shapes.items():
        if x.ndim != 4 or any(w is not None and w != s for s, w in zip(x.shape, want)):
            raise ValueError(f"attention_to_sharded_keys: {name} has shape {x.shape}, expected {want} (None: any)")
    n_rep, n_sh = k_rep.shape[1], k_sh.shape[1]
    ids = jnp.concatenate([k_rep_ids, k_sh_ids], 1) if k_rep_ids is not None and k_sh_ids is not None else None
    valid = None
    if k_rep_valid is not None or k_sh_valid is not None:
        fill = lambda x, n: jnp.ones((batch, n), bool) if x is None else x.astype(bool)
        valid = jnp.concatenate([fill(k_rep_valid, n_rep), fill(k_sh_valid, n_sh)], 1)
    mask = MaskSpec(rule, valid, q_ids, ids, window)  # validates the rule and the shapes below
    if rule != "all" and (k_rep_ids is None or k_sh_ids is None):
        raise ValueError(f"attention_to_sharded_keys rule {rule!r} needs q_ids, k_rep_ids and k_sh_ids")
    _check_mask(mask, batch, queries, n_rep + n_sh)
    size = sequence_size()
    if size == 1:
        return dense_attention(q, jnp.concatenate([k_rep, k_sh], 1), jnp.concatenate([v_rep, v_sh], 1), mask_of(mask))
    mesh, batch_axes, head_axes, _ = _layout(batch, heads)
    as_ids = lambda x, n: jnp.zeros((batch, n), jnp.int32) if x is None else x.astype(jnp.int32)
    valid = jnp.ones((batch, n_rep + n_sh), bool) if valid is None else valid
    args = (q, k_rep, v_rep, _pad(k_sh, 1, size), _pad(v_sh, 1, size), as_ids(q_ids, queries), as_ids(k_rep_ids, n_rep),
            _pad(as_ids(k_sh_ids, n_sh), 1, size), valid[:, :n_rep], _pad(valid[:, n_rep:], 1, size, False))
    rep, split = P(batch_axes, None, head_axes, None), P(batch_axes, SEQUENCE, head_axes, None)
    rep_ids, split_ids = P(batch_axes, None), P(batch_axes, SEQUENCE)

    def body(q, k_rep, v_rep, k_sh, v_sh, q_ids, k_rep_ids, k_sh_ids, rep_valid, sh_valid):
        local = _partial_softmax(q, k_sh, v_sh, _rule_mask(rule, window, q_ids, k_sh_ids, sh_valid))
        # The replicated keys are counted once: on the first device of the ring only.
        rep_valid = rep_valid & (jax.lax.axis_index(SEQUENCE) == 0)
        o, m, l = _merge(local, _partial_softmax(q, k_rep, v_rep, _rule_mask(rule, window, q_ids, k_rep_ids, rep_valid)))
        m_all = jax.lax.pmax(m, SEQUENCE)  # m carries no gradient, so pmax needs none
        scale = jnp.exp(m - jnp.where(jnp.isfinite(m_all), m_all, 0.0))
        o, l = jax.lax.psum(o * scale[..., None], SEQUENCE), jax.lax.psum(l * scale, SEQUENCE)
        return _normalise(o, l, q.dtype)

    return _run_split(body, mesh, (rep, rep, rep, split, split, rep_ids, rep_ids, split_ids, rep_ids, split_ids), rep,
                      args)
