"""PAROAttention: reorder visual tokens per head so attention becomes block-sparse.

Visual attention in a DiT is local along some axis (neighbouring frames, rows or
columns), which in the row-major token order looks like scattered diagonals. Reading the
tokens in another axis order per head — one of the 6 orders of (frame, height, width)
for video, 2 of (height, width) for images — gathers those patterns into dense blocks,
so that a block mask keeps most of the attention mass in few blocks (arXiv 2506.16054).

Sequence layout: `num_text` text tokens first, then the visual tokens row-major on
`grid`. Text tokens never move and are always attended and attending: every block that
contains a text row or column is active. A permutation `perm` maps new positions to old
(`x_new[p] = x[perm[p]]`).

Calibration, per (layer, timestep bucket, head), from attention maps captured on a few
prompts (`block_statistics` -> `Calibration`):
- block sparsity = fraction of visual blocks in which >= 90% of entries are < 1e-3
  (averaged over the captured maps);
- quantization incoherence = mean over visual blocks of max / mean of the block;
- score = (1 - w) * sparsity + w * (1 - log(incoherence) / log(block_q * block_k)), with
  w = `quant_weight` (default 0.25): both terms lie in [0, 1], higher is better, and the
  normalization maps incoherence 1 (flat block) to 1 and the worst possible (one entry
  holds the whole block) to 0. The order with the highest score wins.
- the block mask keeps, per head, the visual blocks with the largest attention mass until
  `density` of the visual blocks is reached (each query row keeps at least its heaviest
  block); blocks touching text are always kept on top of that.

Timestep buckets: `bucket_edges` are flow times in decreasing order (t = 1 is noise); a
step at time t uses bucket `sum(t < edges)`. Early, high-noise steps usually get their
own buckets and late steps share one.

A `ParoPlan` stores per (layer, bucket, head) the order id and the block mask, with a
version and the model shape it was made for, in a safetensors file.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from seedjax.kernels import block_sparse_xla
from seedjax.kernels.block_sparse_attention import block_sparse_attention, max_active_blocks_of

PLAN_VERSION = 1
IMAGE_ORDERS = ("hw", "wh")
VIDEO_ORDERS = tuple("".join(p) for p in itertools.permutations("fhw"))

# Block statistics, last axis of `block_statistics`.
MASS, SPARSE, INCOHERENCE = 0, 1, 2


# ----------------------------------------------------------------------------------------
# Layout and permutations
# ----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SequenceLayout:
    """`num_text` text tokens, then visual tokens row-major on `grid` ((h, w) or (f, h, w))."""

    num_text: int
    grid: tuple[int, ...]

    def __post_init__(self):
        if len(self.grid) not in (2, 3) or min(self.grid) < 1 or self.num_text < 0:
            raise ValueError(f"SequenceLayout: grid must be (h, w) or (f, h, w) of positive sizes and num_text >= 0, "
                             f"got grid={self.grid}, num_text={self.num_text}")

    @property
    def orders(self) -> tuple[str, ...]:
        return IMAGE_ORDERS if len(self.grid) == 2 else VIDEO_ORDERS

    @property
    def length(self) -> int:
        return self.num_text + math.prod(self.grid)


def visual_permutation(grid: tuple[int, ...], order: str) -> np.ndarray:
    """Permutation of the row-major visual tokens that reads them in axis `order`
    (outermost first), e.g. 'wh' = column by column."""
    natural = "hw" if len(grid) == 2 else "fhw"
    if sorted(order) != sorted(natural):
        raise ValueError(f"order {order!r} is not a permutation of {natural!r}")
    tokens = np.arange(math.prod(grid)).reshape(grid)
    return tokens.transpose([natural.index(axis) for axis in order]).reshape(-1)


def sequence_permutations(layout: SequenceLayout) -> np.ndarray:
    """int32 [num_orders, L]: for each order of `layout.orders`, the permutation of the
    whole sequence (text positions fixed)."""
    text = np.arange(layout.num_text)
    return np.stack([
        np.concatenate([text, layout.num_text + visual_permutation(layout.grid, order)])
        for order in layout.orders
    ]).astype(np.int32)


def inverse_permutation(perm: np.ndarray | jax.Array):
    """Inverse along the last axis."""
    if isinstance(perm, np.ndarray):
        return np.argsort(perm, axis=-1).astype(np.int32)
    return jnp.argsort(perm, axis=-1).astype(jnp.int32)


def permute_tokens(x: jax.Array, perm: jax.Array) -> jax.Array:
    """x [B, L, H, D], perm [B, H, L] (per sample and head) -> x_new[b, p, h] = x[b, perm[b, h, p], h]."""
    return jnp.take_along_axis(x, jnp.swapaxes(perm, 1, 2)[..., None], axis=1)


# ----------------------------------------------------------------------------------------
# Calibration statistics
# ----------------------------------------------------------------------------------------


def _blocks(x: jax.Array, block_q: int, block_k: int) -> jax.Array:
    """[..., Lq, Lk] zero-padded to whole blocks -> [..., nq, bq, nk, bk]."""
    *lead, lq, lk = x.shape
    nq, nk = -(-lq // block_q), -(-lk // block_k)
    x = jnp.pad(x, [(0, 0)] * len(lead) + [(0, nq * block_q - lq), (0, nk * block_k - lk)])
    return x.reshape(*lead, nq, block_q, nk, block_k)


def block_statistics(probs: jax.Array, layout: SequenceLayout, *, block_q: int = 64, block_k: int = 64,
                     threshold: float = 1e-3, sparse_fraction: float = 0.9) -> jax.Array:
    """Per-block statistics of attention maps under every candidate order.

    probs [H, L, L] (softmax rows of one sample). Returns float32
    [num_orders, H, nq, nk, 3] with, per block of the reordered map: MASS (sum of
    probabilities), SPARSE (1 if >= `sparse_fraction` of its entries are < `threshold`,
    else 0) and INCOHERENCE (max / mean; 1 for an all-zero block). Partial edge blocks
    count only their real entries.
    """
    heads, length, _ = probs.shape
    if length != layout.length:
        raise ValueError(f"block_statistics: maps have {length} tokens but the layout has {layout.length}")
    probs = probs.astype(jnp.float32)
    real = _blocks(jnp.ones((length, length), jnp.float32), block_q, block_k)
    count = jnp.sum(real, axis=(-3, -1))

    def one_order(perm):
        blocks = _blocks(probs[:, perm][:, :, perm], block_q, block_k)
        mass = jnp.sum(blocks, axis=(-3, -1))
        small = jnp.sum(jnp.where(real > 0, blocks < threshold, False), axis=(-3, -1))
        sparse = (small >= sparse_fraction * count).astype(jnp.float32)
        mean = mass / count
        incoherence = jnp.where(mean > 0, jnp.max(blocks, axis=(-3, -1)) / jnp.where(mean > 0, mean, 1.0), 1.0)
        return jnp.stack([mass, sparse, incoherence], axis=-1)

    return jax.lax.map(one_order, jnp.asarray(sequence_permutations(layout)))


def bucket_index(edges, t) -> jax.Array:
    """Bucket of flow time(s) t for decreasing `edges`: sum(t < edges)."""
    edges = jnp.asarray(edges, jnp.float32).reshape(-1)
    return jnp.sum(jnp.asarray(t, jnp.float32)[..., None] < edges, axis=-1).astype(jnp.int32)


def text_blocks(layout: SequenceLayout, block_q: int, block_k: int) -> np.ndarray:
    """bool [nq, nk]: blocks holding a text row or a text column (always computed)."""
    nq, nk = -(-layout.length // block_q), -(-layout.length // block_k)
    rows = np.arange(nq) * block_q < layout.num_text
    cols = np.arange(nk) * block_k < layout.num_text
    return rows[:, None] | cols[None, :]


def order_scores(stats: np.ndarray, visual: np.ndarray, block_q: int, block_k: int,
                 quant_weight: float = 0.25) -> dict[str, np.ndarray]:
    """stats [num_orders, H, nq, nk, 3] averaged over maps; visual bool [nq, nk] (blocks
    without text). Returns 'sparsity', 'incoherence', 'score', each [num_orders, H]."""
    sparsity = stats[..., visual, SPARSE].mean(-1)
    incoherence = stats[..., visual, INCOHERENCE].mean(-1)
    flatness = 1.0 - np.log(np.maximum(incoherence, 1.0)) / np.log(block_q * block_k)
    return {"sparsity": sparsity, "incoherence": incoherence,
            "score": (1.0 - quant_weight) * sparsity + quant_weight * flatness}


def select_mask(mass: np.ndarray, forced: np.ndarray, density: float) -> np.ndarray:
    """Block mask [H, nq, nk]: `forced` blocks plus, per head, the heaviest non-forced
    blocks (by `mass` [H, nq, nk]) up to `density` of the non-forced ones; every query row
    keeps at least its heaviest non-forced block."""
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density must be in (0, 1], got {density}")
    free = ~forced
    budget = int(round(density * free.sum()))
    rows = np.flatnonzero(free.any(-1))
    masks = np.broadcast_to(forced, mass.shape).copy()
    for head_mass, mask in zip(mass, masks):
        keep = np.zeros_like(free)
        keep[rows, np.argmax(np.where(free, head_mass, -np.inf)[rows], axis=-1)] = True
        candidates = np.flatnonzero(free & ~keep)
        heaviest = candidates[np.argsort(-head_mass.reshape(-1)[candidates], kind="stable")]
        keep.reshape(-1)[heaviest[: max(0, budget - int(keep.sum()))]] = True
        mask |= keep
    return masks


# ----------------------------------------------------------------------------------------
# Plans
# ----------------------------------------------------------------------------------------


@dataclasses.dataclass
class ParoPlan:
    """Per (layer, bucket, head): the token order and the block mask.

    model_shape: {'num_layers', 'num_heads', 'num_text', 'grid', 'block_q', 'block_k'}.
    order_ids int [layers, buckets, heads] indexes `orders`; masks bool
    [layers, buckets, heads, nq, nk]; info: free-form calibration record (JSON-able).
    """

    model_shape: dict
    bucket_edges: tuple[float, ...]
    order_ids: np.ndarray
    masks: np.ndarray
    info: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        self.model_shape = {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.model_shape.items()}
        self.bucket_edges = tuple(float(e) for e in self.bucket_edges)
        self.order_ids = np.asarray(self.order_ids, np.int32)
        self.masks = np.asarray(self.masks, bool)
        s = self.model_shape
        nq = -(-self.layout.length // s["block_q"])
        nk = -(-self.layout.length // s["block_k"])
        expected = (s["num_layers"], len(self.bucket_edges) + 1, s["num_heads"])
        if self.order_ids.shape != expected or self.masks.shape != expected + (nq, nk):
            raise ValueError(f"ParoPlan: order_ids {self.order_ids.shape} / masks {self.masks.shape} do not match "
                             f"(layers, buckets, heads) = {expected} and (nq, nk) = {(nq, nk)}")
        if list(self.bucket_edges) != sorted(self.bucket_edges, reverse=True):
            raise ValueError(f"ParoPlan: bucket_edges must decrease (t = 1 is noise), got {self.bucket_edges}")

    @property
    def layout(self) -> SequenceLayout:
        return SequenceLayout(self.model_shape["num_text"], tuple(self.model_shape["grid"]))

    @property
    def orders(self) -> tuple[str, ...]:
        return self.layout.orders

    @property
    def sparse_layers(self) -> list[int]:
        """The layers this plan was calibrated on. A plan merged from per-layer calibrations
        (`info['layers']`) keeps the other layers dense in the natural order: those run another
        layout (another plan's) or do not attend through the backend, so they count for neither."""
        return list(self.info.get("layers", range(self.masks.shape[0])))

    def density(self, visual_only: bool = True) -> float:
        """Fraction of computed blocks (over visual blocks only, or over all blocks) of the
        calibrated layers."""
        masks = self.masks[self.sparse_layers]
        if not visual_only:
            return float(masks.mean())
        visual = ~text_blocks(self.layout, self.model_shape["block_q"], self.model_shape["block_k"])
        return float(masks[..., visual].mean())

    def check(self, *, num_heads: int, num_text: int, grid, num_layers: int | None = None, source: str = "") -> None:
        """Refuse a plan made for another model shape with a one-line message."""
        have = {"num_heads": num_heads, "num_text": num_text, "grid": list(grid)}
        if num_layers is not None:
            have["num_layers"] = num_layers
        diff = [f"{k} {self.model_shape[k]} (plan) vs {v} (model)" for k, v in have.items() if self.model_shape[k] != v]
        if diff:
            raise ValueError(f"PARO plan {source or '(in memory)'} was made for another model shape: {', '.join(diff)}")

    def bucket_of(self, t: jax.Array) -> jax.Array:
        return bucket_index(self.bucket_edges, t)

    def max_active_blocks(self, layer: int) -> int:
        """Widest query-block row of the layer (any bucket, head): the Pallas kernels' table width."""
        return max_active_blocks_of(self.masks[layer], axis=-1)

    def max_blocks_per_head(self, layer: int) -> int:
        """Most active blocks of one (bucket, head) of the layer: the XLA path's work per head."""
        return block_sparse_xla.max_blocks_per_head_of(self.masks[layer])

    def computed_fraction(self, layer: int | None = None) -> float:
        """Share of dense attention's block products the XLA fallback computes with this plan,
        for one layer or averaged over the calibrated layers. Each layer runs every head with the
        work of its densest (bucket, head), text blocks included; the Pallas kernels compute
        exactly the active blocks (`density(visual_only=False)`)."""
        layers = self.sparse_layers if layer is None else [layer]
        return float(np.mean([block_sparse_xla.computed_fraction(self.masks[i], self.max_blocks_per_head(i))
                              for i in layers]))

    def save(self, path: str) -> None:
        header = {"version": PLAN_VERSION, "model_shape": self.model_shape, "bucket_edges": list(self.bucket_edges),
                  "orders": list(self.orders), "num_kv_blocks": int(self.masks.shape[-1]), "info": self.info}
        save_file({"order_ids": self.order_ids, "masks_packed": np.packbits(self.masks, axis=-1)}, path,
                  metadata={"paro_plan": json.dumps(header)})

    @classmethod
    def load(cls, path: str) -> "ParoPlan":
        try:
            with safe_open(path, "np") as f:
                metadata = f.metadata() or {}
                tensors = {key: f.get_tensor(key) for key in f.keys()}
        except (OSError, SafetensorError) as e:
            raise ValueError(f"PARO plan {path}: cannot read it as safetensors ({e})") from None
        if "paro_plan" not in metadata:
            raise ValueError(f"PARO plan {path}: no 'paro_plan' header; not a plan file")
        header = json.loads(metadata["paro_plan"])
        if header.get("version") != PLAN_VERSION:
            raise ValueError(f"PARO plan {path}: version {header.get('version')}, this seedjax reads {PLAN_VERSION}")
        for key in ("order_ids", "masks_packed"):
            if key not in tensors:
                raise ValueError(f"PARO plan {path}: missing tensor {key!r}")
        masks = np.unpackbits(tensors["masks_packed"], axis=-1, count=header["num_kv_blocks"]).astype(bool)
        plan = cls(header["model_shape"], tuple(header["bucket_edges"]), tensors["order_ids"], masks, header["info"])
        if list(plan.orders) != header["orders"]:
            raise ValueError(f"PARO plan {path}: orders {header['orders']} differ from {list(plan.orders)}")
        return plan


class Calibration:
    """Accumulates `block_statistics` per (layer, bucket) and turns them into a plan."""

    def __init__(self, layout: SequenceLayout, num_layers: int, num_heads: int, bucket_edges, *,
                 block_q: int = 64, block_k: int = 64, threshold: float = 1e-3, sparse_fraction: float = 0.9):
        self.layout, self.num_layers, self.num_heads = layout, num_layers, num_heads
        self.bucket_edges = tuple(float(e) for e in bucket_edges)
        self.block_q, self.block_k = block_q, block_k
        self.threshold, self.sparse_fraction = threshold, sparse_fraction
        nq, nk = -(-layout.length // block_q), -(-layout.length // block_k)
        shape = (num_layers, len(self.bucket_edges) + 1, len(layout.orders), num_heads, nq, nk, 3)
        self.sums = np.zeros(shape, np.float64)
        self.counts = np.zeros(shape[:2], np.int64)

    def add(self, layer: int, bucket: int, stats) -> None:
        """Add the statistics of one attention map (`block_statistics` output)."""
        self.sums[layer, bucket] += np.asarray(stats, np.float64)
        self.counts[layer, bucket] += 1

    def add_batch(self, layer: int, buckets, stats) -> None:
        """Add `block_statistics` of a batch of maps: buckets [B], stats [B, ...]."""
        for bucket, one in zip(np.asarray(buckets), np.asarray(stats)):
            self.add(layer, int(bucket), one)

    def statistics(self, layer: int, bucket: int) -> np.ndarray:
        if self.counts[layer, bucket] == 0:
            raise ValueError(f"PARO calibration: no attention maps captured for layer {layer}, bucket {bucket} "
                             f"(bucket edges {self.bucket_edges}); sample with steps in every bucket")
        return self.sums[layer, bucket] / self.counts[layer, bucket]

    def plan(self, density: float, *, quant_weight: float = 0.25, reorder: bool = True) -> ParoPlan:
        """Choose orders (or keep the natural order with reorder=False) and block masks."""
        forced = text_blocks(self.layout, self.block_q, self.block_k)
        layers, buckets = self.counts.shape
        order_ids = np.zeros((layers, buckets, self.num_heads), np.int32)
        masks, chosen_scores = [], []
        for layer in range(layers):
            for bucket in range(buckets):
                stats = self.statistics(layer, bucket)
                scores = order_scores(stats, ~forced, self.block_q, self.block_k, quant_weight)
                if reorder:
                    order_ids[layer, bucket] = np.argmax(scores["score"], axis=0)
                picked = order_ids[layer, bucket]
                mass = stats[picked, np.arange(self.num_heads), ..., MASS]
                masks.append(select_mask(mass, forced, density))
                chosen_scores.append({k: v[picked, np.arange(self.num_heads)].round(4).tolist()
                                      for k, v in scores.items()})
        shape = {"num_layers": self.num_layers, "num_heads": self.num_heads, "num_text": self.layout.num_text,
                 "grid": list(self.layout.grid), "block_q": self.block_q, "block_k": self.block_k}
        info = {"density": density, "quant_weight": quant_weight, "reorder": reorder, "threshold": self.threshold,
                "sparse_fraction": self.sparse_fraction, "maps_per_bucket": self.counts.tolist(),
                "scores": chosen_scores}
        nq, nk = forced.shape
        return ParoPlan(shape, self.bucket_edges, order_ids,
                        np.stack(masks).reshape(layers, buckets, self.num_heads, nq, nk), info)


# ----------------------------------------------------------------------------------------
# Attention with a plan
# ----------------------------------------------------------------------------------------


def paro_attention(q, k, v, plan: ParoPlan, layer: int, timestep, *, key_mask=None, impl: str = "auto",
                   int8_qk: bool = False, int8_pv: bool = False, interpret: bool = False) -> jax.Array:
    """Block-sparse attention of layer `layer` under `plan` at flow time `timestep`.

    q, k, v [B, L, H, D] in the plan's layout; timestep scalar or [B] (each sample uses
    the order and mask of its own bucket). `key_mask` [B, L] (True = attend) may mask any
    token, text or visual (padded frames): it is reordered with the tokens, per head.
    Tokens are reordered per head, attended with the bucket's block mask and put back.
    """
    batch, length, heads, _ = q.shape
    if not 0 <= layer < plan.model_shape["num_layers"]:
        raise ValueError(f"PARO plan has layers 0..{plan.model_shape['num_layers'] - 1}, got layer {layer}")
    if length != plan.layout.length or heads != plan.model_shape["num_heads"]:
        raise ValueError(f"PARO plan expects {plan.layout.length} tokens and {plan.model_shape['num_heads']} heads, "
                         f"got q of shape {q.shape}")
    buckets = jnp.broadcast_to(plan.bucket_of(timestep), (batch,))
    order_ids = jnp.asarray(plan.order_ids[layer])[buckets]  # [B, H]
    perm = jnp.asarray(sequence_permutations(plan.layout))[order_ids]  # [B, H, L]
    inverse = jnp.asarray(inverse_permutation(sequence_permutations(plan.layout)))[order_ids]
    masks = jnp.asarray(plan.masks[layer])[buckets]  # [B, H, nq, nk]
    if key_mask is not None:  # [B, L] -> [B, H, L] in each head's token order
        key_mask = jnp.take_along_axis(jnp.asarray(key_mask, bool)[:, None, :], perm, axis=-1)
    out = block_sparse_attention(
        permute_tokens(q, perm), permute_tokens(k, perm), permute_tokens(v, perm), masks, key_mask=key_mask,
        block_q=plan.model_shape["block_q"], block_k=plan.model_shape["block_k"],
        max_active_blocks=plan.max_active_blocks(layer), max_blocks_per_head=plan.max_blocks_per_head(layer),
        impl=impl, int8_qk=int8_qk, int8_pv=int8_pv, interpret=interpret,
    )
    return permute_tokens(out, inverse)


# ----------------------------------------------------------------------------------------
# Attention backends ('paro' and 'paro_capture' in seedjax.models.attention)
# ----------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def load_plan(path: str) -> ParoPlan:
    """`ParoPlan.load`, cached: backends may be handed a path on every call."""
    return ParoPlan.load(path)


def _sequence_layout(layout, source: str) -> SequenceLayout:
    """The model's token layout (`seedjax.models.attention.TokenLayout`) as a SequenceLayout:
    a video model fills `grid` = (frames, height, width), an image model `grid_hw`."""
    grid = None if layout is None else (getattr(layout, "grid", None) or layout.grid_hw)
    if grid is None:
        raise ValueError(f"{source}: the model must pass a token layout with its grid "
                         f"(video: grid=(f, h, w); image: grid_hw=(h, w))")
    return SequenceLayout(layout.num_text, tuple(grid))


def paro_backend(q, k, v, *, key_mask=None, layer_index=None, layout=None, plan, timestep, impl: str = "auto",
                 int8_qk: bool = False, int8_pv: bool = False, interpret: bool = False):
    """The 'paro' attention backend: `plan` and `timestep` ([B] flow times) come in the model's
    attention kwargs. `plan` is a ParoPlan, a path, or several of either (a list, or paths
    joined by commas: a model whose attention layers have different layouts, e.g. the video
    DiT's full_3d spatial and temporal layers); the one whose layout is this call's is used,
    and it must match the model shape."""
    seq = _sequence_layout(layout, "paro attention")
    plans = plan.split(",") if isinstance(plan, str) else plan if isinstance(plan, (list, tuple)) else [plan]
    plans = [(p, load_plan(p)) if isinstance(p, str) else ("", p) for p in plans]
    source, plan = next(((s, p) for s, p in plans if p.layout == seq), plans[0])
    plan.check(num_heads=q.shape[2], num_text=seq.num_text, grid=seq.grid, source=source)
    if layer_index is None:
        raise ValueError("paro attention: the model must pass layer_index (plans are per layer)")
    return paro_attention(q, k, v, plan, layer_index, timestep, key_mask=key_mask, impl=impl, int8_qk=int8_qk,
                          int8_pv=int8_pv, interpret=interpret)


def capture_backend(q, k, v, *, key_mask=None, layer_index=None, layout=None, calibration: Calibration, timestep):
    """The 'paro_capture' backend: dense attention that also adds the block statistics of
    every sample's attention maps to `calibration` (through a host callback, so it works
    inside jit and scan)."""
    seq = _sequence_layout(layout, "paro calibration")
    if seq != calibration.layout or q.shape[2] != calibration.num_heads:
        raise ValueError(f"paro calibration: model layout {seq} with {q.shape[2]} heads does not match the "
                         f"calibration's {calibration.layout} with {calibration.num_heads} heads")
    logits = jnp.einsum("bqhd,bkhd->bhqk", q.astype(jnp.float32), k.astype(jnp.float32)) / math.sqrt(q.shape[-1])
    if key_mask is not None:
        logits = jnp.where(key_mask[:, None, None, :], logits, -jnp.inf)
    probs = jax.nn.softmax(logits, axis=-1)
    stats = jax.lax.map(lambda p: block_statistics(
        p, seq, block_q=calibration.block_q, block_k=calibration.block_k, threshold=calibration.threshold,
        sparse_fraction=calibration.sparse_fraction), probs)
    buckets = jnp.broadcast_to(bucket_index(calibration.bucket_edges, timestep), (q.shape[0],))
    jax.debug.callback(functools.partial(calibration.add_batch, layer_index), buckets, stats)
    return jnp.einsum("bhqk,bkhd->bqhd", probs, v.astype(jnp.float32)).astype(q.dtype)
