"""Performance bookkeeping: compiled-memory report, device peak FLOP/s, replication check, and the
XLA compiler options of the training step."""

from __future__ import annotations

import logging
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

log = logging.getLogger("seedjax")

REPLICATION_LIMIT_BYTES = 1 << 20

# XLA's CPU backend hands convolutions to YNNPACK by default. Its convolutions, the backward ones
# above all, were most of the VAE step's time: without them (Eigen's) the image VAE's training
# step went from 2.36-2.93 s to 1.51 s (benchmarks/vae_step.py's small size; BENCHMARKS.md, issue
# 20). The list is jaxlib 0.10's default (individual dots and convolutions, reductions) less the
# convolutions, so that dots and reductions stay with YNNPACK: the MMDiT step compiles to the same
# program as with the default. A YNNPACK choice of the user's own in XLA_FLAGS wins.
CPU_COMPILER_OPTIONS = {
    "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"}


def compiler_options() -> dict:
    """Options for `jax.jit(..., compiler_options=...)` of a training step on this backend."""
    if jax.default_backend() != "cpu" or "xla_cpu_experimental_ynn_fusion_type" in os.environ.get("XLA_FLAGS", ""):
        return {}
    return dict(CPU_COMPILER_OPTIONS)


# Dense bf16 peak TFLOP/s per device, by device_kind substring (vendor data sheets).
_PEAK_TFLOPS = {
    "H200": 989.0,
    "H100": 989.0,
    "A100": 312.0,
    "L40S": 362.0,
    "L20": 119.5,
    "TPU v5p": 459.0,
    "TPU v5 lite": 197.0,
    "TPU v5e": 197.0,
    "TPU v4": 275.0,
    "TPU v6": 918.0,
}


class TrainingAborted(RuntimeError):
    """A failure with a one-line cause (non-finite updates, replicated parameters...)."""


def check_replicated_params(abstract_state, shardings, mesh, policy: str) -> None:
    """With fsdp > 1, a parameter over 1 MiB that ends up fully replicated is a layout bug.

    `policy` is 'error' (raise), 'warn' (log loudly) or 'ignore'.
    """
    if policy == "ignore" or mesh.shape.get("fsdp", 1) <= 1:
        return
    offenders = []
    leaves = jax.tree_util.tree_leaves_with_path(abstract_state, is_leaf=lambda x: isinstance(x, nnx.Variable))
    shard_leaves = jax.tree.leaves(shardings)
    for (path, var), sharding in zip(leaves, shard_leaves):
        if not isinstance(var, nnx.Param):
            continue
        value = var.get_value()
        nbytes = int(np.prod(value.shape)) * np.dtype(value.dtype).itemsize
        if nbytes > REPLICATION_LIMIT_BYTES and all(a is None for a in sharding.spec):
            offenders.append(f"{jax.tree_util.keystr(path)} {tuple(value.shape)} ({nbytes / 2**20:.1f} MiB)")
    if not offenders:
        return
    msg = (f"{len(offenders)} parameter(s) over 1 MiB are fully replicated with fsdp={mesh.shape['fsdp']}: "
           f"{'; '.join(offenders[:5])}{' ...' if len(offenders) > 5 else ''} "
           f"(give them logical axis names or set config.sharding.replicated_params=warn)")
    if policy == "error":
        raise TrainingAborted(msg)
    log.warning("WARNING: %s", msg)


def log_compiled(compiled, seconds: float, batch: dict) -> None:
    shapes = ", ".join(f"{k}{tuple(v.shape)}" for k, v in sorted(batch.items()))
    log.info("compiled train step in %.1fs for batch %s", seconds, shapes)
    try:
        mem = compiled.memory_analysis()
    except Exception:  # not every backend reports it
        mem = None
    if mem is not None:
        gib = lambda b: f"{b / 2**30:.3f} GiB"
        log.info("memory per device: arguments %s, outputs %s, temporaries %s, generated code %s",
                 gib(mem.argument_size_in_bytes), gib(mem.output_size_in_bytes),
                 gib(mem.temp_size_in_bytes), gib(mem.generated_code_size_in_bytes))


def peak_tflops_per_device(configured: float) -> float:
    """The peak used for MFU: the configured value, a known accelerator's, or measured (CPU)."""
    if configured > 0:
        return float(configured)
    kind = jax.devices()[0].device_kind
    for name, peak in _PEAK_TFLOPS.items():
        if name.lower() in kind.lower():
            return peak
    if jax.default_backend() == "cpu":
        return measure_matmul_tflops()
    log.warning("unknown device %r: MFU is not reported (set config.peak_tflops_per_device)", kind)
    return 0.0


def measure_matmul_tflops(n: int = 1024, dtype=jnp.float32, repeats: int = 5) -> float:
    """Median float32 matmul throughput of one device, in TFLOP/s (CPU MFU reference)."""
    a = jnp.ones((n, n), dtype)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        f(a).block_until_ready()
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / float(np.median(times)) / 1e12
