"""Frozen teachers and loading parameters from another run's checkpoint by path.

A frozen teacher holds its weights in `Frozen` variables instead of `nnx.Param`: every
optimizer in seedjax is built with `wrt=nnx.Param` and every gradient is taken with respect
to `nnx.Param`, so a teacher can be called inside any loss without a gradient or an update
ever reaching it. Frozen variables keep their logical axis names, so the loop shards a
teacher like any model, and they are checkpointed with the rest of the state (a later stage
can take the teacher over from this stage's checkpoint).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


class Frozen(nnx.Variable):
    """A parameter that is never trained (a frozen teacher or a frozen discriminator backbone)."""


def _is_variable(x) -> bool:
    return isinstance(x, nnx.Variable)


def freeze(module: nnx.Module) -> nnx.Module:
    """The same module with every `nnx.Param` turned into a `Frozen` variable (metadata kept)."""
    graphdef, state = nnx.split(module)
    frozen = jax.tree.map(
        lambda v: Frozen(v[...], **v.get_metadata()) if isinstance(v, nnx.Param) else v, state, is_leaf=_is_variable)
    return nnx.merge(graphdef, frozen)


def _key(path) -> tuple[str, ...]:
    # Checkpoints name list entries '0', '1', ...; live modules use ints. Compare as strings.
    return tuple(str(p) for p in path)


def load_params(module: nnx.Module, tree: dict, what: str, allow_missing: tuple[str, ...] = ()) -> list[str]:
    """Copy the arrays of a pure nested dict into `module`'s parameters (Param or Frozen), by path.

    Every parameter of `module` must be in `tree` with the same shape, except those whose path
    contains a name in `allow_missing` (left as initialised; their paths are returned). Entries
    of `tree` the module does not have are an error too: a silent partial load is how a
    distilled model ends up half-random. `what` names the source in error messages.
    """
    source = {_key(p): v for p, v in nnx.traversals.flatten_mapping(tree).items()}
    targets = [(p, v) for p, v in nnx.to_flat_state(nnx.state(module, nnx.Any(nnx.Param, Frozen)))]
    missing, seen = [], set()
    for path, var in targets:
        key = _key(path)
        if key not in source:
            if any(name in key for name in allow_missing):
                missing.append("/".join(key))
                continue
            raise ValueError(f"{what}: parameter {'/'.join(key)} is missing from the checkpoint")
        value = source[key]
        if tuple(np.shape(value)) != tuple(var[...].shape):
            raise ValueError(f"{what}: parameter {'/'.join(key)} has shape {tuple(np.shape(value))} in the checkpoint, "
                             f"the model expects {tuple(var[...].shape)}")
        # A fresh buffer each time: the loop donates the state, and two variables loaded from
        # the same checkpoint array (student and teacher, model and EMA) must not alias.
        var[...] = jnp.array(value, dtype=var[...].dtype, copy=True)
        seen.add(key)
    extra = sorted("/".join(k) for k in source if k not in seen)
    if extra:
        raise ValueError(f"{what}: the checkpoint has {len(extra)} parameter(s) the model does not, e.g. {extra[0]} "
                         f"(a model config that differs from the run it is loaded from?)")
    return missing


def pick_params(source: dict, entry: str, what: str) -> dict:
    """The parameter tree named `entry` ('model', 'ema', 'teacher', 'fake_score', ...) of a saved state."""
    if entry == "ema":
        if not source.get("ema"):
            raise ValueError(f"{what}: the checkpoint has no EMA ('ema' entry); it has {sorted(source)}")
        return source["ema"]["params"]
    if entry not in source or not source[entry]:
        raise ValueError(f"{what}: the checkpoint has no {entry!r} entry; it has {sorted(source)}")
    return source[entry]
