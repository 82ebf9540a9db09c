"""What every distillation stage is built on: a student, its EMA, a frozen teacher.

A distillation stage's train state subclasses `StudentState` and adds what it needs (a fake
score network, discriminators, their optimizers). The stage hooks shared by all of them live
here: `load_pretrained` (student and teacher from the previous stage's checkpoint), `sample`
(the student at its NFE, also what the `config.evals` evaluators sample) and `nfe`.

Chaining (`config.init_from` = the previous stage): the student starts from the entry
`config.distill.student_from` of that checkpoint ('ema' or 'model'), the frozen teacher from
`config.distill.teacher_from` ('teacher' carries the previous stage's teacher forward; 'ema'
or 'model' makes the previous stage's student the new teacher).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from etils import epath
from flax import nnx

import data_pipelines
from seedjax.config import config_from_json
from seedjax.models import codec
from seedjax.models import generator as models_generator
from seedjax.models.frozen import freeze
from seedjax.train.generation import generate_pixels, sampler_of
from seedjax.train.params import load_params, pick_params
from seedjax.train.state import EMA, make_optimizer
from seedjax.train.updates import ema_model


def validate_config(config) -> None:
    """The checks every distillation stage shares (`validate_config` hook: exit 2 before anything runs)."""
    d = config.distill
    if not config.init_from:
        raise ValueError(f"stage {config.stage}: distillation starts from a trained model; set config.init_from "
                         "to the previous stage's workdir")
    codec.require_pixel_space(config, f"stage {config.stage} (distillation)")
    if config.model.get("meta_embed", False):  # the discriminators' trunk (discriminator.trunk_features) reads none
        raise ValueError(f"stage {config.stage}: distillation does not feed the meta-info embedding yet; "
                         "distil a model with config.model.meta_embed=false")
    check_entries(d)
    if config.sampling.schedule not in ("uniform", "flow") or config.sampling.num_steps < 1:
        raise ValueError(f"config.sampling: schedule {config.sampling.schedule!r} (uniform | flow) with "
                         f"num_steps {config.sampling.num_steps} (>= 1)")
    if d.guidance <= 0 or d.teacher_guidance <= 0:
        raise ValueError(f"config.distill: guidance scales must be positive, got {d.guidance}, {d.teacher_guidance}")
    channels = config.model.in_channels // config.input.patch_size**2
    if channels != data_pipelines.channels(config.data):
        raise ValueError(f"config.model.in_channels={config.model.in_channels} does not match "
                         f"{data_pipelines.channels(config.data)}-channel images in {config.input.patch_size}^2 patches")
    check_architecture(config)


def check_entries(d) -> None:
    """config.distill's checkpoint entries: where the student and the teacher come from."""
    if d.student_from not in ("ema", "model"):
        raise ValueError(f"config.distill.student_from={d.student_from!r}: choose ema or model")
    if d.teacher_from not in ("teacher", "ema", "model"):
        raise ValueError(f"config.distill.teacher_from={d.teacher_from!r}: choose teacher, ema or model")


# What must agree with the run a stage starts from (the parameters' shapes and meaning).
ARCHITECTURE = {
    "model": ("in_channels", "out_channels", "num_heads", "head_dim", "depth_double", "depth_single", "mlp_ratio",
              "text_dim", "pooled_dim", "size_embed", "meta_embed", "axes_dims_rope"),
    "text": ("vocab_size", "width", "depth", "num_heads", "mlp_ratio", "max_len"),
    "input": ("key", "patch_size"),
    "data": ("image_size", "max_text_len"),
}


def check_architecture(config) -> None:
    """Fail with the key to fix when the model config differs from the `init_from` run's.

    `init_from` is a workdir or one of its step directories (workdir/checkpoints/N).
    """
    path = epath.Path(config.init_from)
    candidates = [path / "config.json", path.parent.parent / "config.json"]
    found = next((c for c in candidates if c.exists()), None)
    if found is None:
        return  # nothing to compare with; loading the parameters will still check every shape
    source = config_from_json(found)
    for group, keys in ARCHITECTURE.items():
        for key in keys:
            if group not in source or key not in source[group] or key not in config[group]:
                continue  # e.g. the MMDiT's depth_double for a video DiT
            mine, theirs = config[group][key], source[group][key]
            if (list(mine) if isinstance(mine, (tuple, list)) else mine) != theirs:
                raise ValueError(f"config.{group}.{key}={mine!r}, but the init_from run ({found.parent}) was "
                                 f"trained with {theirs!r}; the chain keeps the teacher's architecture "
                                 f"(override --config.{group}.{key}=...)")


class StudentState(nnx.Module):
    """The student (guidance-embedded unless told otherwise: AAPT's causal students sample without
    guidance), its optimizer and EMA, and the frozen teacher."""

    def __init__(self, config, rngs: nnx.Rngs, *, guidance_embed: bool = True):
        self.model = models_generator.build(config, rngs, guidance_embed=guidance_embed)
        self.teacher = freeze(models_generator.build(config, rngs, config.distill.teacher_guidance_embed))
        self.optimizer = make_optimizer(self.model, config.optimizer, config.total_steps)
        self.ema = EMA(self.model, config.ema_decay) if config.ema_decay > 0 else None


# --------------------------------------------------------------------------- stage hooks


def start_ema(state) -> None:
    """Start `state.ema` (when kept) at the freshly loaded `state.model`."""
    if state.ema is not None:
        state.ema.load(jax.tree.map(jnp.copy, nnx.to_pure_dict(nnx.state(state.model, nnx.Param))))


def load_pretrained(state: StudentState, source: dict, config) -> None:
    what = f"config.init_from={config.init_from}"
    d = config.distill
    student_params = pick_params(source, d.student_from, what)
    missing = load_params(state.model, student_params, f"{what} ({d.student_from} -> student)",
                          allow_missing=("guidance_embedder",))
    if missing:
        # A teacher without a guidance embedder: start the new one at zero output, so the
        # student begins exactly as the teacher's conditional branch.
        down = state.model.dit.guidance_embedder.down
        down.kernel[...] = jnp.zeros_like(down.kernel[...])
        down.bias[...] = jnp.zeros_like(down.bias[...])
    start_ema(state)
    load_params(state.teacher, pick_params(source, d.teacher_from, what), f"{what} ({d.teacher_from} -> teacher)")


def sample(state: StudentState, config, rng: jax.Array, batch: dict) -> jax.Array:
    """Images [N, 1, H, W, C] in [-1, 1] from the student (EMA) at its NFE (`config.sampling`)."""
    return generate_pixels(ema_model(state, config.sampling.use_ema), config, rng, batch)


def nfe(config) -> int:
    """Network evaluations per image at sampling time (a true-CFG step counts twice)."""
    return sampler_of(config).nfe
