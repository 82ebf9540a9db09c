"""A generator's parameters as one safetensors file, optionally int8 weight-only quantized.

This is the parameter format of an export directory (`python -m seedjax.export`): the flat
names are the parameter paths joined by '/' ('dit/double_blocks/0/img/q/kernel'), the values
numpy arrays. `seedjax.inference.load(EXPORT_DIR)` and the StableHLO runner read it; nothing
in it is pickled, so loading it runs no code.

int8 (weight-only, per output channel): a float parameter with at least two axes and
`MIN_QUANTIZED_SIZE` elements is stored as int8 values `name` and float32 scales
`name:scale`, one scale per entry of its last axis (a Linear kernel [in, out] or a conv
kernel [kh, kw, in, out]: per output channel; an embedding table [vocab, dim]: per feature),
with w ~= values * scale and scale = max |w| over the other axes / 127. Biases, norm scales
and small tensors stay float: they are a negligible share of the bytes and the most
sensitive to rounding. Matmuls still run in float: the weights are dequantized where they are
used, so int8 saves storage, transfer and host memory, not FLOPs.
"""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np

from seedjax.train.param_names import flat_names, flatten, unflatten  # noqa: F401  (this format's names)

SCALE_SUFFIX = ":scale"
MIN_QUANTIZED_SIZE = 1024
INT8_MAX = 127.0


# --------------------------------------------------------------------------- int8


def _quantizable(value) -> bool:
    floating = np.issubdtype(value.dtype, np.floating) or value.dtype == jnp.bfloat16
    return floating and value.ndim >= 2 and value.size >= MIN_QUANTIZED_SIZE


def quantize_int8(flat: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per-output-channel symmetric int8 of the large float weights (module docstring); the rest as is."""
    out = {}
    for name, value in flat.items():
        if not _quantizable(value):
            out[name] = value
            continue
        w = np.asarray(value, np.float32)
        scale = np.max(np.abs(w), axis=tuple(range(w.ndim - 1))) / INT8_MAX
        scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
        out[name] = np.clip(np.round(w / scale), -INT8_MAX, INT8_MAX).astype(np.int8)
        out[name + SCALE_SUFFIX] = scale
    return out


def is_quantized(flat: dict) -> bool:
    return any(name.endswith(SCALE_SUFFIX) for name in flat)


def dequantize(flat: dict, dtypes: dict[str, object] | None = None, xp=jnp) -> dict:
    """int8 values * scales -> float (`dtypes[name]`, else float32); works on numpy arrays (xp=np)
    and inside a traced function (xp=jnp: the StableHLO artifact takes the int8 arrays as inputs)."""
    out = {}
    for name, value in flat.items():
        if name.endswith(SCALE_SUFFIX):
            continue
        scale = flat.get(name + SCALE_SUFFIX)
        if scale is not None:
            value = xp.asarray(value).astype(xp.float32) * xp.asarray(scale)
            value = value.astype((dtypes or {}).get(name, xp.float32))
        out[name] = value
    return out


# --------------------------------------------------------------------------- files


def save(path: str, flat: dict[str, np.ndarray], metadata: dict | None = None) -> None:
    from safetensors.numpy import save_file

    save_file({k: np.ascontiguousarray(v) for k, v in flat.items()}, path,
              metadata={"seedjax": json.dumps(metadata or {})})


def load(path: str) -> dict[str, np.ndarray]:
    from safetensors.flax import load_file  # flax, not numpy: keeps bfloat16 readable

    return {k: np.asarray(v) for k, v in load_file(path).items()}
