"""`config.evals`: build the run's evaluators once, by name, and say when each is due.

Like big_vision's evaluators/common.py: every entry `config.evals.<name>` names a module by its
`type` (`seedjax/eval/<type>.py`), whose `Evaluator(config, **options)` class gets the entry's
other keys as keyword arguments, and whose `run(state, stage, rng)` yields (metric, value)
pairs, written as `<prefix><metric>`. Keys every entry has (defaults in seedjax/schema/evals.py):

    type     the evaluator module
    every    cadence in steps, and the last step; -1 = config.eval_every, 0 = never
    prefix   metric prefix ('eval/')

The module is imported by name (importlib): seedjax/train sits below seedjax/eval, which may not
be imported from here statically. An unknown type, an option its Evaluator does not take, or an
entry its Evaluator refuses (a ValueError) is a ConfigError: exit 2 before anything runs. An
entry that never runs (every 0, or -1 with eval_every 0) is checked for its type and options
only: it is not built, so what its Evaluator would refuse (digit judges on your own images)
does not stop a run that does not evaluate.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from typing import Any

import ml_collections

from seedjax.config import ConfigError, import_named

PACKAGE = "seedjax.eval"
COMMON_KEYS = ("type", "every", "prefix")


@dataclasses.dataclass
class ScheduledEvaluator:
    """One built `config.evals` entry."""

    name: str
    evaluator: Any
    every: int  # resolved, > 0
    prefix: str

    def due(self, step: int, total_steps: int) -> bool:
        return self.every > 0 and (step % self.every == 0 or step == total_steps)

    def run(self, state, stage, rng) -> dict[str, float]:
        return {f"{self.prefix}{k}": v for k, v in self.evaluator.run(state, stage, rng)}


def evaluator_class(type_name: str, where: str) -> type:
    """The `Evaluator` class of `seedjax.eval.<type_name>`; ConfigError for an unknown type."""
    module_name = f"{PACKAGE}.{type_name}"
    if not isinstance(type_name, str) or not re.fullmatch(r"[a-z][a-z0-9_]*", type_name):
        raise ConfigError(f"{where}.type: {type_name!r} is not an evaluator type (a module name in seedjax/eval/)")
    module = import_named(module_name, f"{where}.type: unknown evaluator type {type_name!r} (no module {module_name})")
    cls = getattr(module, "Evaluator", None)
    if not isinstance(cls, type):
        raise ConfigError(f"{where}.type: {module_name} is not an evaluator (it declares no Evaluator class)")
    return cls


def option_names(cls: type) -> list[str]:
    """The options an Evaluator takes: the keyword arguments of its __init__ after `config`."""
    params = list(inspect.signature(cls.__init__).parameters.values())[2:]  # self, config
    return [p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]


def build(config) -> list[ScheduledEvaluator]:
    """Every `config.evals` entry that runs, built (constructing an Evaluator is cheap: no data,
    no device)."""
    evals = config.get("evals") or {}
    built = []
    for name, entry in evals.items():
        where = f"config.evals.{name}"
        if not isinstance(entry, (ml_collections.ConfigDict, dict)) or "type" not in entry:
            raise ConfigError(f"{where}: an evaluator entry needs a type (dict(type=..., every=..., prefix=...))")
        cls = evaluator_class(entry["type"], where)
        options = {k: v for k, v in entry.items() if k not in COMMON_KEYS}
        known = option_names(cls)
        for key in options:
            if key not in known:
                raise ConfigError(f"{where}.{key}: unknown option of evaluator type {entry['type']!r} "
                                  f"(its options: {', '.join(known) or 'none'})")
        every = int(entry.get("every", -1))
        if every < -1:
            raise ConfigError(f"{where}.every must be >= -1 (-1 = config.eval_every, 0 = never), got {every}")
        every = int(config.eval_every) if every == -1 else every
        if every == 0:
            continue
        try:
            evaluator = cls(config, **options)
        except ValueError as e:
            raise ConfigError(f"{where}: {e}") from None
        built.append(ScheduledEvaluator(name, evaluator, every, str(entry.get("prefix", "eval/"))))
    return built


def check(config) -> None:
    """`build` for config validation: a ConfigError names the entry and key to fix."""
    build(config)
