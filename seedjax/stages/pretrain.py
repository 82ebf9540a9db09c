"""Flow-matching pretraining of the generator (text encoder + MMDiT, `seedjax.models.generator`).

The loss is `seedjax.diffusion.objectives.flow_matching_loss`, the one every velocity-trained
stage reuses (SFT, the regulariser in RLHF, the teachers of distillation).

With `config.model.kind = 'video_dit'` and `config.input.key = 'video'` (or latents of a video
VAE) the same stage trains the video DiT on clips (Seedance's joint T2I / T2V / I2V: `seedjax.diffusion.tasks`).

With `config.diffusion.restore` the video DiT learns to restore: each clip's degraded copy
(data.degradations) conditions every frame (SeedVR; experiments/seedvr/restore.py).

With `data.source = edit_triples` (or your own triples, `edit_jsonl`) the MMDiT learns instruction
editing: each triple's target is denoised with its source images packed after it as clean
references (`seedjax.diffusion.tasks.edit_task`; experiments/seedream/edit.py).

With `config.input.key = 'latent'` the MMDiT denoises cached VAE latents (`data.path`: shards
from `python -m data_pipelines.cli.prepare --vae=WORKDIR`); `data.image_size` stays the pixel size,
and the frozen VAE in `config.input.vae_workdir` decodes samples to pixels for the grids and
the evaluators of `config.evals` (`seedjax.models.codec`).
"""

from __future__ import annotations

import dataclasses

from data_pipelines.core.config import EDIT_SOURCES
from data_pipelines.core.mixtures import components
from data_pipelines.sources.edit_triples import MAX_SOURCES
from seedjax.diffusion import tasks
from seedjax.models import generator
from seedjax.models.geometry import Geometry
from seedjax.train.flow_matching import flow_matching_step, init, load_generator, sample
from seedjax.train.params import latent_factors
from seedjax.train.stage import Stage


def trains_edits(config) -> bool:
    return any(kind in EDIT_SOURCES for kind, _, _ in components(config.data).values())


def flops_per_example(config) -> float:
    shots = int(config.data.video.max_shots) if generator.is_video(config.model) else 1
    geometry = Geometry.of(config)
    if trains_edits(config):  # the references' tokens are in every sequence too
        geometry = dataclasses.replace(geometry, height=geometry.height * (1 + MAX_SOURCES))
    return generator.train_flops_per_example(config, geometry, shots)


def validate_config(config) -> None:
    """The `validate_config` hook (exit 2 before anything runs)."""
    if trains_edits(config) and (config.input.key != "image" or generator.is_video(config.model)):
        raise ValueError("editing data (data.source=edit_triples or edit_jsonl) trains the MMDiT on pixel images: "
                         "set config.input.key=image and an MMDiT config.model")
    if config.input.key not in ("image", "video", "latent"):
        raise ValueError(f"config.input.key must be 'image', 'video' or 'latent', got {config.input.key!r}")
    if config.input.key == "latent":
        latent_factors(config)  # also: a video VAE's latents train the video DiT, an image VAE's the MMDiT
    elif (config.input.key == "video") != generator.is_video(config.model):
        raise ValueError(f"config.input.key={config.input.key!r} does not fit config.model.kind="
                         f"{config.model.get('kind', 'mmdit')!r}: clips (input.key=video) train the video DiT "
                         f"(config.model = video_dit_config(...)), images the MMDiT")
    tasks.validate_restore(config)


STAGE = Stage(init=init, train_step=flow_matching_step, sample=sample, flops_per_example=flops_per_example,
              load_pretrained=load_generator, validate_config=validate_config, reads_edits=True)
