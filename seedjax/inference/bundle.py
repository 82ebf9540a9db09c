"""The inference bundle: the EMA generator of any stage's checkpoint, and how it samples.

`load(workdir_or_step)` reads the run's config.json and, of its checkpoint, only the
generator's parameters (the EMA's when the run kept one and samples with it, else the
model's), straight onto the shardings of a given mesh. Optimizers, teachers, fake scores,
discriminators and reward models are never built and their arrays never read: the bundle of
a distillation checkpoint costs what its generator costs.

What a bundle holds: the config, the generator (text encoder + MMDiT; a guidance embedder when
the checkpoint has one), its geometry, the sampler (steps, schedule, CFG or embedded guidance:
`config.sampling`, `config.distill.guidance`) and its NFE, and the frozen VAE of a latent run.
"""

from __future__ import annotations

import dataclasses
import os
import re

import jax
import numpy as np
from flax import nnx

from data_pipelines.core.tokenizer import tokenize
from seedjax.config import workdir_config
from seedjax.diffusion.sampling import Sampler
from seedjax.inference import exported, weights_file
from seedjax.models import generator
from seedjax.models.codec import LatentCodec
from seedjax.models.geometry import Geometry
from seedjax.parallel import mesh as mesh_lib
from seedjax.parallel import sharding as sharding_lib
from seedjax.train import checkpoint as ckpt_lib
from seedjax.train.generation import generate_pixels, sampler_of
from seedjax.train.params import latent_codec, to_pixels


class BundleError(ValueError):
    """A path that holds no loadable generator (exit 2 in the tools)."""


@dataclasses.dataclass(frozen=True)
class Bundle:
    workdir: str
    step_path: str  # the checkpoint the parameters came from
    config: object
    model: generator.DiffusionModel
    geometry: Geometry
    sampler: Sampler
    entry: str  # 'ema' or 'model': which parameters were loaded
    codec: LatentCodec | None  # the frozen VAE of a latent-space run

    @property
    def nfe(self) -> int:
        return self.sampler.nfe

    @property
    def pixel_shape(self) -> tuple[int, int, int, int]:
        """(F, H, W, C) of a sample in pixels: the geometry's, or a latent run's decoded by its VAE."""
        x = jax.ShapeDtypeStruct((1, *self.geometry.shape), np.float32)
        return tuple(jax.eval_shape(lambda v: to_pixels(v, self.config), x).shape[1:])

    def with_sampling(self, steps: int = 0, guidance: float = 0.0, frames: int = 0,
                      reference_guidance: float = 0.0) -> "Bundle":
        """The same generator at other sampling settings (0 = keep): steps, the guidance scale (a
        guidance-embedded student's embedded scale, else the CFG scale), a video's frames and an
        editing run's guidance on its reference images (sampling.reference_scale)."""
        config = self.config.copy_and_resolve_references()
        if frames > 0 and not generator.is_video(config.model):
            raise BundleError(f"frames={frames}: this run generates images (config.model is an MMDiT)")
        if frames > 0 and self.codec is not None and (frames - 1) % self.codec.temporal_factor:
            raise BundleError(f"frames={frames}: this run's video VAE makes 1 + k x {self.codec.temporal_factor} "
                              f"frames")
        with config.unlocked():
            if frames > 0:
                config.data.video.num_frames = frames
            if steps > 0:
                config.sampling.num_steps = steps
            if reference_guidance > 0:
                config.sampling.reference_scale = reference_guidance
            if guidance > 0:
                if "distill" in config and config.sampling.guidance_scale == 1.0:
                    config.distill.guidance = guidance
                else:
                    config.sampling.guidance_scale = guidance
        return dataclasses.replace(self, config=config, sampler=sampler_of(config), geometry=Geometry.of(config))

    def prompts(self, captions: list[str]) -> dict:
        """Tokenized captions (+ target size) in the batch layout the generator takes. For a video
        model a caption "shot 1: ...; shot 2: ..." is a multi-shot prompt: one caption per shot,
        the frames split evenly between the shots."""
        length = self.config.data.max_text_len
        tokens, mask = tokenize(captions, length)
        size = np.full((len(captions), 2), self.config.data.image_size, np.int32)  # pixels, also for latent runs
        batch = {"tokens": tokens, "text_mask": mask, "target_size": size}
        if not self.model.is_video:
            return batch
        shots = [split_shots(c) for c in captions]
        most = max(len(s) for s in shots)
        shot_tokens = np.zeros((len(captions), most, length), np.int32)
        shot_mask = np.zeros((len(captions), most, length), bool)
        frames = self.geometry.frames
        frame_shot = np.zeros((len(captions), frames), np.int32)
        for i, parts in enumerate(shots):
            shot_tokens[i, : len(parts)], shot_mask[i, : len(parts)] = tokenize(parts, length)
            frame_shot[i] = np.arange(frames) * len(parts) // frames
        return batch | {"shot_tokens": shot_tokens, "shot_mask": shot_mask, "frame_shot": frame_shot}

    def generate_fn(self):
        """(params, batch, rng) -> pixels [N, F, H, W, C] in [-1, 1], and the params: parameters
        are an argument, not constants of the compiled function (`seedjax.eval.samples.generate_all`)."""
        graphdef, params = nnx.split(self.model)
        config, sampler = self.config, self.sampler
        return (lambda p, b, r: generate_pixels(nnx.merge(graphdef, p), config, r, b, sampler)), params

    def generate(self, batch: dict, rng: jax.Array) -> jax.Array:
        fn, params = self.generate_fn()
        return jax.jit(fn)(params, batch, rng)


def split_shots(caption: str) -> list[str]:
    """'shot 1: a red 3 moving left; shot 2: a blue 5 moving up' -> one caption per shot
    (the moving-digit data's multi-shot format); any other caption is one shot."""
    parts = re.split(r"(?:^|;)\s*shot \d+:\s*", caption.strip())
    parts = [p.strip() for p in parts if p.strip()]
    return parts if len(parts) > 1 and caption.strip().startswith("shot ") else [caption]


def run_config(path: str):
    """The config.json of the run that `path` (a workdir or one of its step directories) belongs to."""
    path = os.path.abspath(path) if "://" not in path else path
    for candidate in (path, os.path.dirname(os.path.dirname(path.rstrip("/")))):
        config = workdir_config(candidate)
        if config is not None:
            return candidate, config
    raise BundleError(f"{path}: no config.json (not a seedjax workdir or one of its checkpoints/<step>)")


def _generator_entry(saved, config, use_ema: bool) -> tuple[str, dict]:
    """('ema' | 'model', the saved parameter metadata of the generator to load)."""
    model = saved.get("model") if hasattr(saved, "get") else None
    if not model or "dit" not in model or "text" not in model:
        raise BundleError(f"stage {config.get('stage')!r}: its checkpoint holds no text-to-image generator "
                          f"(entries: {sorted(saved)})")
    ema = saved.get("ema")
    if use_ema and config.sampling.get("use_ema", True) and ema and "params" in ema:
        return "ema", ema["params"]
    return "model", model


def _abstract_generator(config, guidance_embed: bool, mesh):
    """(graphdef, abstract state, pure dict of ShapeDtypeStructs carrying their shardings on `mesh`)."""
    rules = sharding_lib.rules_from_config(config.sharding.rules)
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: generator.build(config, nnx.Rngs(0), guidance_embed)))
    with jax.set_mesh(mesh), sharding_lib.axis_rules(rules):
        shardings = sharding_lib.state_shardings(abstract, mesh, rules)
    target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          ckpt_lib.pure(abstract), ckpt_lib.pure(shardings))
    return graphdef, abstract, target


def load(path: str, mesh: jax.sharding.Mesh | None = None, use_ema: bool = True) -> Bundle:
    """The generator of the run at `path` (a workdir: its latest checkpoint; or workdir/checkpoints/N),
    or of an export directory (`python -m seedjax.export --formats=bundle`).

    `mesh`: where the parameters go (default: a mesh over every device from the run's
    `config.mesh`; an export directory's, every device on the data axis); they are read straight
    onto their shardings under the run's sharding rules.
    """
    if exported.is_export_dir(path):
        return _load_export(path, mesh)
    workdir, config = run_config(path)
    step_path = path if os.path.basename(os.path.normpath(path)).isdigit() else workdir
    try:
        saved = ckpt_lib.saved_tree(step_path)
    except FileNotFoundError as e:
        raise BundleError(str(e)) from None
    entry, params_meta = _generator_entry(saved, config, use_ema)
    guidance_embed = "guidance_embedder" in params_meta["dit"] and bool(params_meta["dit"]["guidance_embedder"])
    graphdef, abstract, target = _abstract_generator(config, guidance_embed, mesh or mesh_lib.make_mesh(config.mesh))
    where = ("ema", "params") if entry == "ema" else ("model",)
    nested = target
    for key in reversed(where):
        nested = {key: nested}
    try:
        restored = ckpt_lib.restore_part(step_path, nested)
    except (ValueError, KeyError) as e:
        raise BundleError(f"{step_path}: the generator's parameters do not load ({e})") from None
    for key in where:
        restored = restored[key]
    nnx.replace_by_pure_dict(abstract, restored)
    model = nnx.merge(graphdef, abstract)
    codec = latent_codec(config) if config.input.key == "latent" else None
    return Bundle(workdir, str(ckpt_lib.state_dir(step_path).parent), config, model, Geometry.of(config),
                  sampler_of(config), entry, codec)


def _load_export(path: str, mesh) -> Bundle:
    """An export directory's generator: config.json + params.safetensors (int8 ones dequantized)."""
    try:
        config, flat, entry = exported.read(path)
    except (ValueError, OSError, KeyError) as e:
        raise BundleError(f"{path}: not a loadable export ({e})") from None
    guidance_embed = any(name.startswith("dit/guidance_embedder/") for name in flat)
    mesh = mesh or mesh_lib.make_mesh({"data": -1, "fsdp": 1, "tensor": 1, "sequence": 1})
    graphdef, abstract, target = _abstract_generator(config, guidance_embed, mesh)
    dtypes = {name: leaf.dtype for name, leaf in weights_file.flat_names(target)}
    try:
        values = weights_file.unflatten(weights_file.dequantize(flat, dtypes, xp=np), target)
    except ValueError as e:
        raise BundleError(f"{path}: {e}") from None
    nnx.replace_by_pure_dict(abstract, jax.tree.map(lambda v, t: jax.device_put(v, t.sharding), values, target))
    codec = latent_codec(config) if config.input.key == "latent" else None
    return Bundle(path, path, config, nnx.merge(graphdef, abstract), Geometry.of(config), sampler_of(config),
                  entry, codec)
