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
from flax import nnx

from seedjax.models import mmdit, text
from seedjax.models.geometry import Geometry


class DiffusionModel(nnx.Module):
    """Text encoder + MMDiT: (x_t tokens, t, caption conditioning, geometry) -> velocity tokens."""

    def __init__(self, config, rngs: nnx.Rngs):
        self.text = text.TextEncoder(config.text, rngs=rngs)
        self.dit = mmdit.MMDiT(config.model, rngs=rngs)

    def condition(self, batch: dict) -> dict:
        embeddings, mask, pooled = text.text_conditioning(self.text, batch)
        return {"text_embeddings": embeddings, "pooled": pooled, "text_mask": mask}

    def __call__(self, x, t, cond: dict, geometry: Geometry, *, guidance=None, target_size=None,
                 return_features=False, attention_kwargs=None):
        if not geometry.is_image:
            raise ValueError(f"the MMDiT denoises single images; a {geometry.frames}-frame geometry needs the video DiT")
        return self.dit(x, t, cond["text_embeddings"], cond["pooled"], text_mask=cond["text_mask"],
                        grid_hw=geometry.grid_hw, guidance=guidance, target_size=target_size,
                        return_features=return_features, attention_kwargs=attention_kwargs)

    @property
    def guidance_embedded(self) -> bool:
        """Whether the guidance scale enters through an embedder (CFG-distilled: one evaluation per step)."""
        return self.dit.guidance_embedder is not None


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


def drop_captions(batch: dict, rng: jax.Array, p: float) -> dict:
    """Replace a fraction `p` of captions by the empty caption (trains the unconditional branch)."""
    if p <= 0 or "tokens" not in batch:
        return batch
    empty_tokens, empty_mask = text.empty_caption(batch["tokens"].shape[1])
    drop = jax.random.bernoulli(rng, p, (batch["tokens"].shape[0],))[:, None]
    return dict(batch, tokens=jnp.where(drop, empty_tokens, batch["tokens"]),
                text_mask=jnp.where(drop, empty_mask, batch["text_mask"]))


def empty_captions(batch: dict) -> dict:
    """The batch's captions replaced by the empty caption: the unconditional branch of CFG."""
    empty = {k: v for k, v in batch.items() if k in ("tokens", "text_mask")}
    return drop_captions(empty, jax.random.key(0), 1.0)


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


def train_flops_per_example(config, geometry: Geometry) -> float:
    """Analytic training FLOPs of one example: the MMDiT on the geometry's tokens and the text encoder."""
    return mmdit.train_flops_per_example(config.model, geometry.num_tokens, config.data.max_text_len) + \
        text.train_flops_per_example(config.text, config.data.max_text_len)
