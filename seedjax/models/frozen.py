"""Frozen parameters: weights inside a model that no optimizer or gradient ever touches.

A frozen teacher holds its weights in `Frozen` variables instead of `nnx.Param`: every
optimizer in seedjax is built with `wrt=nnx.Param` and every gradient is taken with respect
to `nnx.Param`, so a teacher can be called inside any loss without a gradient or an update
ever reaching it. Frozen variables keep their logical axis names, so the loop shards a
teacher like any model, and they are checkpointed with the rest of the state (a later stage
can take the teacher over from this stage's checkpoint).
"""

from __future__ import annotations

import jax
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
