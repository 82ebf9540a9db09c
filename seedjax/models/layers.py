"""Shared building blocks for every seedjax model (DiTs, VAE, text encoder, reward models).

Conventions kept by everything here:
- Parameters are stored in float32 and carry logical axis names (see
  `seedjax/parallel/sharding.py::DEFAULT_RULES`); `dtype` is the *compute* dtype that
  inputs and weights are cast to for the matmul.
- Normalisations always compute in float32 and return the input's dtype.
- Linear kernels are [in_features, out_features] (the transpose of torch's `weight`).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from seedjax.parallel.sharding import param_value

Initializer = Callable[..., jax.Array]

DEFAULT_KERNEL_INIT = nnx.initializers.xavier_uniform()
ZEROS = nnx.initializers.zeros_init()
ONES = nnx.initializers.ones_init()

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "silu": jax.nn.silu,
    "relu": jax.nn.relu,
}


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def compute_dtype(name: str) -> jnp.dtype:
    """'float32' | 'bfloat16' | 'float16' -> jnp dtype, with a clear error otherwise."""
    if name not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"dtype must be 'float32', 'bfloat16' or 'float16', got {name!r}")
    return jnp.dtype(name)


def next_key(stream: nnx.RngStream) -> jax.Array:
    """The key `stream()` returns (the stream's key folded with its count; the count advanced).

    Written out because of the count's update: Flax's indexed set (`count[...] += 1`) compares
    the new value's sharding with the old one's, and a tracer, which has none, answers with an
    error message whose origin JAX finds by walking every equation traced so far. Once per
    parameter, model init traced that way grew with the square of the parameter count (4 s of
    a tiny distillation stage). `set_value` replaces the value without that comparison."""
    key = jax.random.fold_in(stream.key[...], stream.count[...])
    stream.count.set_value(stream.count[...] + 1)
    return key


def param(rngs: nnx.Rngs, init: Initializer, shape: Sequence[int], names: Sequence[str | None]) -> nnx.Param:
    """A float32 parameter of `shape` whose axes carry the logical `names`."""
    if len(names) != len(shape):
        raise ValueError(f"param: {len(names)} logical names {tuple(names)} for shape {tuple(shape)}")
    return nnx.Param(nnx.with_partitioning(init, tuple(names))(next_key(rngs.params), tuple(shape), jnp.float32))


class Linear(nnx.Module):
    """y = x @ kernel + bias, computed in `dtype`.

    `names` = (logical name of the input axis, logical name of the output axis), e.g.
    ('embed', 'mlp') for an up-projection; the bias takes the output name.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        rngs: nnx.Rngs,
        names: tuple[str | None, str | None] = ("embed", "embed"),
        use_bias: bool = True,
        dtype: jnp.dtype = jnp.float32,
        kernel_init: Initializer = DEFAULT_KERNEL_INIT,
        bias_init: Initializer = ZEROS,
    ):
        self.in_features, self.out_features, self.dtype = in_features, out_features, dtype
        self.kernel = param(rngs, kernel_init, (in_features, out_features), names)
        self.bias = param(rngs, bias_init, (out_features,), names[1:]) if use_bias else None

    def __call__(self, x: jax.Array) -> jax.Array:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"Linear expects last dim {self.in_features}, got input of shape {x.shape}")
        # param_value gathers the kernel over the batch (data, fsdp) axes before the dot; without it
        # XLA mis-partitions this dot on data x fsdp x tensor meshes (see sharding.param_value).
        y = jnp.dot(x.astype(self.dtype), param_value(self.kernel).astype(self.dtype))
        if self.bias is not None:
            y = y + param_value(self.bias).astype(self.dtype)
        return y


class Embed(nnx.Module):
    """Token embedding table [num_embeddings, features] (logical names ('vocab', 'embed'))."""

    def __init__(self, num_embeddings: int, features: int, *, rngs: nnx.Rngs, dtype: jnp.dtype = jnp.float32):
        self.num_embeddings, self.dtype = num_embeddings, dtype
        self.embedding = param(rngs, nnx.initializers.normal(0.02), (num_embeddings, features), ("vocab", "embed"))

    def __call__(self, ids: jax.Array) -> jax.Array:
        return jnp.take(param_value(self.embedding), ids, axis=0).astype(self.dtype)


def _normalize_f32(x: jax.Array, eps: float, subtract_mean: bool) -> jax.Array:
    x = x.astype(jnp.float32)
    if subtract_mean:
        x = x - jnp.mean(x, axis=-1, keepdims=True)
    return x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + eps)


class RMSNorm(nnx.Module):
    """x / sqrt(mean(x^2) + eps) * scale, in float32 (torch.nn.RMSNorm semantics)."""

    def __init__(self, dim: int, *, rngs: nnx.Rngs, eps: float = 1e-6, use_scale: bool = True):
        self.eps = eps
        self.scale = param(rngs, ONES, (dim,), ("norm",)) if use_scale else None

    @jax.named_scope("norm")  # named scopes label the ops in profiles (benchmarks/profile_step.py)
    def __call__(self, x: jax.Array) -> jax.Array:
        y = _normalize_f32(x, self.eps, subtract_mean=False)
        if self.scale is not None:
            y = y * self.scale[...]
        return y.astype(x.dtype)


class LayerNorm(nnx.Module):
    """LayerNorm over the last axis in float32; affine scale/bias optional (off for adaLN)."""

    def __init__(
        self,
        dim: int,
        *,
        rngs: nnx.Rngs,
        eps: float = 1e-6,
        use_scale: bool = False,
        use_bias: bool = False,
    ):
        self.eps = eps
        self.scale = param(rngs, ONES, (dim,), ("norm",)) if use_scale else None
        self.bias = param(rngs, ZEROS, (dim,), ("norm",)) if use_bias else None

    @jax.named_scope("norm")
    def __call__(self, x: jax.Array) -> jax.Array:
        y = _normalize_f32(x, self.eps, subtract_mean=True)
        if self.scale is not None:
            y = y * self.scale[...]
        if self.bias is not None:
            y = y + self.bias[...]
        return y.astype(x.dtype)


class MLP(nnx.Module):
    """up -> activation -> down. Also the two-layer conditioning embedders (activation 'silu').

    `names` = logical names of (input, hidden, output) axes.
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        out_features: int,
        *,
        rngs: nnx.Rngs,
        activation_name: str = "gelu_tanh",
        names: tuple[str | None, str | None, str | None] = ("embed", "mlp", "embed"),
        dtype: jnp.dtype = jnp.float32,
        out_kernel_init: Initializer = DEFAULT_KERNEL_INIT,
    ):
        self.act = activation(activation_name)
        self.up = Linear(in_features, hidden_features, rngs=rngs, names=names[:2], dtype=dtype)
        self.down = Linear(
            hidden_features, out_features, rngs=rngs, names=names[1:], dtype=dtype, kernel_init=out_kernel_init
        )

    @jax.named_scope("mlp")
    def __call__(self, x: jax.Array) -> jax.Array:
        return self.down(self.act(self.up(x)))


def timestep_embedding(
    t: jax.Array,
    dim: int,
    *,
    flip_sin_to_cos: bool = True,
    downscale_freq_shift: float = 0.0,
    scale: float = 1.0,
    max_period: float = 10000.0,
) -> jax.Array:
    """Sinusoidal embedding of t [B] -> [B, dim] in float32.

    Same as diffusers' `get_timestep_embedding`; the defaults (cos first, no frequency
    shift) are the ones Flux uses. Note Flux feeds t * 1000, not t in [0, 1].
    """
    if t.ndim != 1:
        raise ValueError(f"timestep_embedding expects a 1-D array of timesteps, got shape {t.shape}")
    half = dim // 2
    exponent = -math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / (half - downscale_freq_shift)
    angles = scale * t.astype(jnp.float32)[:, None] * jnp.exp(exponent)[None, :]
    sin, cos = jnp.sin(angles), jnp.cos(angles)
    emb = jnp.concatenate([cos, sin] if flip_sin_to_cos else [sin, cos], axis=-1)
    if dim % 2:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb


class Modulation(nnx.Module):
    """adaLN modulation: silu(cond) -> Linear -> `num_chunks` vectors of size `dim`.

    Zero-initialised (adaLN-Zero): every shift, scale and gate starts at 0, so a residual
    block gated by it starts as the identity. Chunks come back in the order the weight
    stores them (e.g. shift, scale, gate, ... for Flux's AdaLayerNormZero).
    """

    def __init__(
        self, cond_dim: int, dim: int, num_chunks: int, *, rngs: nnx.Rngs, dtype: jnp.dtype = jnp.float32
    ):
        self.num_chunks = num_chunks
        self.linear = Linear(
            cond_dim, num_chunks * dim, rngs=rngs, names=("embed", "modulation"), dtype=dtype, kernel_init=ZEROS
        )

    @jax.named_scope("modulation")
    def __call__(self, cond: jax.Array) -> tuple[jax.Array, ...]:
        return tuple(jnp.split(self.linear(jax.nn.silu(cond)), self.num_chunks, axis=-1))


@jax.named_scope("modulation")
def modulate(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
    """x [B, L, D] * (1 + scale[:, None]) + shift[:, None]."""
    return x * (1 + scale[:, None, :]) + shift[:, None, :]
