"""What a stage module gives the training loop, declared once as `STAGE = Stage(...)`.

A stage is a thin module in seedjax/stages/: its state (NNX modules and optimizers), its
train step and the optional hooks below. Declaring them on one object, instead of the loop
probing the module with hasattr, makes a misspelt hook an error at import time (an unknown
keyword) rather than a feature that silently never runs. Evaluation is not a hook: the
evaluators named in `config.evals` (seedjax/eval/<type>.py) read the state and these hooks.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from seedjax.config import ConfigError, import_named


@dataclasses.dataclass(frozen=True, kw_only=True)
class Stage:
    # (config, nnx.Rngs) -> the state module (models, optimizers, EMA)
    init: Callable[..., Any]
    # (state, batch, rng, config) -> metrics; updates the state in place (the loop jits it)
    train_step: Callable[..., dict]
    # (state, config, rng, prompt batch) -> samples [N, F, H, W, C] in [-1, 1]; grids every sample_every,
    # and what the generator evaluators of config.evals sample (seedjax/train/evaluators.py)
    sample: Callable[..., Any] | None = None
    # config -> training FLOPs per example (MFU); None = not counted
    flops_per_example: Callable[..., float] | None = None
    # (state, source tree, config): parameters from config.init_from; None = copy source['model']
    load_pretrained: Callable[..., None] | None = None
    # config -> None, raising ValueError for a config this stage cannot run (before anything is written)
    validate_config: Callable[..., None] | None = None
    # config -> network evaluations per sample; None = the Euler sampler's count at config.sampling
    nfe: Callable[..., int] | None = None
    # Whether its train step reads edit batches (data.source=edit_triples: source, instruction, target)
    reads_edits: bool = False


def load_stage(name: str) -> Stage:
    """The Stage declared by seedjax/stages/<name>.py; ConfigError (exit 2) for an unknown name."""
    module_name = f"seedjax.stages.{name}"
    module = import_named(module_name, f"config.stage: unknown stage {name!r} (no module {module_name})")
    stage = getattr(module, "STAGE", None)
    if not isinstance(stage, Stage):
        raise ConfigError(f"config.stage: {module_name} declares no STAGE = Stage(...)")
    return stage
