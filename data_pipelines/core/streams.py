"""Per-(component, bucket) sample streams and the scheduler that turns them into batches.

A *stream* is a Grain `MapDataset` over positions 0, 1, 2, ... of one mixture component
restricted to one resolution bucket: position -> sample index (a fresh shuffle every
epoch, or a weighted draw for dual-axis sampling) -> loaded and finalized sample. It is
random-access, so a stream's state is one integer: how many positions have been used.
With data.degradations on, a stream also degrades each sample (techniques/degradations.py),
drawn from (stream seed, position): a pure function of the position, so resume stays exact.

`ScheduledBatches` reads the streams: global batch g takes its bucket, and each of its slots
its stream (by mixture weight within that bucket), from draws seeded by (seed, g) alone. Slot j
gets the next unused position of its stream in slot order, so the global batch — content and
order — is the same whatever the number of processes or prefetch workers; a process loads the
rows [start, stop) of the global batch that its devices hold (by default process p of P loads
[p * B/P, (p + 1) * B/P)); processes whose devices hold the same rows (a tensor or sequence
axis across hosts) load the same samples. A sample that fails to load is replaced by a deterministic spare
(the same for every process) and counted; the counts ride along with the batch under
`_skipped` so that the main process can account for them whatever process decoded them.
"""

from __future__ import annotations

import dataclasses
import zlib
from concurrent.futures import ThreadPoolExecutor

import grain
import numpy as np

from data_pipelines.core import clips as clips_lib
from data_pipelines.core import samples as samples_lib
from data_pipelines.techniques.degradations import DegradationConfig, DegradePairs


def stream_seed(seed: int, name: str) -> int:
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % (2**31)


class EpochDraws:
    """Position -> member index, from a fresh per-epoch array of member indices (`draw`), seeded by
    (seed, epoch) alone. The current and the previous epoch are kept: read threads near an epoch's
    end may still ask for the previous one."""

    def __init__(self, size: int, seed: int):
        self.size, self.seed = size, seed
        self._draws: dict[int, np.ndarray] = {}

    def draw(self, rng: np.random.Generator) -> np.ndarray:
        raise NotImplementedError

    def _epoch(self, epoch: int) -> np.ndarray:
        draws = self._draws.get(epoch)
        if draws is None:  # read threads may race here; both compute the same draws
            draws = self.draw(np.random.default_rng([self.seed, epoch]))
            self._draws = {e: d for e, d in self._draws.items() if e == epoch - 1} | {epoch: draws}
        return draws

    def __call__(self, position: int, _) -> int:
        return int(self._epoch(position // self.size)[position % self.size])


class WeightedDraws(EpochDraws):
    """Members drawn with replacement by `probs` (dual-axis sampling), fresh draws every epoch."""

    def __init__(self, probs: np.ndarray, seed: int):
        super().__init__(len(probs), seed)
        self.probs = np.asarray(probs, np.float64) / np.sum(probs)

    def draw(self, rng: np.random.Generator) -> np.ndarray:
        return rng.choice(self.size, size=self.size, p=self.probs)


class Permutations(EpochDraws):
    """Every member once per epoch, in a fresh order every epoch."""

    def draw(self, rng: np.random.Generator) -> np.ndarray:
        return rng.permutation(self.size)


# Grain's `shuffle` maps each index through `index_shuffle`, whose cost grows as the set shrinks
# (grain 0.2.18, one call: 335 us for 133 members, 52 us for 1,000, 8 us from 65,536 on): with a
# few hundred images per bucket it took 15% of a folder source's loading time. Smaller sets are
# shuffled with one numpy permutation per epoch instead; larger ones keep O(1) memory.
PERMUTE_BELOW = 65_536


def finalize(raw: dict, bucket: tuple[int, ...], layout: samples_lib.Layout, where: str) -> dict:
    """A raw sample -> one row: an image row (samples.finalize), for video layouts a clip row, and
    for an edit triple (it has an `instruction`, not a caption) an edit row (samples.finalize_edit)."""
    if layout.video:
        return clips_lib.finalize_clip(raw, bucket, layout, where)
    if "instruction" in raw:
        return samples_lib.finalize_edit(raw, bucket, layout, where)
    return samples_lib.finalize(raw, bucket, layout, where)


class LoadSample:
    """(position, member) -> finalized sample, or a skip marker {'_skip': kind, '_where', '_detail'}."""

    def __init__(self, source, members: np.ndarray, bucket: tuple[int, ...], layout: samples_lib.Layout):
        self.source, self.members, self.bucket, self.layout = source, members, bucket, layout

    def __call__(self, position: int, member: int) -> dict:
        index = int(self.members[member])
        where = f"{self.source.name}#{index}"
        try:
            # Video sources decode or render the bucket's frames, so they are told the bucket.
            if self.layout.video:
                raw = self.source.load(index, position, self.bucket)
            else:
                raw = self.source.load(index, position)
            return finalize(raw, self.bucket, self.layout, raw.get("where", where))
        except samples_lib.BadSample as e:
            return {"_skip": e.kind, "_where": e.where, "_detail": e.detail}


def make_stream(source, members, weights, bucket, layout, *, seed: int, name: str,
                degradations: DegradationConfig | None = None) -> grain.MapDataset:
    """The infinite, random-access stream of finalized samples of `members` (indices into `source`);
    with `degradations`, each sample also gets `degraded_image` (clips: `degraded_video`)."""
    s = stream_seed(seed, name)
    positions = grain.MapDataset.range(len(members))
    if weights is None and len(members) >= PERMUTE_BELOW:
        positions = positions.shuffle(s).repeat()
    elif weights is None:
        positions = positions.repeat().map_with_index(Permutations(len(members), s))
    else:
        positions = positions.repeat().map_with_index(WeightedDraws(weights, s))
    stream = positions.map_with_index(LoadSample(source, np.asarray(members), bucket, layout))
    if degradations is not None:
        # random_map seeds each element from (seed, index), and the index is the stream position:
        # a sample drawn again in a later epoch gets a fresh degradation, a resumed run the same
        # ones. A seed of its own keeps the draws apart from the shuffle's.
        stream = stream.random_map(DegradePairs(degradations), seed=stream_seed(seed, f"{name}#degradations"))
    return stream


# A sample that fails to load at position x is replaced by the one at x + k * SPARE_STRIDE
# (k = 1, 2, ...): deterministic, so every process agrees on the global batch.
SPARE_STRIDE = 104_729
MAX_SPARES = 1000


@dataclasses.dataclass(frozen=True)
class BatchPlan:
    """How batches are drawn: bucket probabilities, and per bucket the streams and their probabilities."""

    bucket_names: tuple[str, ...]
    bucket_probs: tuple[float, ...]
    streams: tuple[tuple[tuple[str, ...], tuple[float, ...]], ...]  # per bucket: (stream names, probs)
    sources: dict  # stream name -> source name (for error messages)


class ScheduledBatches(grain.IterDataset):
    """Local batches drawn from named streams by a seeded schedule (see the module doc)."""

    def __init__(self, streams: dict[str, grain.MapDataset], plan: BatchPlan, global_batch_size: int, seed: int,
                 rows: tuple[int, int], read_threads: int = 1):
        super().__init__()
        self.streams = streams
        self.names = tuple(streams)
        self.plan, self.global_batch_size, self.seed = plan, global_batch_size, seed
        self.rows = (int(rows[0]), int(rows[1]))  # this process's rows [start, stop) of every global batch
        if not 0 <= self.rows[0] < self.rows[1] <= global_batch_size:
            raise ValueError(f"rows {rows} are not a slice of a global batch of {global_batch_size}")
        self.read_threads = max(int(read_threads), 1)
        self.worker, self.workers = 0, 1

    def set_slice(self, sl: slice, sequential_slice: bool = False) -> None:
        """Grain's prefetch worker `sl.start` of `sl.step` (Grain calls this on each worker's copy)."""
        self.worker, self.workers = sl.start or 0, sl.step or 1

    def __iter__(self):
        return _ScheduledBatchIterator(self)

    def __str__(self) -> str:
        return f"ScheduledBatches(streams={self.names}, global_batch_size={self.global_batch_size}, rows={self.rows})"


class _ScheduledBatchIterator(grain.DatasetIterator):
    def __init__(self, ds: ScheduledBatches):
        super().__init__()
        self.ds = ds
        self.batches_done = 0  # batches this iterator (worker) has produced
        self.used = {name: 0 for name in ds.names}  # positions used per stream by global batches < counted_to
        self.counted_to = 0
        self._pool = ThreadPoolExecutor(ds.read_threads) if ds.read_threads > 1 else None

    def _slots(self, global_batch: int) -> list[str]:
        """The stream of every slot of a global batch (the same on every process and worker)."""
        plan = self.ds.plan
        bucket = np.random.default_rng([self.ds.seed, global_batch]).choice(len(plan.bucket_names), p=plan.bucket_probs)
        names, probs = plan.streams[bucket]
        picks = np.random.default_rng([self.ds.seed, global_batch, 1]).choice(
            len(names), size=self.ds.global_batch_size, p=probs)
        return [names[i] for i in picks]

    def _load(self, name: str, position: int) -> tuple[dict, list]:
        """The sample at `position` of a stream, or its first spare that loads; plus the failures."""
        failures = []
        for k in range(MAX_SPARES):
            sample = self.ds.streams[name][position + k * SPARE_STRIDE]
            if "_skip" not in sample:
                return sample, failures
            failures.append((sample["_skip"], sample["_where"], sample["_detail"]))
        raise RuntimeError(f"{self.ds.plan.sources[name]}: {MAX_SPARES} samples in a row failed to load; "
                           f"no valid data left")

    def __next__(self) -> dict:
        worker, workers = self.ds.worker, self.ds.workers
        # Prefetch worker w of W makes global batches w, w + W, w + 2W, ... (Grain interleaves
        # workers round-robin); positions used by the other workers' batches are replayed.
        global_batch = self.batches_done * workers + worker
        for g in range(self.counted_to, global_batch):
            for name in self._slots(g):
                self.used[name] += 1
        slots = self._slots(global_batch)
        positions, seen = [], {}
        for name in slots:
            positions.append(self.used[name] + seen.get(name, 0))
            seen[name] = seen.get(name, 0) + 1
        for name, n in seen.items():
            self.used[name] += n
        self.counted_to = global_batch + 1

        start, stop = self.ds.rows
        mine = list(zip(slots[start:stop], positions[start:stop]))
        loaded = list(self._pool.map(lambda a: self._load(*a), mine)) if self._pool else [self._load(*a) for a in mine]
        skipped: dict[str, list] = {}
        for _, failures in loaded:
            for kind, where, detail in failures:
                skipped.setdefault(kind, [0, where, detail])[0] += 1
        rows = [sample for sample, _ in loaded]
        batch = {key: np.stack([row[key] for row in rows]) for key in rows[0]}
        batch["_skipped"] = skipped
        self.batches_done += 1
        return batch

    def get_state(self) -> dict:
        return {"batches_done": self.batches_done, "counted_to": self.counted_to, "used": dict(self.used)}

    def set_state(self, state: dict) -> None:
        # Streams are restored by name: after a change of mixture weights (or a new component)
        # the streams that existed continue where they were, new ones start from the beginning.
        self.batches_done = int(state["batches_done"])
        self.counted_to = int(state["counted_to"])
        self.used = {name: int(state["used"].get(name, 0)) for name in self.ds.names}

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
