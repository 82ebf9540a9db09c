"""Per-(component, bucket) sample streams and the scheduler that turns them into batches.

A *stream* is a Grain `MapDataset` over positions 0, 1, 2, ... of one mixture component
restricted to one resolution bucket: position -> sample index (a fresh shuffle every
epoch, or a weighted draw for dual-axis sampling) -> loaded and finalized sample. It is
random-access, so this process's slice (`[process_index::process_count]`) and each
prefetch worker's slice are exact and the stream's state is one integer.

`ScheduledBatches` pulls from the streams: global batch g takes its bucket, and each of its
slots its component (by mixture weight within that bucket), from draws seeded by (seed, g)
alone, so every process and every worker agrees on them; a process fills its own slots. Samples
that fail to load are skipped and counted; the counts ride along with the batch under
`_skipped` so that the main process can account for them whatever process decoded them.
"""

from __future__ import annotations

import dataclasses
import zlib

import grain
import numpy as np

from data_pipelines import samples as samples_lib


def stream_seed(seed: int, name: str) -> int:
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % (2**31)


class WeightedDraws:
    """Position -> member index, drawn with replacement by `probs`, fresh draws every epoch."""

    def __init__(self, probs: np.ndarray, seed: int):
        self.probs = np.asarray(probs, np.float64) / np.sum(probs)
        self.seed = seed
        self._draws: dict[int, np.ndarray] = {}  # the current and previous epoch

    def _epoch(self, epoch: int) -> np.ndarray:
        draws = self._draws.get(epoch)
        if draws is None:  # read threads may race here; both compute the same draws
            rng = np.random.default_rng([self.seed, epoch])
            draws = rng.choice(len(self.probs), size=len(self.probs), p=self.probs)
            self._draws = {e: d for e, d in self._draws.items() if e == epoch - 1} | {epoch: draws}
        return draws

    def __call__(self, position: int, _) -> int:
        return int(self._epoch(position // len(self.probs))[position % len(self.probs)])


class LoadSample:
    """(position, member) -> finalized sample, or a skip marker {'_skip': kind, '_where', '_detail'}."""

    def __init__(self, source, members: np.ndarray, bucket: tuple[int, int], layout: samples_lib.Layout):
        self.source, self.members, self.bucket, self.layout = source, members, bucket, layout

    def __call__(self, position: int, member: int) -> dict:
        index = int(self.members[member])
        where = f"{self.source.name}#{index}"
        try:
            raw = self.source.load(index, position)
            return samples_lib.finalize(raw, self.bucket, self.layout, raw.get("where", where))
        except samples_lib.BadSample as e:
            return {"_skip": e.kind, "_where": e.where, "_detail": e.detail}


def make_stream(source, members, weights, bucket, layout, *, seed: int, name: str, process_index: int,
                process_count: int, read_options: grain.ReadOptions) -> grain.IterDataset:
    """The infinite stream of finalized samples of `members` (indices into `source`) for this process."""
    s = stream_seed(seed, name)
    positions = grain.MapDataset.range(len(members))
    if weights is None:
        positions = positions.shuffle(s).repeat()
    else:
        positions = positions.repeat().map_with_index(WeightedDraws(weights, s))
    ds = positions.map_with_index(LoadSample(source, np.asarray(members), bucket, layout))
    return ds[process_index::process_count].to_iter_dataset(read_options)


@dataclasses.dataclass(frozen=True)
class BatchPlan:
    """How batches are drawn: bucket probabilities, and per bucket the streams and their probabilities."""

    bucket_names: tuple[str, ...]
    bucket_probs: tuple[float, ...]
    streams: tuple[tuple[tuple[str, ...], tuple[float, ...]], ...]  # per bucket: (stream names, probs)
    sources: dict  # stream name -> source name (for error messages)


class ScheduledBatches(grain.IterDataset):
    """Local batches drawn from named streams by a seeded schedule (see the module doc)."""

    def __init__(self, streams: dict[str, grain.IterDataset], plan: BatchPlan, batch_size: int, seed: int,
                 process_index: int, process_count: int):
        super().__init__(list(streams.values()))
        self.names = tuple(streams)
        self.plan, self.batch_size, self.seed = plan, batch_size, seed
        self.process_index, self.process_count = process_index, process_count

    def __iter__(self):
        return _ScheduledBatchIterator(self, [p.__iter__() for p in self.parents])

    def __str__(self) -> str:
        return f"ScheduledBatches(streams={self.names}, batch_size={self.batch_size})"


class _ScheduledBatchIterator(grain.DatasetIterator):
    def __init__(self, ds: ScheduledBatches, parents):
        super().__init__(parents)
        self.ds = ds
        self.iters = dict(zip(ds.names, parents))
        self.batches_done = 0

    def _next_valid(self, name: str, skipped: dict) -> dict:
        """Next sample of a stream, skipping (and counting) the ones that failed to load."""
        for _ in range(100_000):
            sample = next(self.iters[name])
            if "_skip" not in sample:
                return sample
            count = skipped.setdefault(sample["_skip"], [0, sample["_where"], sample["_detail"]])
            count[0] += 1
        raise RuntimeError(f"{self.ds.plan.sources[name]}: 100000 samples in a row failed to load; no valid data left")

    def __next__(self) -> dict:
        plan = self.ds.plan
        worker, workers = self._ctx.mp_context.process_index, self._ctx.mp_context.process_count
        # Prefetch worker w of W makes global batches w, w + W, w + 2W, ... (Grain interleaves
        # workers round-robin), so the bucket sequence does not depend on the worker count.
        global_batch = self.batches_done * workers + worker
        bucket = np.random.default_rng([self.ds.seed, global_batch]).choice(len(plan.bucket_names), p=plan.bucket_probs)
        names, probs = plan.streams[bucket]
        # The components of all slots of the global batch are drawn together, so the batch's
        # composition does not depend on how many processes share it.
        slot_rng = np.random.default_rng([self.ds.seed, global_batch, 1])
        picks = slot_rng.choice(len(names), size=self.ds.batch_size * self.ds.process_count, p=probs)
        picks = picks[self.ds.process_index :: self.ds.process_count]
        skipped: dict[str, list] = {}
        rows = [self._next_valid(names[i], skipped) for i in picks]
        batch = {key: np.stack([row[key] for row in rows]) for key in rows[0]}
        batch["_skipped"] = skipped
        self.batches_done += 1
        return batch

    def get_state(self) -> dict:
        return {"batches_done": self.batches_done, "streams": {n: it.get_state() for n, it in self.iters.items()}}

    def set_state(self, state: dict) -> None:
        # Streams are restored by name: after a change of mixture weights (or a new component)
        # the streams that existed continue where they were, new ones start from the beginning.
        self.batches_done = int(state["batches_done"])
        for name, it in self.iters.items():
            if name in state["streams"]:
                it.set_state(state["streams"][name])

    def __str__(self) -> str:
        return f"_ScheduledBatchIterator({self.ds})"


def bucket_plan(component_weights: dict[str, float], counts: dict[str, dict[str, int]], sources: dict) -> BatchPlan:
    """Bucket and stream probabilities from mixture weights and sample counts per (component, bucket).

    A component's weight is split over buckets by its sample counts (integers, identical on
    every process), so all processes draw the same bucket for the same global batch.
    """
    bucket_names = sorted({b for per in counts.values() for b, n in per.items() if n > 0})
    mass = {b: {} for b in bucket_names}
    for comp, per in counts.items():
        total = sum(per.values())
        for b, n in per.items():
            if n > 0:
                mass[b][f"{comp}/{b}"] = component_weights[comp] * n / total
    bucket_mass = np.array([sum(mass[b].values()) for b in bucket_names])
    streams = tuple(
        (tuple(mass[b]), tuple(float(v) for v in np.array(list(mass[b].values())) / sum(mass[b].values())))
        for b in bucket_names
    )
    return BatchPlan(
        bucket_names=tuple(bucket_names),
        bucket_probs=tuple(float(p) for p in bucket_mass / bucket_mass.sum()),
        streams=streams,
        sources=sources,
    )
