"""Logical axis names -> mesh axes, in one place.

Modules name the axes of their parameters and activations with *logical* names
('embed', 'mlp', 'heads', 'batch', ...). `config.sharding.rules` maps each logical
name to mesh axes. The rules table is the only thing to edit to change how a model
is laid out over `config.mesh`.

Rules in a config are strings so they can be overridden from the command line:
`--config.sharding.rules.embed=fsdp`, `--config.sharding.rules.batch=data,fsdp`,
`--config.sharding.rules.mlp=` (empty: replicated).
"""

from __future__ import annotations

import contextlib
import threading
from typing import Mapping, Sequence

import jax
from jax.sharding import NamedSharding, PartitionSpec as P

from seedjax.schema.training import DEFAULT_RULES  # logical name -> mesh axes (config.sharding.rules' defaults)


_local = threading.local()


def rules_from_config(rules_cfg: Mapping[str, str] | None) -> dict[str, tuple[str, ...]]:
    """Parse a config rules table (name -> 'a,b') into name -> tuple of mesh axes."""
    merged = dict(DEFAULT_RULES)
    if rules_cfg:
        merged.update(dict(rules_cfg))
    return {k: tuple(a.strip() for a in v.split(",") if a.strip()) for k, v in merged.items()}


@contextlib.contextmanager
def axis_rules(rules: Mapping[str, tuple[str, ...]]):
    """Make `rules` the active table for `constrain` and `logical_to_spec`."""
    old = getattr(_local, "rules", None)
    _local.rules = dict(rules)
    try:
        yield
    finally:
        _local.rules = old


def active_rules() -> dict[str, tuple[str, ...]]:
    rules = getattr(_local, "rules", None)
    return rules if rules is not None else rules_from_config(None)


def logical_to_spec(names: Sequence[str | None] | None, rules=None, mesh=None) -> P:
    """('batch', 'seq', None) -> PartitionSpec(('data','fsdp'), 'sequence', None).

    Mesh axes of size 1 and axes the mesh does not have are dropped, and a mesh axis
    is used at most once per spec (the first logical name that asks for it wins).
    """
    if names is None:
        return P()
    rules = active_rules() if rules is None else rules
    mesh = mesh if mesh is not None else _current_mesh()
    used: set[str] = set()
    out = []
    for name in names:
        if name is None:
            out.append(None)
            continue
        if name not in rules:
            raise KeyError(f"logical axis {name!r} has no sharding rule; add it to DEFAULT_RULES (seedjax/schema/training.py)")
        axes = []
        for ax in rules[name]:
            if mesh is not None and (ax not in mesh.shape or mesh.shape[ax] == 1):
                continue
            if ax in used:
                continue
            used.add(ax)
            axes.append(ax)
        out.append(tuple(axes) if len(axes) > 1 else (axes[0] if axes else None))
    return P(*out)


def _current_mesh():
    mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty:
        return None
    return mesh


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    """The one activation-sharding helper: constrain `x` to its logical layout.

    Outside a mesh context (plain eager use, tests of single modules) it is a no-op.
    """
    mesh = _current_mesh()
    if mesh is None:
        return x
    if len(names) != x.ndim:
        raise ValueError(f"constrain: {len(names)} names {tuple(names)} for an array of shape {x.shape}")
    return jax.lax.with_sharding_constraint(x, logical_to_spec(names, mesh=mesh))


def param_value(var) -> jax.Array:
    """A parameter's value as a layer uses it: gathered along the batch-parallel mesh axes.

    Parameters are stored sharded over 'fsdp' (and 'tensor'); every device needs them whole
    along the axes its batch shard is split on, so the layer gathers them here, at the use
    (their gradients are reduce-scattered back), and keeps only e.g. the 'tensor' split.
    Being explicit also avoids an XLA SPMD-partitioner bug (JAX 0.10.2): on a
    data x fsdp x tensor mesh, leaving the partitioner to reconcile an 'fsdp'-sharded kernel
    with a ('data', 'fsdp') batch gave wrong values (tests/test_sharding.py). Outside a
    mesh context, or for a variable without logical names, it is just the value.
    """
    x = var[...]
    names = var.get_metadata().get("out_sharding") or var.get_metadata().get("sharding_names")
    mesh = _current_mesh()
    if mesh is None or not names:
        return x
    batch = logical_to_spec(("batch",), mesh=mesh)[0]
    batch = set(batch if isinstance(batch, tuple) else (batch,))
    spec = []
    for entry in logical_to_spec(names, mesh=mesh):
        axes = tuple(a for a in (entry if isinstance(entry, tuple) else (entry,)) if a is not None and a not in batch)
        spec.append(axes if len(axes) > 1 else (axes[0] if axes else None))
    return jax.lax.with_sharding_constraint(x, divisible_spec(P(*spec), x.shape, mesh))


def divisible_spec(spec: P, shape: Sequence[int], mesh) -> P:
    """Drop mesh axes from `spec` on dimensions they do not divide (small params)."""
    out = []
    for dim, entry in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        if entry is None:
            out.append(None)
            continue
        axes = entry if isinstance(entry, tuple) else (entry,)
        kept, size = [], 1
        for ax in axes:
            if dim % (size * mesh.shape[ax]) == 0:
                kept.append(ax)
                size *= mesh.shape[ax]
        out.append(tuple(kept) if len(kept) > 1 else (kept[0] if kept else None))
    return P(*out)


def state_shardings(abstract_state, mesh, rules):
    """NamedShardings for an (abstract) nnx.State from its variables' logical names.

    Variables annotated with `nnx.with_partitioning(init, names)` carry their names in
    `out_sharding` metadata; unannotated variables (counters, RNG keys) are replicated.
    """
    from flax import nnx

    def one(var):
        names = None
        if isinstance(var, nnx.Variable):
            meta = var.get_metadata()
            names = meta.get("out_sharding") or meta.get("sharding_names")
            value = var.get_value() if hasattr(var, "get_value") else var[...]
        else:
            value = var
        shape = getattr(value, "shape", ())
        if not names or len(shape) == 0:
            return NamedSharding(mesh, P())
        spec = logical_to_spec(names, rules=rules, mesh=mesh)
        return NamedSharding(mesh, divisible_spec(spec, shape, mesh))

    return jax.tree.map(one, abstract_state, is_leaf=lambda x: isinstance(x, nnx.Variable))
