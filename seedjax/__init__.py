"""seedjax: Seed-family image and video diffusion training in JAX."""

from flax import nnx as _nnx

# The training loop places parameters itself (abstract init -> shardings -> jitted init),
# so variables are created unsharded and carry their logical axis names as metadata only.
_nnx.use_eager_sharding(False)

__version__ = "0.1.0"
