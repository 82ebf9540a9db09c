"""The generator: text encoder + DiT, a velocity field over patch tokens.

Every stage that trains or uses the text-to-image model builds it here (pretraining, SFT,
RLHF, each distillation student and teacher, the inference bundle), so one checkpoint layout
(`model/text/...`, `model/dit/...`) serves them all. What the DiT denoises is described by a
`seedjax.models.geometry.Geometry`; the latent codec of a latent-space run is
`seedjax.models.codec.LatentCodec`.
"""

from __future__ import annotations

import copy

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from seedjax.models import mmdit, reference_cache, text, video_dit
from seedjax.models.geometry import Geometry, PackedGeometry

# Batch keys of a video task (besides the captions): the clean conditioning frames in model
# space [B, F, H, W, C] (zeros where there are none), which frames they are [B, F], and the
# shot of every frame [B, F'] (any frame rate: `frame_shots` maps it onto the token frames).
VIDEO_CONDITION_KEYS = ("cond_frames", "cond_mask", "frame_shot")
CAPTION_KEYS = ("tokens", "text_mask", "shot_tokens", "shot_mask")  # a batch's captions (one, or one a shot)
# Batch keys of an editing task (MMDiT): clean reference images [B, R, H, W, C] in model space,
# packed after the target's tokens, and how many of the R slots each example uses [B] (the
# others are masked out of attention). `seedjax.diffusion.tasks.edit_task` makes them.
REFERENCE_KEYS = ("references", "num_references")
# Meta-info (SeedEdit 3.0; model.meta_embed): the task, told apart by the number of references.
META_TASKS = ("t2i", "edit", "multi_ref")


def is_video(model_cfg) -> bool:
    """Whether config.model describes the video DiT (else the MMDiT)."""
    return model_cfg.get("kind", "mmdit") == "video_dit"


class DiffusionModel(nnx.Module):
    """Text encoder + DiT (MMDiT, or the video DiT): (x_t tokens, t, conditioning, geometry) -> velocity tokens."""

    def __init__(self, config, rngs: nnx.Rngs):
        self.text = text.TextEncoder(config.text, rngs=rngs)
        self.dit = video_dit.VideoDiT(config.model, rngs=rngs) if is_video(config.model) else \
            mmdit.MMDiT(config.model, rngs=rngs)

    @property
    def is_video(self) -> bool:
        return isinstance(self.dit, video_dit.VideoDiT)

    def condition(self, batch: dict) -> dict:
        if not self.is_video:
            embeddings, mask, pooled = text.text_conditioning(self.text, batch)
            refs = {k: batch[k] for k in REFERENCE_KEYS if "references" in batch}
            if self.dit.meta_embedder is not None:  # the meta-info goes with the caption (CFG, caption dropout)
                refs["meta_dropped"] = is_empty_caption(batch)
            return {"text_embeddings": embeddings, "pooled": pooled, "text_mask": mask, **refs}
        # Every shot's caption is encoded on its own; the DiT sees them one after another.
        if "shot_tokens" in batch:
            tokens, mask = batch["shot_tokens"], batch["shot_mask"].astype(bool)
        else:
            tokens = batch["tokens"][:, None]
            mask = (batch["text_mask"] if "text_mask" in batch else batch["tokens"] != text.PAD)[:, None].astype(bool)
        b, shots, length = tokens.shape
        embeddings, pooled = self.text(tokens.reshape(b * shots, length), mask.reshape(b * shots, length))
        used = jnp.any(mask, axis=-1).astype(jnp.float32)[..., None]  # [B, S, 1]
        pooled = jnp.sum(pooled.reshape(b, shots, -1) * used, 1) / jnp.maximum(jnp.sum(used, 1), 1.0)
        out = {"text_embeddings": embeddings.reshape(b, shots * length, -1), "pooled": pooled, "shot_mask": mask}
        return out | {k: batch[k] for k in VIDEO_CONDITION_KEYS if k in batch}

    def __call__(self, x, t, cond: dict, geometry: Geometry, *, guidance=None, target_size=None,
                 return_features=False, attention_kwargs=None, recycled=None, feature_blocks=()):
        if recycled is not None and not self.is_video:
            raise ValueError("recycled frames (model.recycle) are a block-causal video DiT's input")
        if self.is_video:
            if target_size is not None:
                raise ValueError("the video DiT has no size embedding")
            mask = cond["shot_mask"]
            frames = geometry.grid[0]
            return self.dit(x, t, cond["text_embeddings"], cond["pooled"], grid=geometry.grid,
                            num_shots=mask.shape[1], text_mask=mask.reshape(mask.shape[0], -1),
                            frame_shot=frame_shots(cond["frame_shot"], frames) if "frame_shot" in cond else None,
                            cond_tokens=geometry.tokens(cond["cond_frames"]) if "cond_frames" in cond else None,
                            cond_mask=frame_shots(cond["cond_mask"], frames) if "cond_mask" in cond else None,
                            guidance=guidance, recycled=recycled, attention_kwargs=attention_kwargs,
                            return_features=return_features, feature_blocks=feature_blocks)
        if feature_blocks:
            raise ValueError("feature_blocks (a block's features) are the video DiT's; the MMDiT's are "
                             "seedjax.distill.discriminator.trunk_features")
        if not geometry.is_image:
            raise ValueError(f"the MMDiT denoises single images; a {geometry.frames}-frame geometry needs the video DiT "
                             f"(config.model = video_dit_config(...))")
        inputs = dict(guidance=guidance, target_size=target_size, return_features=return_features,
                      attention_kwargs=attention_kwargs)
        if self.dit.meta_embedder is not None:
            inputs["meta"] = meta_info(cond, geometry, x.shape[0])
        if "references" not in cond:
            return self.dit(x, t, cond["text_embeddings"], cond["pooled"], text_mask=cond["text_mask"],
                            grid_hw=geometry.grid_hw, **inputs)
        if self.caches_references:  # the target attends to the references' cached keys and values
            kv = self.cache_references(cond, geometry)["reference_kv"]
            return self.dit(x, t, cond["text_embeddings"], cond["pooled"], text_mask=cond["text_mask"],
                            grid_hw=geometry.grid_hw, reference_kv=kv, **inputs)
        # Editing: [target | reference 1 | ...] in one sequence; only the target's tokens come back.
        packed, image_mask, img_ids, txt_ids = pack_references(x, cond, geometry, self.dit.cfg)
        out = self.dit(packed, t, cond["text_embeddings"], cond["pooled"], text_mask=cond["text_mask"],
                       image_mask=image_mask, img_ids=img_ids, txt_ids=txt_ids, **inputs)
        n = x.shape[1]
        return (out[0][:, :n], out[1][:, :n]) if return_features else out[:, :n]

    @property
    def caches_references(self) -> bool:
        """Whether reference images are encoded once, apart from the target (model.reference_attention)."""
        return not self.is_video and self.dit.cfg.get("reference_attention", "joint") == "cached"

    def cache_references(self, cond: dict, geometry: Geometry) -> dict:
        """`cond` with the references' keys and values (`reference_cache.ReferenceKV`) under
        "reference_kv", when the model caches them and `cond` has references; else `cond` as it is.
        A sampler calls this once per generation; a call without it recomputes them every step."""
        if not self.caches_references or "references" not in cond or "reference_kv" in cond:
            return cond
        tokens, valid, ids = reference_tokens(cond, geometry, self.dit.cfg)
        return cond | {"reference_kv": reference_cache.reference_kv(self.dit, tokens, valid, ids, cond["pooled"])}

    def start(self, noise: jax.Array, batch: dict, geometry: Geometry) -> jax.Array:
        """Where a sampler starts: the noise, except that a per-frame-timestep video model's clean
        conditioning frames start (and, with velocity 0 there, stay) exactly clean."""
        if not (self.is_video and self.dit.cfg.condition == "timestep" and "cond_frames" in batch):
            return noise
        mask = frame_shots(batch["cond_mask"], geometry.grid[0]) > 0
        per_token = jnp.repeat(mask, geometry.num_tokens // geometry.grid[0], axis=1)[..., None]
        return jnp.where(per_token, geometry.tokens(batch["cond_frames"]).astype(noise.dtype), noise)

    @property
    def is_causal(self) -> bool:
        """A block-causal video DiT (model.causal): it generates frame after frame (AAPT)."""
        return self.is_video and video_dit.causal_settings(self.dit.cfg)[0]

    @property
    def guidance_embedded(self) -> bool:
        """Whether the guidance scale enters through an embedder (CFG-distilled: one evaluation per step)."""
        return self.dit.guidance_embedder is not None


def is_empty_caption(batch: dict) -> jax.Array:
    """[B] bool: whether each caption is the empty caption (CFG's unconditional input)."""
    tokens = batch["tokens"]
    empty, _ = text.empty_caption(tokens.shape[-1])
    return jnp.all(tokens == empty, axis=-1)


def meta_info(cond: dict, geometry: Geometry, n: int) -> jax.Array:
    """[n, mmdit.META_FEATURES] meta-info of a conditioning: 1 (present), the task one-hot
    (META_TASKS: no reference, one, several), log(height / width) of the target, the number of
    references; all zeros where the caption is the empty one (`cond["meta_dropped"]`)."""
    refs = jnp.asarray(cond.get("num_references", jnp.zeros((n,), jnp.int32))).reshape(n)
    h, w = geometry.grid_hw
    features = jnp.concatenate([jnp.ones((n, 1)), jax.nn.one_hot(jnp.minimum(refs, 2), len(META_TASKS)),
                                jnp.full((n, 1), np.log(h / w)), refs[:, None].astype(jnp.float32)], axis=1)
    return jnp.where(cond["meta_dropped"][:, None], 0.0, features)


def reference_tokens(cond: dict, geometry: Geometry, model_cfg):
    """The references of `cond` (REFERENCE_KEYS) for a target of `geometry`: (tokens [B, sum N_r, D],
    valid [B, sum N_r] (False on unused slots), RoPE ids [sum N_r, 3] as model.reference_rope says)."""
    refs = cond["references"]
    if refs.ndim != 5:
        raise ValueError(f"references must be [B, R, H, W, C], got shape {refs.shape}")
    parts = tuple(Geometry.of_array(refs[:, r], geometry.patch) for r in range(refs.shape[1]))
    tokens = jnp.concatenate([g.tokens(refs[:, r]) for r, g in enumerate(parts)], axis=1)
    used = jnp.arange(len(parts))[None, :] < jnp.asarray(cond["num_references"]).reshape(-1, 1)  # [B, R]
    valid = jnp.concatenate([jnp.repeat(used[:, r:r + 1], g.num_tokens, axis=1) for r, g in enumerate(parts)], 1)
    ids = PackedGeometry(geometry, parts).position_ids(model_cfg.get("reference_rope", "per_reference"))
    return tokens, valid, ids[geometry.num_tokens:]


def pack_references(x: jax.Array, cond: dict, geometry: Geometry, model_cfg):
    """The MMDiT's inputs for a target x [B, N, D] and the references of `cond` in one sequence
    (model.reference_attention = 'joint'): (packed tokens [B, N + sum N_r, D], image_mask
    [B, N + sum N_r] (False on unused slots), img_ids, txt_ids). The references' ids follow
    model.reference_rope; the text's are the Seedream ids of the target's grid, as without references."""
    tokens, valid, ref_ids = reference_tokens(cond, geometry, model_cfg)
    image_mask = jnp.concatenate([jnp.ones(x.shape[:2], bool), valid], 1)
    img_ids, txt_ids = mmdit.seedream_position_ids(*geometry.grid_hw, cond["text_embeddings"].shape[1])
    return (jnp.concatenate([x, tokens.astype(x.dtype)], axis=1), image_mask,
            np.concatenate([img_ids, ref_ids]), txt_ids)


def with_guidance_embed(config, guidance_embed: bool):
    """A copy of `config` whose MMDiT has (or lacks) the guidance-scale embedder."""
    out = copy.deepcopy(config)
    with out.unlocked():
        out.model.guidance_embed = bool(guidance_embed)
    return out


def build(config, rngs: nnx.Rngs, guidance_embed: bool | None = None) -> DiffusionModel:
    """The generator of `config`; `guidance_embed` overrides config.model.guidance_embed."""
    if guidance_embed is not None:
        config = with_guidance_embed(config, guidance_embed)
    return DiffusionModel(config, rngs)


# --------------------------------------------------------------------------- inputs of one call


def batch_size(batch: dict) -> int:
    return (batch["tokens"] if "tokens" in batch else batch["text_embeddings"]).shape[0]


def frame_shots(per_frame: jax.Array, frames: int) -> jax.Array:
    """A per-frame array [B, F'] at another frame rate mapped onto `frames` frames: frame j takes
    frame round(j (F' - 1) / (frames - 1)), the last input frame it covers (a causal video VAE's
    latent frame j >= 1 covers pixel frames r(j - 1) + 1 .. rj; latent frame 0, pixel frame 0)."""
    have = per_frame.shape[1]
    if have == frames:
        return per_frame
    index = np.round(np.arange(frames) * (have - 1) / max(frames - 1, 1)).astype(np.int32)
    return per_frame[:, index]


def drop_captions(batch: dict, rng: jax.Array, p: float) -> dict:
    """Replace a fraction `p` of captions (every shot's, for videos) by the empty caption
    (trains the unconditional branch); other keys are kept."""
    if p <= 0 or "tokens" not in batch:
        return batch
    n = batch["tokens"].shape[0]
    drop = jax.random.bernoulli(rng, p, (n,))
    out = dict(batch)
    for tokens_key, mask_key in (("tokens", "text_mask"), ("shot_tokens", "shot_mask")):
        if tokens_key in batch:
            empty_tokens, empty_mask = text.empty_caption(batch[tokens_key].shape[-1])
            where = drop.reshape(n, *([1] * (batch[tokens_key].ndim - 1)))
            out[tokens_key] = jnp.where(where, empty_tokens, batch[tokens_key])
            out[mask_key] = jnp.where(where, empty_mask, batch.get(mask_key, batch[tokens_key] != text.PAD))
    return out


def empty_captions(batch: dict) -> dict:
    """The batch's captions replaced by the empty caption: the unconditional branch of CFG
    (a video's conditioning frames and shots, an edit's references are kept)."""
    keep = (*CAPTION_KEYS, *VIDEO_CONDITION_KEYS, *REFERENCE_KEYS)
    return drop_captions({k: v for k, v in batch.items() if k in keep}, jax.random.key(0), 1.0)


def extras(model_cfg, batch: dict, n: int, guidance=None) -> dict:
    """The MMDiT's optional inputs: the target size (size embedder) and the guidance scale
    (guidance embedder: `guidance`, else the batch's, else 1)."""
    out = {}
    if model_cfg.size_embed:
        out["target_size"] = batch["target_size"] if "target_size" in batch else jnp.zeros((n, 2), jnp.int32)
    if model_cfg.guidance_embed:
        if guidance is not None:
            out["guidance"] = jnp.broadcast_to(jnp.asarray(guidance, jnp.float32), (n,))
        else:
            out["guidance"] = batch.get("guidance", jnp.ones((n,), jnp.float32))
    return out


def attention_kwargs(config, t: jax.Array) -> dict | None:
    """What the configured attention backend needs per call (PARO: its plan and the timestep)."""
    if config.model.attention_backend != "paro":
        return None
    if not config.sampling.paro_plan:
        raise ValueError("config.model.attention_backend=paro needs config.sampling.paro_plan "
                         "(make one with python -m seedjax.tools.calibrate_paro)")
    return {"plan": config.sampling.paro_plan, "timestep": t}


def train_flops_per_example(config, geometry: Geometry, num_shots: int = 1) -> float:
    """Analytic training FLOPs of one example: the DiT on the geometry's tokens and the text encoder."""
    length = config.data.max_text_len
    if is_video(config.model):
        dit = video_dit.train_flops_per_example(config.model, geometry.grid, num_shots * length)
    else:
        dit = mmdit.train_flops_per_example(config.model, geometry.num_tokens, length)
    return dit + num_shots * text.train_flops_per_example(config.text, length)
