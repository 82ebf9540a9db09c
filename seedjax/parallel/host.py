"""Bring values computed on a (possibly multi-host) mesh to this process's memory.

A `jax.Array` of a multi-process run spans devices other processes own; `np.asarray` on it
fails unless the array is fully replicated. `to_host` gathers such arrays with
`multihost_utils.process_allgather` (a collective: every process must call it, in the same
order, which holds because every process runs the same sampling and evaluation code) and
returns plain numpy arrays on every process. Only process 0 then writes files.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.experimental import multihost_utils


def to_host(tree):
    """Every `jax.Array` leaf of `tree` as a numpy array holding the whole (global) value."""

    def one(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated:
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x)

    return jax.tree.map(one, tree)
