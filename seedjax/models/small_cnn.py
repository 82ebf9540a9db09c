"""The small CNN behind the frozen helper networks, its training loop and its on-disk cache.

The digit CNN (`seedjax.train.digit_encoder`: REPA's frozen encoder and the digit classifier
that judges generated images) and the stamp detector (`seedjax.eval.judges.stamps`) are tiny
convolutional networks trained on CPU in well under a minute and then cached as safetensors under
`$SEEDJAX_CACHE` (default `~/.cache/seedjax`), keyed by a hash of everything that determines the
weights (settings and a code version). A file lock makes concurrent processes (pytest-xdist
workers, several stages) train once and share the result.

The judges that shipped configs use ship trained, in `small_cnn_weights/` beside this file, under
the same keys (`python -m seedjax.tools.ship_judges` trains them there): a fresh machine and CI
load them instead of training them (minutes of CPU), and every machine judges with the same
weights. Settings or a code version that no shipped file has are trained and cached as before.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from seedjax.models.layers import Linear

_CONV_NAMES = ("conv_spatial", "conv_spatial", "conv_in", "conv_out")


class SmallCNN(nnx.Module):
    """A 3x3 conv at `first_stride`, then stride-2 3x3 convs (ReLU), a dense feature layer and a head.

    `global_pool` replaces the flatten by global max and mean pooling: the right prior for
    finding a pattern anywhere in the image (stamps), where flatten suits centered digits.
    Strided convolutions instead of max-pooling: on CPU the pooling backward pass
    (select-and-scatter) costs more than the whole network. `features(x)` is the penultimate
    (post-ReLU) layer: the embedding used for Frechet distance and diversity. Inputs are
    [N, image_size, image_size, in_channels].
    """

    def __init__(self, in_channels: int, image_size: int, num_outputs: int, *, channels=(16, 32, 64, 64),
                 feature_dim: int = 64, first_stride: int = 1, global_pool: bool = False, rngs: nnx.Rngs):
        reduction = first_stride * 2 ** (len(channels) - 1)
        if image_size % reduction:
            raise ValueError(f"SmallCNN: image_size {image_size} must be a multiple of {reduction}")
        init = nnx.with_partitioning(nnx.initializers.he_normal(), _CONV_NAMES)
        bias_init = nnx.with_partitioning(nnx.initializers.zeros, ("conv_out",))
        widths = (in_channels,) + tuple(channels)
        self.convs = nnx.List([
            nnx.Conv(widths[i], widths[i + 1], (3, 3), strides=first_stride if i == 0 else 2,
                     kernel_init=init, bias_init=bias_init, rngs=rngs)
            for i in range(len(channels))
        ])
        self.global_pool = global_pool
        flat = 2 * channels[-1] if global_pool else (image_size // reduction) ** 2 * channels[-1]
        self.hidden = Linear(flat, feature_dim, rngs=rngs, names=("conv_out", "embed"),
                             kernel_init=nnx.initializers.he_normal())
        self.head = Linear(feature_dim, num_outputs, rngs=rngs, names=("embed", "vocab"))

    def features(self, x: jax.Array) -> jax.Array:
        for conv in self.convs:
            x = jax.nn.relu(conv(x))
        if self.global_pool:
            x = jnp.concatenate([x.max(axis=(1, 2)), x.mean(axis=(1, 2))], axis=-1)
        return jax.nn.relu(self.hidden(x.reshape(x.shape[0], -1)))

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.head(self.features(x))


# XLA's default CPU code generation for long training loops, whatever cheaper one XLA_FLAGS asks
# for (the tests do): the loop runs thousands of steps, so its run time counts, not its compile.
FULL_CPU_OPTIMIZATION = {"xla_backend_optimization_level": 3, "xla_llvm_disable_expensive_passes": False,
                         "xla_cpu_use_fusion_emitters": True}


def fit(model: nnx.Module, data, make_batch: Callable, loss_fn: Callable, *, steps: int, lr: float, seed: int,
        log_every: int = 0) -> None:
    """Train `model` in place with AdamW and a warmup-cosine schedule.

    make_batch(data, key) -> (inputs, targets) runs inside the jitted step (sampling and
    augmentation on device); `data` is a pytree of arrays passed as an argument (closing over it
    would embed it as a constant, which XLA then spends minutes constant-folding).
    loss_fn(outputs, targets) -> scalar.
    """
    schedule = optax.warmup_cosine_decay_schedule(0.0, lr, max(1, steps // 20), steps, end_value=lr * 0.02)
    optimizer = nnx.Optimizer(model, optax.adamw(schedule, weight_decay=1e-4), wrt=nnx.Param)
    graphdef, state = nnx.split((model, optimizer))

    # A loop of thousands of steps: XLA's full CPU optimisation whatever XLA_FLAGS say (the tests
    # lower the default for their compile-bound tiny runs; here that doubled the training time).
    @functools.partial(jax.jit, donate_argnums=0, compiler_options=FULL_CPU_OPTIMIZATION)
    def step(state, data, key):
        model, optimizer = nnx.merge(graphdef, state)
        inputs, targets = make_batch(data, key)
        loss, grads = nnx.value_and_grad(lambda m: loss_fn(m(inputs), targets))(model)
        optimizer.update(model, grads)
        return nnx.state((model, optimizer)), loss

    data = jax.tree.map(jnp.asarray, data)
    key = jax.random.key(seed)
    start = time.perf_counter()
    for i in range(steps):
        state, loss = step(state, data, jax.random.fold_in(key, i))
        if log_every and (i + 1) % log_every == 0:
            print(f"  step {i + 1}/{steps} loss {float(loss):.4f} ({time.perf_counter() - start:.1f}s)", flush=True)
    trained, _ = nnx.merge(graphdef, state)
    nnx.update(model, nnx.state(trained))


def batched_apply(fn: Callable, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Apply a jitted fn to x in fixed-size chunks (the last one padded) so it compiles once per shape."""
    n = len(x)
    if n == 0:
        raise ValueError("batched_apply: got an empty batch of images")
    chunk = min(batch_size, n)
    outs = []
    for start in range(0, n, chunk):
        part = x[start : start + chunk]
        pad = chunk - len(part)
        if pad:
            part = np.concatenate([part, np.repeat(part[-1:], pad, axis=0)])
        outs.append(np.asarray(fn(part))[: chunk - pad])
    return np.concatenate(outs)


# ----------------------------------------------------------------------------- cache


SHIPPED = Path(__file__).resolve().parent / "small_cnn_weights"


def cache_dir() -> Path:
    return Path(os.environ.get("SEEDJAX_CACHE", "~/.cache/seedjax")).expanduser()


def settings_key(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def _flat_params(model: nnx.Module) -> dict[str, np.ndarray]:
    return {"/".join(map(str, path)): np.asarray(v[...]) for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def _load_params(model: nnx.Module, tensors: dict[str, np.ndarray], path: Path) -> None:
    state = nnx.state(model, nnx.Param)
    flat = nnx.to_flat_state(state)
    expected = {"/".join(map(str, p)) for p, _ in flat}
    if expected != set(tensors):
        raise ValueError(f"{path}: tensors {sorted(set(tensors) ^ expected)} do not match the model; delete the file")
    for p, v in flat:
        name = "/".join(map(str, p))
        want = v.get_value().shape  # (an abstract model's value is a ShapeDtypeStruct)
        if tensors[name].shape != want:
            raise ValueError(f"{path}: tensor {name} has shape {tensors[name].shape}, model wants {want}")
        v.set_value(jnp.asarray(tensors[name]))
    nnx.update(model, state)


@contextlib.contextmanager
def _file_lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def load_or_train(name: str, settings: dict, make: Callable[[], nnx.Module],
                  train: Callable[[nnx.Module], dict]) -> tuple[nnx.Module, dict]:
    """The model `make()` builds, with cached weights for `settings`, trained (and cached) first if needed.

    `train(model)` trains in place and returns metadata (e.g. held-out accuracy) stored next to
    the weights. Returns (model, that metadata (str -> str)). With cached weights the model is
    built abstractly and filled: no initialiser runs (eagerly, each is a compile of its own).
    """
    from safetensors.numpy import load_file, safe_open, save_file

    path = SHIPPED / name / f"{settings_key(settings)}.safetensors"
    if not path.exists():
        path = cache_dir() / name / path.name
    with contextlib.nullcontext() if path.is_relative_to(SHIPPED) else _file_lock(path.with_suffix(".lock")):
        if not path.exists():
            model = make()
            metadata = {k: str(v) for k, v in train(model).items()}
            metadata["settings"] = json.dumps(settings, sort_keys=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
            os.close(fd)
            save_file(_flat_params(model), tmp, metadata=metadata)
            os.replace(tmp, path)
            return model, metadata
    with safe_open(str(path), "np") as f:
        metadata = dict(f.metadata() or {})
    _load_params(model := _abstract(make), load_file(str(path)), path)
    return model, metadata


def _abstract(make: Callable[[], nnx.Module]) -> nnx.Module:
    """`make()` with abstract values. jax.eval_shape, not nnx.eval_shape: judges load inside the
    training loop's mesh, where NNX would read the logical axis names as mesh axes."""
    graphdefs = []

    def state():
        graphdef, values = nnx.split(make())
        graphdefs.append(graphdef)
        return values

    values = jax.eval_shape(state)
    return nnx.merge(graphdefs[0], values)
