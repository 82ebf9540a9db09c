"""Parameter trees <-> flat dicts named by path ('dit/double_blocks/0/img/q/kernel').

The naming of every safetensors file seedjax writes (an export's generator and VAE weights,
`seedjax.inference.weights_file`): path entries joined by '/', in tree order.
"""

from __future__ import annotations

import jax
import numpy as np


def flat_names(tree) -> list[tuple[str, object]]:
    """(name, leaf) for every leaf of a nested dict/list tree, names joined by '/' in tree order."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return [("/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path), leaf) for path, leaf in leaves]


def flatten(tree) -> dict[str, np.ndarray]:
    return {name: np.asarray(leaf) for name, leaf in flat_names(tree)}


def unflatten(flat: dict[str, np.ndarray], template):
    """`template`'s tree (a pure dict of arrays or ShapeDtypeStructs) filled from `flat` by name;
    a missing, extra or misshapen entry is a ValueError naming it."""
    named = flat_names(template)
    missing = [n for n, _ in named if n not in flat]
    extra = sorted(set(flat) - {n for n, _ in named})
    wrong = [f"{n}: {flat[n].shape} != {tuple(t.shape)}" for n, t in named if n in flat and flat[n].shape != t.shape]
    if missing or extra or wrong:
        raise ValueError(f"parameters do not fit the model: missing {missing[:3]}, unexpected {extra[:3]}, "
                         f"shape mismatches {wrong[:3]}")
    treedef = jax.tree_util.tree_structure(template)
    return jax.tree_util.tree_unflatten(treedef, [flat[n] for n, _ in named])
