"""MMDiT in the Seedream 3.0 / Flux shape.

    x [B, N, C] --x_embedder------> img --+-- dual-stream blocks: separate img / txt weights,
    text [B, T, D_text] --context--> txt -+   one joint attention over [txt, img]
        --> single-stream blocks on [txt, img]: one weight set, attention and MLP in parallel
        --> image tokens --> norm_out (adaLN) --> proj_out --> velocity [B, N, C_out]

Conditioning `cond` = MLP(sinusoid(1000 t)) + MLP(pooled text) [+ MLP(sinusoid(1000 g))
for guidance distillation] [+ zero-initialised MLP(sinusoid(target h, w)) size embedding]
drives adaLN-Zero modulation in every block. Attention uses QK RMSNorm and multi-axis RoPE
on the joint sequence [text, image]; by default the Seedream 3.0 cross-modality ids
(`rope.seedream_position_ids`): image tokens on their 2D grid, text on a [1, T] grid whose
columns continue after the image's.

Parameters map one to one onto diffusers' `FluxTransformer2DModel` (see
`seedjax/interop/flux.py`). Parameters are float32; `cfg.dtype` is the matmul compute
dtype; the residual stream, norms, softmax, RoPE and the conditioning path stay float32.
"""

from __future__ import annotations

import functools

import einops
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from seedjax.models import layers
from seedjax.models.attention import TokenLayout, attention, get_backend
from seedjax.models.geometry import REFERENCE_ROPE
from seedjax.models.mmdit_blocks import TOKENS, DoubleStreamBlock, SingleStreamBlock
from seedjax.models.rope import rope_frequencies, seedream_position_ids
from seedjax.parallel.sharding import constrain
from seedjax.schema.models import mmdit_config

TIMESTEP_CHANNELS = 256  # sinusoid width of every scalar embedder (Flux)
# Meta-info features (model.meta_embed; built by seedjax.models.generator.meta_info): present,
# task one-hot (t2i, edit, multi-reference), log aspect ratio, number of references.
META_FEATURES = 6
LAYER_AXIS = "layers"  # logical name of the leading axis of stacked (scanned) block parameters
BLOCK_STACKS = ("double_blocks", "single_blocks")  # the stacks `scan_layers` scans
# Named remat policies: any argument-free policy of jax.checkpoint_policies, plus 'full'.
REMAT_POLICIES = {
    "full": "nothing_saveable",  # save nothing: recompute the whole block in the backward pass
    **{name: name for name in ("nothing_saveable", "everything_saveable", "dots_saveable", "checkpoint_dots",
                               "dots_with_no_batch_dims_saveable", "checkpoint_dots_with_no_batch_dims")},
}
# Attention backends that index per-layer data with a Python int (PARO plans: per-layer masks
# of per-layer static sizes; calibration: a host callback per layer). Under `scan_layers` the
# layer index is a traced scan counter, which they cannot take.
STATIC_LAYER_INDEX_BACKENDS = ("paro", "paro_capture")
# How reference images (editing) meet the target: in one sequence ('joint', FLUX.1 Kontext), or
# encoded once on their own, keys and values cached (`seedjax.models.reference_cache`).
REFERENCE_ATTENTION = ("joint", "cached")

__all__ = [
    "MMDiT",
    "prediction",
    "patchify",
    "unpatchify",
    "seedream_position_ids",
    "train_flops_per_example",
    "is_scanned",
]


def prediction(cfg) -> tuple[str, float]:
    """(cfg.prediction, cfg.x0_min_t); configs saved before these keys existed get the defaults
    (a velocity), which is what they were trained to predict."""
    defaults = mmdit_config()
    return cfg.get("prediction", defaults.prediction), cfg.get("x0_min_t", defaults.x0_min_t)


def is_scanned(cfg) -> bool:
    """cfg.scan_layers; configs saved before the key existed are unrolled (what they were trained as)."""
    return bool(cfg.get("scan_layers", False))


def remat_policy(cfg):
    """The jax.checkpoint policy that `cfg.remat_policy` names."""
    return getattr(jax.checkpoint_policies, REMAT_POLICIES[cfg.remat_policy])


def validate_config(cfg: ml_collections.ConfigDict) -> None:
    """Raise a one-line ValueError naming the first inconsistent MMDiT setting."""
    if cfg.get("reference_rope", "per_reference") not in REFERENCE_ROPE:
        raise ValueError(f"reference_rope must be one of {', '.join(REFERENCE_ROPE)}, got {cfg.reference_rope!r}")
    if cfg.get("reference_attention", "joint") not in REFERENCE_ATTENTION:
        raise ValueError(f"reference_attention must be one of {', '.join(REFERENCE_ATTENTION)}, "
                         f"got {cfg.reference_attention!r}")
    if cfg.get("reference_attention", "joint") == "cached" and cfg.attention_backend != "dense":
        raise ValueError(f"reference_attention 'cached' needs attention_backend 'dense', not {cfg.attention_backend!r}")
    if sum(cfg.axes_dims_rope) != cfg.head_dim or any(d % 2 for d in cfg.axes_dims_rope):
        raise ValueError(f"axes_dims_rope {tuple(cfg.axes_dims_rope)} must be even and sum to head_dim {cfg.head_dim}")
    num_blocks = cfg.depth_double + cfg.depth_single
    if not -1 <= cfg.repa_layer < num_blocks:
        raise ValueError(f"repa_layer {cfg.repa_layer} must be -1 (off) or a block index below {num_blocks}")
    for key in ("remat", "scan_layers"):
        if not isinstance(cfg.get(key, False), (bool, np.bool_)):
            raise ValueError(f"model.{key} must be true or false, got {cfg.get(key)!r}")
    if cfg.remat_policy == "none":
        raise ValueError("model.remat_policy 'none' is not a policy: rematerialisation is switched on and off by "
                         "model.remat (false = off); model.remat_policy names what a rematerialised block saves")
    if cfg.remat_policy not in REMAT_POLICIES:
        raise ValueError(f"model.remat_policy {cfg.remat_policy!r} is not a named remat policy; choose one of "
                         f"{sorted(REMAT_POLICIES)}")
    if is_scanned(cfg) and cfg.attention_backend in STATIC_LAYER_INDEX_BACKENDS:
        raise ValueError(f"model.scan_layers=true cannot run attention backend {cfg.attention_backend!r}: it needs a "
                         f"static per-layer index, which a scanned layer stack does not have; set "
                         f"model.scan_layers=false (weights convert with seedjax.models.block_layout.match_block_layout)")
    layers.compute_dtype(cfg.dtype)
    target, x0_min_t = prediction(cfg)
    if target not in ("velocity", "x0"):
        raise ValueError(f"MMDiT config prediction {target!r} must be 'velocity' or 'x0'")
    if target == "x0" and cfg.out_channels not in (0, cfg.in_channels):
        raise ValueError(f"MMDiT config prediction 'x0' needs out_channels == in_channels, got {cfg.out_channels}")
    if not 0.0 < x0_min_t <= 1.0:
        raise ValueError(f"MMDiT config x0_min_t must be in (0, 1], got {x0_min_t}")
    for key in ("in_channels", "num_heads", "head_dim", "text_dim", "pooled_dim"):
        if cfg[key] <= 0:
            raise ValueError(f"MMDiT config {key} must be positive, got {cfg[key]}")


def patchify(images: jax.Array, p: int) -> jax.Array:
    """[B, H, W, C] -> [B, (H/p)*(W/p), C*p*p], row-major tokens, channels (c, ph, pw) as Flux packs."""
    _, h, w, _ = images.shape
    if h % p or w % p:
        raise ValueError(f"patchify: image height/width {h}x{w} (shape {images.shape}) not divisible by patch size {p}")
    return einops.rearrange(images, "b (h ph) (w pw) c -> b (h w) (c ph pw)", ph=p, pw=p)


def unpatchify(tokens: jax.Array, p: int, height: int, width: int, channels: int) -> jax.Array:
    """Inverse of `patchify`: [B, (H/p)*(W/p), C*p*p] -> [B, H, W, C]."""
    if height % p or width % p:
        raise ValueError(f"unpatchify: height/width {height}x{width} not divisible by patch size {p}")
    expected = ((height // p) * (width // p), channels * p * p)
    if tuple(tokens.shape[1:]) != expected:
        raise ValueError(f"unpatchify: tokens of shape {tokens.shape} do not make a {height}x{width}x{channels} image "
                         f"with patch size {p} (expected [B, {expected[0]}, {expected[1]}])")
    return einops.rearrange(tokens, "b (h w) (c ph pw) -> b (h ph) (w pw) c", h=height // p, ph=p, pw=p)


def train_flops_per_example(cfg, num_image_tokens: int, num_text_tokens: int) -> float:
    """Analytic FLOPs of one training example: 3 x forward (forward + 2x backward).

    Counts every matmul (2 FLOPs per multiply-add) including the attention score and
    value products; ignores norms, activations and remat recomputation (the MFU convention).
    """
    d = cfg.num_heads * cfg.head_dim
    m = int(d * cfg.mlp_ratio)
    n, t = num_image_tokens, num_text_tokens
    seq = n + t
    out = cfg.out_channels or cfg.in_channels
    scalar_embedders = 1 + int(cfg.guidance_embed)
    # Per-example multiply-adds: conditioning MLPs and block modulations.
    per_example = (
        scalar_embedders * (TIMESTEP_CHANNELS * d + d * d)
        + cfg.pooled_dim * d + d * d
        + int(cfg.size_embed) * (2 * TIMESTEP_CHANNELS * d + d * d)
        + int(cfg.get("meta_embed", False)) * (META_FEATURES * d + d * d)
        + cfg.depth_double * 2 * 6 * d * d
        + cfg.depth_single * 3 * d * d
        + 2 * d * d
    )
    per_token = n * (cfg.in_channels * d + d * out) + t * cfg.text_dim * d
    per_token += cfg.depth_double * seq * (4 * d * d + 2 * d * m)  # q, k, v, out + MLP, either stream
    per_token += cfg.depth_single * seq * (3 * d * d + d * m + (d + m) * d)
    attention_macs = (cfg.depth_double + cfg.depth_single) * 2 * seq * seq * d  # q k^T and p v
    return 3.0 * 2.0 * float(per_example + per_token + attention_macs)


class MMDiT(nnx.Module):
    """Flux-compatible MMDiT. See the module docstring and `__call__`."""

    def __init__(self, cfg: ml_collections.ConfigDict, rngs: nnx.Rngs):
        validate_config(cfg)
        # Frozen (hashable) so the module's GraphDef can be a static jit argument (nnx.jit).
        self.cfg = cfg = ml_collections.FrozenConfigDict(cfg)
        dtype = layers.compute_dtype(cfg.dtype)
        hidden = cfg.num_heads * cfg.head_dim
        mlp_hidden = int(hidden * cfg.mlp_ratio)
        self.out_channels = cfg.out_channels or cfg.in_channels

        def embedder(in_features, out_kernel_init=layers.DEFAULT_KERNEL_INIT):
            return layers.MLP(in_features, hidden, hidden, rngs=rngs, activation_name="silu",
                              names=("in_features", "embed", "embed"), out_kernel_init=out_kernel_init)

        self.x_embedder = layers.Linear(cfg.in_channels, hidden, rngs=rngs, names=("in_features", "embed"), dtype=dtype)
        self.context_embedder = layers.Linear(cfg.text_dim, hidden, rngs=rngs, names=("in_features", "embed"),
                                              dtype=dtype)
        self.time_embedder = embedder(TIMESTEP_CHANNELS)
        self.pooled_embedder = embedder(cfg.pooled_dim)
        self.guidance_embedder = embedder(TIMESTEP_CHANNELS) if cfg.guidance_embed else None
        # Zero-initialised output: a model with a size embedding starts exactly like one without.
        self.size_embedder = embedder(2 * TIMESTEP_CHANNELS, layers.ZEROS) if cfg.size_embed else None
        self.meta_embedder = embedder(META_FEATURES, layers.ZEROS) if cfg.get("meta_embed", False) else None
        make_double = lambda r: DoubleStreamBlock(hidden, cfg.head_dim, mlp_hidden, rngs=r, dtype=dtype)
        make_single = lambda r: SingleStreamBlock(hidden, cfg.head_dim, mlp_hidden, rngs=r, dtype=dtype)
        if is_scanned(cfg):  # one module per stack, parameters stacked on a leading LAYER_AXIS
            self.double_blocks = _stacked_blocks(make_double, cfg.depth_double, rngs)
            self.single_blocks = _stacked_blocks(make_single, cfg.depth_single, rngs)
        else:
            self.double_blocks = nnx.List([make_double(rngs) for _ in range(cfg.depth_double)])
            self.single_blocks = nnx.List([make_single(rngs) for _ in range(cfg.depth_single)])
        self.final_norm = layers.LayerNorm(hidden, rngs=rngs, eps=1e-6)
        self.final_modulation = layers.Modulation(hidden, hidden, 2, rngs=rngs)  # (scale, shift), Flux's order
        self.proj_out = layers.Linear(hidden, self.out_channels, rngs=rngs, names=("embed", "in_features"),
                                      dtype=dtype, kernel_init=layers.ZEROS)

    def __call__(
        self,
        x: jax.Array,
        t: jax.Array,
        text_embeddings: jax.Array,
        pooled: jax.Array,
        *,
        text_mask: jax.Array | None = None,
        image_mask: jax.Array | None = None,
        grid_hw: tuple[int, int] | None = None,
        img_ids: jax.Array | None = None,
        txt_ids: jax.Array | None = None,
        guidance: jax.Array | None = None,
        target_size: jax.Array | None = None,
        meta: jax.Array | None = None,
        return_features: bool = False,
        attention_kwargs: dict | None = None,
        reference_kv=None,
    ):
        """Predict the flow velocity of image tokens.

        Args:
          x: [B, N, in_channels] patchified image tokens (row-major on the token grid).
          t: [B] (or scalar) flow time in [0, 1]; multiplied by 1000 inside, as Flux does.
          text_embeddings: [B, T, text_dim]. pooled: [B, pooled_dim].
          text_mask: [B, T] bool, False = padding; padded text keys are masked out of joint
            attention. None = all valid.
          image_mask: [B, N] bool, False = an image token no query attends to (an unused
            reference slot of a packed sequence); its own output is still computed. None = all valid.
          grid_hw: (h, w) token grid of x (static ints); builds the default Seedream ids and
            the attention layout. Needed unless both img_ids and txt_ids are given.
          img_ids, txt_ids: [N, 3] / [T, 3] (or batched [B, ., 3]) RoPE position ids,
            overriding the default ones (e.g. Flux's all-zero txt_ids).
          guidance: [B] guidance scale (only with cfg.guidance_embed; multiplied by 1000 inside).
          target_size: [B, 2] target (height, width) in pixels (only with cfg.size_embed).
          meta: [B, META_FEATURES] the task's meta-info (only with cfg.meta_embed; zeros = dropped).
          return_features: also return [B, N, hidden] image-token features after block
            cfg.repa_layer (double blocks first, then single blocks), for REPA.
          attention_kwargs: extra keyword arguments for the attention backend (e.g. sparse plans).
          reference_kv: a `seedjax.models.reference_cache.ReferenceKV`: keys and values of
            reference images that every query also attends to (model.reference_attention='cached').

        Returns:
          velocity [B, N, out_channels] float32, or (velocity, features) with return_features.
        """
        cfg = self.cfg
        batch, num_img, channels = x.shape
        num_txt = text_embeddings.shape[1]
        if channels != cfg.in_channels:
            raise ValueError(f"MMDiT: x has {channels} channels (shape {x.shape}), config in_channels is {cfg.in_channels}")
        if text_embeddings.shape != (batch, num_txt, cfg.text_dim):
            raise ValueError(f"MMDiT: text_embeddings shape {text_embeddings.shape}, expected [{batch}, T, {cfg.text_dim}]")
        if pooled.shape != (batch, cfg.pooled_dim):
            raise ValueError(f"MMDiT: pooled shape {pooled.shape}, expected [{batch}, {cfg.pooled_dim}]")
        if text_mask is not None and text_mask.shape != (batch, num_txt):
            raise ValueError(f"MMDiT: text_mask shape {text_mask.shape}, expected [{batch}, {num_txt}]")
        if image_mask is not None and image_mask.shape != (batch, num_img):
            raise ValueError(f"MMDiT: image_mask shape {image_mask.shape}, expected [{batch}, {num_img}]")
        if return_features and cfg.repa_layer < 0:
            raise ValueError("MMDiT: return_features=True needs cfg.repa_layer >= 0")
        get_backend(cfg.attention_backend)  # fail early on an unknown backend name
        if reference_kv is not None and cfg.attention_backend != "dense":
            raise ValueError(f"MMDiT: cached reference keys need the dense attention backend, not "
                             f"{cfg.attention_backend!r} (its layout knows only text and image tokens)")

        cond = constrain(self._conditioning(t, pooled, guidance, target_size, batch, meta), ("batch", "act_embed"))
        cos, sin = self._rope_tables(num_img, num_txt, grid_hw, img_ids, txt_ids)
        key_mask = None
        if text_mask is not None or image_mask is not None:
            key_mask = jnp.concatenate([
                jnp.ones((batch, num_txt), bool) if text_mask is None else text_mask.astype(bool),
                jnp.ones((batch, num_img), bool) if image_mask is None else image_mask.astype(bool)], axis=1)
        attend_at = functools.partial(
            _attend,
            backend=cfg.attention_backend,
            layout=TokenLayout(num_txt, None if grid_hw is None else tuple(grid_hw)),
            extra=attention_kwargs or {},
            context=reference_kv,
        )

        # The residual stream stays float32 whatever the compute dtype.
        img = constrain(self.x_embedder(x).astype(jnp.float32), TOKENS)
        txt = constrain(self.context_embedder(text_embeddings).astype(jnp.float32), TOKENS)
        img, features = self.run_blocks(img, txt, cond, cos, sin, key_mask, attend_at,
                                        (cfg.repa_layer,) if return_features else ())
        features = features[0] if return_features else None

        scale, shift = self.final_modulation(cond)
        out = self.proj_out(layers.modulate(self.final_norm(img), shift, scale)).astype(jnp.float32)
        target, x0_min_t = prediction(cfg)
        if target == "x0":  # out is the clean image; return the velocity it implies
            t_tokens = jnp.broadcast_to(jnp.asarray(t, jnp.float32), (batch,))[:, None, None]
            velocity = (x.astype(jnp.float32) - out) / jnp.maximum(t_tokens, x0_min_t)
        else:
            velocity = out
        return (velocity, features) if return_features else velocity

    def _conditioning(self, t, pooled, guidance, target_size, batch, meta=None) -> jax.Array:
        """[B, hidden] float32 vector that drives every adaLN modulation."""
        cfg = self.cfg

        def scalar_embedding(values):
            values = jnp.broadcast_to(jnp.asarray(values, jnp.float32), (batch,))
            return layers.timestep_embedding(values * 1000.0, TIMESTEP_CHANNELS)

        cond = self.time_embedder(scalar_embedding(t))
        if cfg.guidance_embed:
            if guidance is None:
                raise ValueError("MMDiT: cfg.guidance_embed is on, pass guidance=[B] guidance scales")
            cond = cond + self.guidance_embedder(scalar_embedding(guidance))
        elif guidance is not None:
            raise ValueError("MMDiT: guidance was given but cfg.guidance_embed is off")
        cond = cond + self.pooled_embedder(pooled.astype(jnp.float32))
        if cfg.size_embed:
            if target_size is None or target_size.shape != (batch, 2):
                got = None if target_size is None else target_size.shape
                raise ValueError(f"MMDiT: cfg.size_embed is on, pass target_size [{batch}, 2] (height, width); got {got}")
            size = jnp.concatenate(
                [layers.timestep_embedding(target_size[:, i].astype(jnp.float32), TIMESTEP_CHANNELS) for i in (0, 1)],
                axis=-1,
            )
            cond = cond + self.size_embedder(size)
        elif target_size is not None:
            raise ValueError("MMDiT: target_size was given but cfg.size_embed is off")
        if self.meta_embedder is not None:
            if meta is None or meta.shape != (batch, META_FEATURES):
                raise ValueError(f"MMDiT: cfg.meta_embed is on, pass meta [{batch}, {META_FEATURES}]; got "
                                 f"{None if meta is None else meta.shape}")
            cond = cond + self.meta_embedder(meta.astype(jnp.float32))
        elif meta is not None:
            raise ValueError("MMDiT: meta was given but cfg.meta_embed is off")
        return cond

    def _rope_tables(self, num_img, num_txt, grid_hw, img_ids, txt_ids):
        if img_ids is None or txt_ids is None:
            if grid_hw is None:
                raise ValueError("MMDiT: pass grid_hw=(h, w) (or both img_ids and txt_ids) to place the image tokens")
            h, w = grid_hw
            if h * w != num_img:
                raise ValueError(f"MMDiT: grid_hw {tuple(grid_hw)} has {h * w} tokens but x has {num_img}")
            default_img, default_txt = seedream_position_ids(h, w, num_txt)
            img_ids = default_img if img_ids is None else img_ids
            txt_ids = default_txt if txt_ids is None else txt_ids
        img_ids, txt_ids = jnp.asarray(img_ids), jnp.asarray(txt_ids)
        if img_ids.shape[-2] != num_img or txt_ids.shape[-2] != num_txt:
            raise ValueError(f"MMDiT: img_ids {img_ids.shape} / txt_ids {txt_ids.shape} do not match "
                             f"{num_img} image and {num_txt} text tokens")
        if img_ids.ndim != txt_ids.ndim:  # one batched, one shared: broadcast the shared one
            lead = (img_ids if img_ids.ndim == 3 else txt_ids).shape[0]
            img_ids = jnp.broadcast_to(img_ids, (lead, *img_ids.shape[-2:]))
            txt_ids = jnp.broadcast_to(txt_ids, (lead, *txt_ids.shape[-2:]))
        ids = jnp.concatenate([txt_ids, img_ids], axis=-2)
        return rope_frequencies(ids, self.cfg.axes_dims_rope, self.cfg.rope_theta)

    def run_blocks(self, img, txt, cond, cos, sin, key_mask, attend_at, feature_layers=(), *,
                   last_layer: int | None = None, remat: bool | None = None):
        """The block stack on embedded tokens: double blocks, then single blocks on [txt, img].

        `attend_at(i)` is block i's attention function (see `_attend`); under scan_layers `i`
        is a traced int32. Runs blocks 0..`last_layer` (default: all) and returns (image
        tokens after the last block run, [image-token features after each block in
        `feature_layers`, in that order]). `remat` defaults to cfg.remat.
        """
        cfg = self.cfg
        total = cfg.depth_double + cfg.depth_single
        last = total - 1 if last_layer is None else last_layer
        if not 0 <= last < total:
            raise ValueError(f"MMDiT.run_blocks: last_layer {last_layer} is outside the model's {total} blocks")
        wanted = tuple(int(i) for i in feature_layers)
        if any(not 0 <= i <= last for i in wanted):
            raise ValueError(f"MMDiT.run_blocks: feature layers {wanted} must be in 0..{last}")
        policy = remat_policy(cfg) if (cfg.remat if remat is None else remat) else None
        num_txt = txt.shape[1]
        found = {}
        if is_scanned(cfg):
            n_double = min(cfg.depth_double, last + 1)
            if n_double:
                (img, txt), feats = _scan_stack(
                    self.double_blocks, n_double, 0, _double_step, (img, txt), (cond, cos, sin, key_mask),
                    [i for i in wanted if i < n_double], lambda carry: carry[0], attend_at, policy)
                found.update(feats)
            n_single = last + 1 - cfg.depth_double
            joint = jnp.concatenate([txt, img], axis=1)
            if n_single > 0:
                joint, feats = _scan_stack(
                    self.single_blocks, n_single, cfg.depth_double, _single_step, joint, (cond, cos, sin, key_mask),
                    [i for i in wanted if i >= cfg.depth_double], lambda joint: joint[:, num_txt:], attend_at, policy)
                found.update(feats)
            return joint[:, num_txt:], [found[i] for i in wanted]
        maybe_remat = (lambda fn: fn) if policy is None else functools.partial(nnx.remat, policy=policy)
        for i, block in enumerate(self.double_blocks):
            if i > last:
                return img, [found[i] for i in wanted]
            run = maybe_remat(_with_attention(DoubleStreamBlock.__call__, attend_at(i)))
            img, txt = run(block, img, txt, cond, cos, sin, key_mask)
            if i in wanted:
                found[i] = img
        joint = jnp.concatenate([txt, img], axis=1)
        for j, block in enumerate(self.single_blocks):
            i = cfg.depth_double + j
            if i > last:
                break
            run = maybe_remat(_with_attention(SingleStreamBlock.__call__, attend_at(i)))
            joint = run(block, joint, cond, cos, sin, key_mask)
            if i in wanted:
                found[i] = joint[:, num_txt:]
        return joint[:, num_txt:], [found[i] for i in wanted]


def _stacked_blocks(make, depth: int, rngs: nnx.Rngs):
    """`depth` blocks as one module whose parameters have a leading LAYER_AXIS (nnx.vmap over
    split RNG keys); an empty nnx.List for depth 0 (same pure dict, {}, in both layouts)."""
    if depth == 0:
        return nnx.List([])
    create = nnx.vmap(make, in_axes=0, out_axes=0, transform_metadata={nnx.PARTITION_NAME: LAYER_AXIS})
    return create(rngs.split(depth))


def _double_step(block, carry, consts, attend):
    img, txt = carry
    return block(img, txt, *consts, attend=attend)


def _single_step(block, joint, consts, attend):
    return block(joint, *consts, attend=attend)


def _scan_stack(stack, n: int, first: int, step, carry, consts, levels, pick, attend_at, policy):
    """Run the first `n` layers of a stacked block module (layers first..first+n-1 of the model)
    under one scan; the carry also holds the features `pick(carry)` after each layer in `levels`.

    Functional (nnx.split, lax.scan over the stacked state, nnx.merge per layer) so it works
    however the model reached it (plain jax.jit closures, nnx transforms, eval_shape). Each
    layer's variables get LAYER_AXIS taken out of their sharding names, as nnx.scan's
    transform_metadata does, so `param_value` sees the per-layer names."""
    graphdef, state = nnx.split(stack)
    depth = jax.tree.leaves(state)[0].shape[0]
    if n < depth:
        state = jax.tree.map(lambda x: x[:n], state)
    layer_axis = {nnx.PARTITION_NAME: LAYER_AXIS}

    def layer(layer_state, index, carry, consts):
        block = nnx.merge(graphdef, nnx.spmd.remove_axis(layer_state, 0, layer_axis))
        return step(block, carry, consts, attend_at(index))

    if policy is not None:  # scan already keeps XLA from merging the recomputation away
        layer = jax.checkpoint(layer, policy=policy, prevent_cse=False)

    def body(scan_carry, xs):
        carry, feats = scan_carry
        layer_state, index = xs
        carry = layer(layer_state, index, carry, consts)
        feats = tuple(jnp.where(index == level, pick(carry), f) for level, f in zip(levels, feats))
        return (carry, feats), None

    feats = tuple(jnp.zeros_like(pick(carry)) for _ in levels)
    (carry, feats), _ = jax.lax.scan(body, (carry, feats), (state, jnp.arange(first, first + n, dtype=jnp.int32)))
    return carry, dict(zip(levels, feats))


def _with_attention(block_call, attend):
    """block_call(block, *arrays) with `attend` bound: only arrays cross the remat boundary."""

    def run(block, *arrays):
        return block_call(block, *arrays, attend=attend)

    return run


def _attend(layer_index, *, backend: str, layout: TokenLayout, extra: dict, context=None):
    """The attention function block `layer_index` calls: (q, k, v, key_mask) -> out. The index
    is an int, or a traced int32 under scan_layers (see STATIC_LAYER_INDEX_BACKENDS). A
    `context` (ReferenceKV) adds its keys and values of this layer after the block's own."""

    def attend(q, k, v, key_mask):
        if context is not None:
            k = jnp.concatenate([k, context.k[:, layer_index].astype(k.dtype)], axis=1)
            v = jnp.concatenate([v, context.v[:, layer_index].astype(v.dtype)], axis=1)
            own = jnp.ones(q.shape[:2], bool) if key_mask is None else key_mask.astype(bool)
            key_mask = jnp.concatenate([own, context.valid.astype(bool)], axis=1)
        return attention(q, k, v, key_mask=key_mask, backend=backend, layer_index=layer_index, layout=layout, **extra)

    return attend
