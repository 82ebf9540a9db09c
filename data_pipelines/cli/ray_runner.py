"""`python -m data_pipelines.cli.prepare ... --runner=ray [--ray_address=ADDR]`: the same shards, written by Ray tasks.

The output equals the single-process writers' in prepare.py (same bytes in every record, the same
record at the same place of the same shard, the same header, sizes and skip counts), so a run can
move between runners freely. A record's shard is its rank among the usable samples modulo the
number of shards (shards.ShardWriter's round robin), so no record can be placed before every
earlier sample is known to be usable. Hence the work runs in passes:

1. scan: tasks over contiguous index ranges load every sample (latents: also fit it to its
   bucket) and return only which are usable and the skips, in index order. The driver replays
   the skips through prepare._SkipLog: the same warnings and the same counters, in the same order.
2. images: one task per shard loads its samples again and writes its shard file. The second
   decode costs less than sending every image through the object store to its shard's task.
   latents: VAE actors (each loads the VAE once) encode exactly the batches the single-process
   writer encodes (prepare.latent_batches: a batched encode is bit-exact only for the same batch),
   each call returning its records already split by shard; then one task per shard writes them.
3. the driver writes sizes.npy and metadata.json.

Without an address, a new local Ray instance on this machine is started and shut down at the end;
a process already connected to Ray (ray.init done by the caller) is used as it is. On a cluster
every node needs this package installed, and the source, the VAE workdir and the output directory
at the same path on a shared filesystem (tasks read samples and write shards themselves).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import socket

import numpy as np
import ray

from data_pipelines.cli import prepare
from data_pipelines.core import buckets as buckets_lib
from data_pipelines.core import shards
from data_pipelines.core.samples import BadSample

# Scan ranges: a few per CPU so that one slow range does not hold up the rest, bounded so that a
# failed range is cheap to retry. Latent encode calls: bounded in rows so that one call's records
# stay small in memory, and a few per actor for balance.
_RANGES_PER_CPU = 4
_MAX_RANGE = 4096
_MAX_ROWS_PER_CALL = 1024


@contextlib.contextmanager
def session(address: str = "", num_cpus: int = 0):
    """Ray for one prepare run. Reuses an existing connection (and leaves it open); otherwise
    connects to `address`, or starts a local instance with `num_cpus` (0: all), and shuts down."""
    if address:
        _check_reachable(address)
    if ray.is_initialized():
        yield
        return
    try:
        if address:
            ray.init(address=address, logging_level=logging.WARNING)
        else:
            # A private instance for this run: no usage report sent out, no dashboard (faster start).
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
            ray.init(address="local", num_cpus=num_cpus or None, include_dashboard=False,
                     logging_level=logging.WARNING)
    except ConnectionError as e:
        raise ValueError(f"Ray at {address or 'a new local instance'}: cannot connect ({e})") from None
    try:
        yield
    finally:
        ray.shutdown()


def _check_reachable(address: str) -> None:
    """Ray retries an address where nothing listens for minutes; say so in seconds instead."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not (sep and host and port.isdigit()):
        return  # 'auto' and other forms are Ray's to resolve
    try:
        socket.create_connection((host, int(port)), timeout=10).close()
    except OSError as e:
        raise ValueError(f"--ray_address={address}: cannot connect to {host}:{port} ({e})") from None


def _get(refs):
    """ray.get, except that bad input found in a task (ValueError) is raised as itself, as the
    single-process writer raises it (prepare prints its message and exits 1)."""
    try:
        return ray.get(refs)
    except ray.exceptions.RayTaskError as e:
        if isinstance(e.cause, ValueError):
            raise e.cause from None
        raise


def _cpus() -> int:
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


class _Collected:
    """A skip log for tasks: keeps (kind, where) in order, for the driver to replay."""

    def __init__(self):
        self.items: list[tuple[str, str]] = []

    def add(self, e: BadSample) -> None:
        self.items.append((e.kind, e.where))


class _MustRead:
    """The skip log of the write pass: every sample there was usable in the scan."""

    def add(self, e: BadSample) -> None:
        raise RuntimeError(f"{e.where} was usable when scanned but not when written ({e}); "
                           "did the source change during preparation?")


@ray.remote
def _scan(source, start: int, stop: int, layout=None, bucket_list=None, assigned=None):
    """(usable indices in [start, stop), [(kind, where) of each skip]); latents: also fitted to a bucket."""
    skips, usable = _Collected(), []
    for index, raw in prepare._readable(source, range(start, stop), skips):
        if layout is not None:
            try:
                prepare.latent_row(source, index, raw, bucket_list[int(assigned[index])], layout)
            except BadSample as e:
                skips.add(e)
                continue
        usable.append(index)
    return np.asarray(usable, np.int64), skips.items


def _scan_all(source_ref, total: int, skips, *fit) -> np.ndarray:
    """The usable indices among the first `total`, in order; their skips replayed into `skips`."""
    step = min(_MAX_RANGE, max(1, math.ceil(total / (_RANGES_PER_CPU * _cpus()))))
    refs = [_scan.remote(source_ref, a, min(a + step, total), *fit) for a in range(0, total, step)]
    usable = []
    for part, skipped in _get(refs):
        usable.append(part)
        for kind, where in skipped:
            skips.add(BadSample(kind, where))
    return np.concatenate(usable) if usable else np.zeros(0, np.int64)


class _ShardFile:
    """One ArrayRecord shard, opened as shards.ShardWriter opens it."""

    def __init__(self, path: str):
        from array_record.python.array_record_module import ArrayRecordWriter

        self.writer = ArrayRecordWriter(path, "group_size:1")  # every record addressable, as ShardWriter
        self.sizes: list[tuple[int, int]] = []

    def write(self, data: bytes, size) -> None:
        self.writer.write(data)
        self.sizes.append((int(size[0]), int(size[1])))

    def close(self) -> list[tuple[int, int]]:
        self.writer.close()
        return self.sizes


@ray.remote
def _write_image_shard(source, indices: np.ndarray, path: str) -> list:
    shard = _ShardFile(path)
    for _, raw in prepare._readable(source, (int(i) for i in indices), _MustRead()):
        fields, size = prepare._image_record(raw)
        shard.write(shards.encode_record(fields), size)
    return shard.close()


@ray.remote
def _write_parts(path: str, *parts) -> list:
    """A shard from encoded (record, size) lists, concatenated in the order given."""
    shard = _ShardFile(path)
    for part in parts:
        for data, size in part:
            shard.write(data, size)
    return shard.close()


def _finish(out_dir: str, files: list[str], per_shard: list[list], header: dict) -> dict:
    """sizes.npy and metadata.json exactly as shards.ShardWriter.close writes them."""
    sizes = np.asarray([s for shard in per_shard for s in shard], np.int64).reshape(-1, 2)
    np.save(os.path.join(out_dir, shards.SIZES), sizes)
    header = {"format": shards.FORMAT, **header, "num_records": sum(len(p) for p in per_shard),
              "shards": [{"file": f, "records": len(p)} for f, p in zip(files, per_shard)]}
    with open(os.path.join(out_dir, shards.METADATA), "w") as f:
        json.dump(header, f, indent=2)
    return header


def _shard_files(out_dir: str, num_shards: int) -> list[str]:
    os.makedirs(out_dir, exist_ok=True)  # before any work, as ShardWriter: tasks write into it
    return [f"shard-{i:05d}-of-{num_shards:05d}.array_record" for i in range(num_shards)]


def write_source(source, out_dir: str, *, num_shards: int, limit: int = -1) -> dict:
    """prepare.write_source on Ray: every readable sample as an image record; returns the header."""
    files = _shard_files(out_dir, num_shards)
    skips, total = prepare._SkipLog(source), prepare._total(source, limit)
    source_ref = ray.put(source)  # once, not once per task
    usable = _scan_all(source_ref, total, skips)
    per_shard = _get([_write_image_shard.remote(source_ref, usable[s::num_shards], os.path.join(out_dir, f))
                      for s, f in enumerate(files)])
    return _finish(out_dir, files, per_shard, prepare.images_header(source, total, len(usable), skips.counts))


# A crashed or lost worker is replaced and its call run again: the output is the same either way.
@ray.remote(num_cpus=1, max_restarts=2, max_task_retries=2)
class _Encoder:
    """Holds the VAE (loaded once) and encodes groups of batches into records split by shard."""

    def __init__(self, vae_workdir: str, scaling_factor: float, shift_factor: float):
        from seedjax.train.params import load_codec

        # The driver's factors (possibly estimated there): identical latents, no second estimate.
        self.codec = load_codec(vae_workdir, scaling_factor=scaling_factor, shift_factor=shift_factor)

    def encode(self, source, batches: list, first: int, num_shards: int, layout, bucket_list):
        """`batches`: (bucket, indices) in write order, the first row at write position `first`.
        Returns the row count, then for each shard its (record, size) list in write order."""
        parts = [[] for _ in range(num_shards)]
        position = first
        for bucket, indices in batches:
            rows = []
            for index, raw in prepare._readable(source, indices, _MustRead()):
                try:
                    rows.append(prepare.latent_row(source, index, raw, bucket_list[bucket], layout))
                except BadSample as e:
                    _MustRead().add(e)
            latents = self.codec.encode(np.stack([row["image"] for row in rows]))
            for row, latent in zip(rows, latents):
                parts[position % num_shards].append((shards.encode_record(prepare.latent_fields(row, latent)),
                                                     latent.shape[:2]))
                position += 1
        return (position - first, *parts)


def _group(batches: list, target_rows: int) -> list[list]:
    """Consecutive batches gathered into calls of about `target_rows` rows (at least one batch)."""
    calls, current, rows = [], [], 0
    for batch in batches:
        current.append(batch)
        rows += len(batch[1])
        if rows >= target_rows:
            calls.append(current)
            current, rows = [], 0
    return calls + [current] if current else calls


def write_latents(source, out_dir: str, codec, data_cfg, *, vae_workdir: str, num_shards: int, limit: int = -1,
                  batch_size: int = 64) -> dict:
    """prepare.write_latents on Ray. `codec` is the driver's load_codec(vae_workdir):
    the header and the checks come from it; the actors load the same VAE with its factors."""
    channels, layout, bucket_list = prepare.latent_layout(source, codec, data_cfg)
    assigned = buckets_lib.assign_buckets(source.sizes(), bucket_list)
    files = _shard_files(out_dir, num_shards)
    skips, total = prepare._SkipLog(source), prepare._total(source, limit)
    source_ref, assigned_ref = ray.put(source), ray.put(assigned)
    usable = _scan_all(source_ref, total, skips, layout, bucket_list, assigned_ref)

    batches = [(int(assigned[group[0]]), group) for group in
               prepare.latent_batches(((int(assigned[i]), int(i)) for i in usable), batch_size)]
    num_actors = max(1, min(_cpus(), len(batches)))
    target = min(_MAX_ROWS_PER_CALL, max(batch_size, math.ceil(len(usable) / (_RANGES_PER_CPU * num_actors))))
    calls = _group(batches, target)
    encoders = [_Encoder.remote(vae_workdir, float(codec.scaling_factor), float(codec.shift_factor))
                for _ in range(min(num_actors, len(calls)))]
    counts, parts, first = [], [], 0
    for k, call in enumerate(calls):
        out = encoders[k % len(encoders)].encode.options(num_returns=num_shards + 1).remote(
            source_ref, call, first, num_shards, layout, bucket_list)
        counts.append(out[0])
        parts.append(out[1:])
        first += sum(len(indices) for _, indices in call)
    _get(counts)  # every encode done (or its error raised) before the actors give their CPUs back
    for encoder in encoders:
        ray.kill(encoder)
    per_shard = _get([_write_parts.remote(os.path.join(out_dir, f), *[p[s] for p in parts])
                      for s, f in enumerate(files)])
    return _finish(out_dir, files, per_shard,
                   prepare.latents_header(source, channels, codec, total, len(usable), skips.counts))
