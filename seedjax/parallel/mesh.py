"""The device mesh from `config.mesh`, and multi-host start-up.

Axes are always ('data', 'fsdp', 'tensor', 'sequence'), in that order, so that the
fastest-varying (most communication-heavy) axes land on neighbouring devices.
"""

from __future__ import annotations

import logging
import os
from typing import Mapping

import jax
import numpy as np

AXES = ("data", "fsdp", "tensor", "sequence")
log = logging.getLogger(__name__)


class MeshError(ValueError):
    """A mesh that cannot be built for the devices at hand (exit code 2)."""


def resolve_mesh_shape(mesh_cfg: Mapping[str, int], num_devices: int) -> dict[str, int]:
    """Fill the one -1 entry and check that the product equals the device count."""
    sizes = {ax: int(mesh_cfg.get(ax, 1)) for ax in AXES}
    unknown = set(mesh_cfg) - set(AXES)
    if unknown:
        raise MeshError(f"config.mesh has unknown axes {sorted(unknown)}; axes are {AXES}")
    fill = [ax for ax, n in sizes.items() if n == -1]
    if len(fill) > 1:
        raise MeshError(f"config.mesh: only one axis may be -1, got {fill}")
    if any(n == 0 or n < -1 for n in sizes.values()):
        raise MeshError(f"config.mesh sizes must be positive or -1, got {sizes}")
    known = int(np.prod([n for n in sizes.values() if n != -1]))
    if fill:
        if num_devices % known:
            raise MeshError(
                f"config.mesh {sizes}: the fixed axes ({known} devices) do not divide the {num_devices} devices"
            )
        sizes[fill[0]] = num_devices // known
    total = int(np.prod(list(sizes.values())))
    if total != num_devices:
        raise MeshError(
            f"config.mesh {sizes} needs {total} devices but {num_devices} are available "
            f"(set one axis to -1 to fill)"
        )
    return sizes


def make_mesh(mesh_cfg: Mapping[str, int], devices=None) -> jax.sharding.Mesh:
    devices = jax.devices() if devices is None else devices
    sizes = resolve_mesh_shape(mesh_cfg, len(devices))
    # Auto axes: GSPMD propagates shardings from the parameter/batch shardings and the
    # activation constraints in `sharding.constrain`; Explicit axes would make every
    # einsum in every model state its output sharding.
    return jax.make_mesh(
        tuple(sizes[a] for a in AXES),
        AXES,
        axis_types=(jax.sharding.AxisType.Auto,) * len(AXES),
        devices=devices,
    )


def check_batch_divisible(batch_size: int, mesh: jax.sharding.Mesh, batch_axes=("data", "fsdp")) -> None:
    n = int(np.prod([mesh.shape[a] for a in batch_axes if a in mesh.shape]))
    if batch_size % n:
        raise MeshError(
            f"config.batch_size={batch_size} is not divisible by the batch-parallel mesh size "
            f"{n} ({' x '.join(f'{a}={mesh.shape[a]}' for a in batch_axes)})"
        )


def process_batch_rows(sharding: jax.sharding.Sharding, global_batch: int) -> tuple[int, int]:
    """The rows [start, stop) of a global batch that this process's devices hold under `sharding`.

    With the batch split over processes each loads its own share; with a tensor or sequence
    axis across processes, processes that hold the same rows must load the same samples."""
    slices = [index[0] for index in sharding.addressable_devices_indices_map((global_batch,)).values()]
    spans = sorted({(sl.start or 0, global_batch if sl.stop is None else sl.stop) for sl in slices})
    start, stop = spans[0][0], spans[-1][1]
    covered = sum(b - a for a, b in spans)
    if covered != stop - start or any(b[0] < a[1] for a, b in zip(spans, spans[1:])):
        raise MeshError(f"this process's devices hold non-contiguous batch rows {spans}; order config.mesh so that "
                        f"each host's devices are neighbours on the batch axes (data, fsdp)")
    return start, stop


def _env_first(*names: str) -> str | None:
    for n in names:
        if os.environ.get(n):
            return os.environ[n]
    return None


def maybe_initialize_distributed(coordinator: str = "", num_processes: int = 0, process_id: int = -1) -> bool:
    """Call `jax.distributed.initialize` when this is one of several processes.

    Sources, first match wins: explicit flags; SEEDJAX_COORDINATOR / SEEDJAX_NUM_PROCESSES /
    SEEDJAX_PROCESS_ID (set by `launch.local`); SLURM (`SLURM_NTASKS` > 1, which JAX's
    own cluster detection reads); SEEDJAX_DISTRIBUTED=1 (set by launch/tpu_vm.sh: every worker
    of a TPU slice, where JAX finds the coordinator from the TPU metadata with no arguments).
    Returns True if the runtime was initialized here.
    """
    coordinator = coordinator or _env_first("SEEDJAX_COORDINATOR") or ""
    num_processes = num_processes or int(_env_first("SEEDJAX_NUM_PROCESSES") or 0)
    process_id = process_id if process_id >= 0 else int(_env_first("SEEDJAX_PROCESS_ID") or -1)

    if num_processes > 1:
        # Only affects the CPU client; must be set before any backend is created.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=coordinator,
            num_processes=num_processes,
            process_id=process_id,
        )
        log.info("distributed: process %d of %d (coordinator %s)", process_id, num_processes, coordinator)
        return True
    if (int(os.environ.get("SLURM_NTASKS", "1")) > 1 or os.environ.get("SEEDJAX_DISTRIBUTED") == "1"
            or os.environ.get("TPU_WORKER_HOSTNAMES", "").count(",") > 0):
        jax.distributed.initialize()  # JAX's cluster auto-detection (SLURM, TPU VM, GKE)
        return True
    return False
