"""The networks. Every module that creates NNX variables imports this package first (layers,
the models, and through them the stages, distillation, evaluation and tools), so the Flax
setting below holds before any variable exists."""

from flax import nnx as _nnx

# The training loop places parameters itself (abstract init -> shardings -> jitted init),
# so variables are created unsharded and carry their logical axis names as metadata only.
_nnx.use_eager_sharding(False)
