"""MMDiT parameter layouts: unrolled block stacks <-> stacked (`model.scan_layers`).

Unrolled: `double_blocks/0/...`, `double_blocks/1/...`; stacked: `double_blocks/...` with a
leading layer axis. Functions work on pure nested dicts, as `nnx.to_pure_dict` and orbax
restores give them (list entries '0', '1', ... or ints). `match_block_layout` converts a
parameter tree from another run to the layout of the model it is loaded into.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from seedjax.models.mmdit import BLOCK_STACKS, is_scanned


def _is_index(key) -> bool:
    return isinstance(key, (int, np.integer)) or (isinstance(key, str) and key.isdigit())


def _layout(subtree) -> str | None:
    """'unrolled', 'stacked', or None (empty: both layouts agree) for a block stack's subtree."""
    if not isinstance(subtree, Mapping) or not subtree:
        return None
    return "unrolled" if all(_is_index(k) for k in subtree) else "stacked"


def _stack(subtree: Mapping) -> dict:
    layers_ = [subtree[k] for k in sorted(subtree, key=int)]
    if [int(k) for k in sorted(subtree, key=int)] != list(range(len(layers_))):
        raise ValueError(f"stack_block_params: block entries {sorted(subtree, key=int)} are not 0..{len(layers_) - 1}")

    def stack(*xs):
        return np.stack(xs) if all(isinstance(x, np.ndarray) for x in xs) else jnp.stack(xs)

    return jax.tree.map(stack, *layers_)


def _unstack(subtree: Mapping, int_keys: bool) -> dict:
    depth = int(np.shape(jax.tree.leaves(subtree)[0])[0])
    return {(i if int_keys else str(i)): jax.tree.map(lambda x: x[i], subtree) for i in range(depth)}


def _convert(tree, layout_of):
    """Copy of the nested dict `tree` with every block stack converted to `layout_of(path, subtree)`
    ('stacked', 'unrolled' or None = leave as is)."""

    def walk(node, path):
        if not isinstance(node, Mapping):
            return node
        out = {}
        for key, value in node.items():
            here = (*path, key)
            if str(key) in BLOCK_STACKS and isinstance(value, Mapping):
                have, want = _layout(value), layout_of(here, value)
                if have == "unrolled" and want == "stacked":
                    value = _stack(value)
                elif have == "stacked" and want == "unrolled":
                    value = _unstack(value, want_int_keys(here))
                out[key] = value
            else:
                out[key] = walk(value, here)
        return out

    want_int_keys = getattr(layout_of, "int_keys", lambda path: False)
    return walk(tree, ())


def stack_block_params(tree: Mapping) -> dict:
    """A parameter tree with every unrolled block stack (`double_blocks/0/...`) stacked on a
    leading layer axis (`double_blocks/...`), the layout of a scan_layers model. Nested trees
    (e.g. a state with model/dit/double_blocks) are converted wherever the stacks are; other
    entries are kept (not copied)."""
    return _convert(tree, lambda path, value: "stacked")


def unstack_block_params(tree: Mapping, *, int_keys: bool = False) -> dict:
    """Inverse of `stack_block_params`: stacked block stacks become `double_blocks/'0'/...`
    (string keys, as checkpoints name list entries; `int_keys=True` for live-module ints)."""
    layout_of = lambda path, value: "unrolled"
    layout_of.int_keys = lambda path: int_keys
    return _convert(tree, layout_of)


def _pure(target) -> Mapping:
    if isinstance(target, nnx.Module):
        target = nnx.state(target)
    if isinstance(target, nnx.State):
        return nnx.to_pure_dict(target)
    return target


def match_block_layout(tree: Mapping, target: Any) -> dict:
    """`tree` (a pure parameter dict) with its block stacks in the layout `target` uses.

    `target`: a model or any module holding one (its own parameters decide, stack by stack,
    at the same paths), an nnx.State or pure dict of such a module, an MMDiT config (its
    scan_layers decides, for every stack in `tree`), or a bool (True = stacked). Stacks
    already in the right layout, and trees without block stacks, pass through unchanged.
    """
    if isinstance(target, (bool, np.bool_)):
        want = "stacked" if target else "unrolled"
        return _convert(tree, lambda path, value: want)
    if isinstance(target, (ml_collections.ConfigDict, ml_collections.FrozenConfigDict)) or (
            isinstance(target, Mapping) and "depth_double" in target):
        return match_block_layout(tree, is_scanned(target))
    reference = _pure(target)

    def lookup(path):
        node = reference
        for key in path:
            if not isinstance(node, Mapping):
                return None, None
            matches = [k for k in node if str(k) == str(key)]
            if not matches:
                return None, None
            node = node[matches[0]]
        return node, path

    def layout_of(path, value):
        node, _ = lookup(path)
        return _layout(node)

    def int_keys(path):
        node, _ = lookup(path)
        return isinstance(node, Mapping) and any(isinstance(k, (int, np.integer)) for k in node)

    layout_of.int_keys = int_keys
    return _convert(tree, layout_of)
