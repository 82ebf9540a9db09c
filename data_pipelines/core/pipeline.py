"""The training and evaluation entry points: config -> sources -> streams -> batches.

    it = make_train_iterator(config.data, global_batch_size=64, seed=0,
                             process_index=jax.process_index(), process_count=jax.process_count())
    batch = next(it)            # dict of numpy arrays, leading axis = local batch
    state = it.get_state()      # JSON-serializable; it.set_state(state) resumes exactly
    it.counters()               # {'samples': ..., 'skipped_<kind>': ...} for metrics

With data.degradations.enabled, training and eval rows also carry `degraded_image` (video:
`degraded_video`), a degraded copy of the clean one (SeedVR2 restoration pairs).
"""

from __future__ import annotations

import atexit
import logging
import weakref

import grain
import numpy as np

from data_pipelines.core import buckets as buckets_lib
from data_pipelines.core import clips as clips_lib
from data_pipelines.core import config as config_lib
from data_pipelines.core import streams as streams_lib
from data_pipelines.core.config import SOURCES
from data_pipelines.core.mixtures import components, layout_for
from data_pipelines.core.shards import ShardSource
from data_pipelines.sources.digits import DigitsSource
from data_pipelines.sources.edit_triples import EditTripleSource, edit_config
from data_pipelines.sources.user_edits import EditManifestSource
from data_pipelines.sources.folders import FolderSource, ManifestSource
from data_pipelines.sources.moving_digit_source import MovingDigitsSource
from data_pipelines.sources.reward_pairs import open_reward_source
from data_pipelines.sources.scene_source import SceneSource
from data_pipelines.sources.videos import VideoFolderSource, VideoManifestSource
from data_pipelines.techniques import dual_axis
from data_pipelines.techniques.curation import filter_members
from data_pipelines.techniques.degradations import DegradePairs

# Eval rows draw their degradations from (seed, row, this): apart from other draws of the same seed.
_EVAL_DEGRADATIONS = 0xDE6

log = logging.getLogger("data_pipelines")


def open_source(kind: str, path: str, data_cfg, *, split: str, seed: int):
    """A random-access source object (see sources/digits.py, DigitsSource, for the interface)."""
    if kind not in SOURCES:
        raise ValueError(f"data.source: unknown source {kind!r}; use one of {', '.join(SOURCES)}")
    if kind == "digits":
        return DigitsSource(split, data_cfg.image_size, seed)
    if kind == "digit_scenes":
        return SceneSource(data_cfg, split=split, seed=seed)
    if kind == "reward_pairs":
        return open_reward_source(path, open_source, data_cfg, split=split, seed=seed)
    if kind == "moving_digits":
        return MovingDigitsSource(data_cfg, split=split, seed=seed)
    if kind == "edit_triples":
        return EditTripleSource(edit_config(data_cfg), split=split, seed=seed,
                                num_samples=int(data_cfg.edits.num_samples))
    if not path:
        raise ValueError(f"data.path: source {kind!r} needs a path")
    if kind == "folder":
        return FolderSource(path)
    if kind == "jsonl":
        return ManifestSource(path)
    if kind == "edit_jsonl":
        return EditManifestSource(path)
    if kind == "video_folder":
        return VideoFolderSource(path, data_cfg, seed=seed)
    if kind == "video_jsonl":
        return VideoManifestSource(path, data_cfg, seed=seed)
    return ShardSource(path, max_text_len=data_cfg.max_text_len)


def _bucket_members(source, data_cfg) -> dict[tuple[int, ...], np.ndarray]:
    """Sample indices of a source per resolution bucket (latent sources: per latent shape;
    video sources: per (frames, height, width) bucket, see core/clips.py)."""
    sizes = source.sizes()
    if getattr(source, "video", False) and not source.latent:
        return clips_lib.members(sizes, clips_lib.video_buckets(data_cfg), source.fixed_buckets)
    if source.latent:
        shapes = [tuple(s) for s in sizes]
        return {b: np.flatnonzero([s == b for s in shapes]) for b in sorted(set(shapes))}
    bucket_list = buckets_lib.parse_buckets(data_cfg.buckets, data_cfg.image_size)
    assigned = buckets_lib.assign_buckets(sizes, bucket_list)
    return {b: np.flatnonzero(assigned == i) for i, b in enumerate(bucket_list) if np.any(assigned == i)}


def _bucket_mass(source, data_cfg, members: dict) -> dict[str, float]:
    """How much of a component each bucket gets: its sample count, or data.video.bucket_weights
    (video sources; latent shards map each pixel bucket to its latent shape with the header's factors)."""
    weights = clips_lib.bucket_weights(data_cfg) if getattr(source, "video", False) else None
    if weights is None:
        return {buckets_lib.bucket_name(b): len(idx) for b, idx in members.items()}
    if source.latent:
        vae = source.meta["vae"]
        weights = {clips_lib.latent_bucket(b, vae["temporal_factor"], vae["spatial_factor"]): w
                   for b, w in weights.items()}
    unknown = [buckets_lib.bucket_name(b) for b in members if b not in weights]
    if unknown:
        raise ValueError(f"data.video.bucket_weights: {source.name} has clips of shape {', '.join(unknown)}, "
                         f"which data.video.buckets does not list")
    return {buckets_lib.bucket_name(b): weights[b] for b in members}


def _check_has_valid_sample(source, members: dict, layout) -> None:
    """Fail at start, naming the path, when not one sample of a source loads."""
    for bucket, idx in members.items():
        loader = streams_lib.LoadSample(source, idx, bucket, layout)
        for position in range(len(idx)):
            if "_skip" not in loader(position, position):
                return
    raise ValueError(f"{source.name}: no valid sample (all {len(source)} failed to load or were dropped)")


def _report_scan_skips(source) -> dict[str, int]:
    counts = {}
    for kind, (count, where) in source.scan_skips.items():
        log.warning("data: skipped %d sample(s) of %s while scanning %s; first: %s", count, kind, source.name, where)
        counts[f"scan_skipped_{kind}"] = count
    return counts


def _ensure_flags_parsed() -> None:
    """Grain's worker processes read absl flags; a program that is not an absl app has not parsed them."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


class TrainIterator:
    """The training batches of this process, with exact resume and skip counters."""

    def __init__(self, dataset: grain.IterDataset, scan_counts: dict[str, int]):
        self._iterator = iter(dataset)
        self._counts = {"samples": 0, **scan_counts}
        self._reported: set[str] = set()
        # A program that exits without close() would leave the read-ahead thread loading a sample
        # while the interpreter tears down under it (seen as "terminate called without an active
        # exception", exit -6). Closing at exit stops and joins it first; a weak reference keeps
        # the hook from holding the iterator alive.
        ref = weakref.ref(self)
        self._close_at_exit = lambda: ref() is not None and ref().close()
        atexit.register(self._close_at_exit)

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        # Batches from worker processes arrive in shared memory; plain arrays release it now.
        batch = {k: v if k == "_skipped" or type(v) is np.ndarray else np.array(v) for k, v in next(self._iterator).items()}
        for kind, (count, where, detail) in batch.pop("_skipped").items():
            key = f"skipped_{kind}"
            self._counts[key] = self._counts.get(key, 0) + count
            if kind not in self._reported:
                self._reported.add(kind)
                log.warning("data: skipping samples with %s; first: %s%s", kind, where, f" ({detail})" if detail else "")
        self._counts["samples"] += len(batch["tokens"])
        return batch

    def counters(self) -> dict[str, int]:
        return dict(self._counts)

    def get_state(self) -> dict:
        return {"pipeline": self._iterator.get_state(), "counters": dict(self._counts)}

    def set_state(self, state: dict) -> None:
        self._iterator.set_state(state["pipeline"])
        self._counts = dict(state["counters"])

    def close(self) -> None:
        atexit.unregister(self._close_at_exit)
        self._iterator.close()


def _degradations(sources: dict, data_cfg):
    """data.degradations as a DegradationConfig (None when off), after checking the sources have pixels."""
    degradations = config_lib.degradation_config(data_cfg)
    latent = [s.name for s in sources.values() if s.latent]
    if degradations is not None and latent:
        raise ValueError(f"data.degradations.enabled: degradations need pixels; {', '.join(latent)} "
                         f"hold latents")
    return degradations


def _component_streams(name: str, source, data_cfg, layout, *, seed: int, classifier_features=None,
                       degradations=None) -> tuple[dict, dict]:
    """One component's streams (one per resolution bucket) and its sample count per bucket."""
    members = _bucket_members(source, data_cfg)
    if (getattr(source, "video", False) or getattr(source, "edits", False)) and \
            (data_cfg.filter or data_cfg.dual_axis.enabled):
        raise ValueError(f"{source.name}: data.filter and data.dual_axis work on images; not on video sources or "
                         "edit triples yet")
    if data_cfg.filter:
        members = filter_members(source, members, data_cfg.filter)
    _check_has_valid_sample(source, members, layout)
    weights = None
    if data_cfg.dual_axis.enabled:
        weights = dual_axis.weights_for(source, data_cfg, seed=seed, classifier_features=classifier_features)
    streams, counts = {}, _bucket_mass(source, data_cfg, members)
    for bucket, idx in members.items():
        bname = buckets_lib.bucket_name(bucket)
        stream_weights = None if weights is None or weights[idx].sum() <= 0 else weights[idx]
        streams[f"{name}/{bname}"] = streams_lib.make_stream(
            source, idx, stream_weights, bucket, layout, seed=seed, name=f"{name}/{bname}",
            degradations=degradations)
    return streams, counts


def make_train_iterator(data_cfg, *, global_batch_size: int, seed: int, process_index: int,
                        process_count: int, rows: tuple[int, int] | None = None,
                        classifier_features=None) -> TrainIterator:
    """Infinite iterator over this process's slice of the training batches (see module doc).

    `rows`: the rows [start, stop) of each global batch this process loads (the loop passes
    the rows its devices hold); default: the process's equal share.
    `classifier_features`: images -> features, for data.dual_axis.visual_features='classifier'
    (see techniques/dual_axis.py; this package does not import seedjax's classifier)."""
    if rows is None:
        if global_batch_size % process_count:
            raise ValueError(f"batch_size {global_batch_size} is not divisible by the {process_count} processes")
        local = global_batch_size // process_count
        rows = (process_index * local, (process_index + 1) * local)
    config_lib.validate(data_cfg)
    comps = components(data_cfg)
    if data_cfg.dual_axis.enabled and data_cfg.dual_axis.weights_file and len(comps) > 1:
        raise ValueError("data.dual_axis.weights_file holds one source's weights; it cannot serve a mixture")
    sources = {name: open_source(kind, path, data_cfg, split="train", seed=seed) for name, (kind, path, _) in comps.items()}
    layout = layout_for(sources, data_cfg)
    degradations = _degradations(sources, data_cfg)

    scan_counts: dict[str, int] = {}
    streams, counts, stream_sources = {}, {}, {}
    for name, source in sources.items():
        for key, n in _report_scan_skips(source).items():
            scan_counts[key] = scan_counts.get(key, 0) + n
        comp_streams, counts[name] = _component_streams(name, source, data_cfg, layout, seed=seed,
                                                        classifier_features=classifier_features,
                                                        degradations=degradations)
        streams.update(comp_streams)
        stream_sources.update({stream: source.name for stream in comp_streams})
    if data_cfg.balance_resolutions:  # each bucket of a component as likely as the others
        counts = {name: {bucket: 1 for bucket in per} for name, per in counts.items()}
    plan = streams_lib.bucket_plan({n: w for n, (_, _, w) in comps.items()}, counts, stream_sources)
    ds = streams_lib.ScheduledBatches(streams, plan, global_batch_size, seed, rows,
                                      read_threads=data_cfg.read_threads)
    if data_cfg.num_workers == 0 and data_cfg.read_buffer > 0:  # read ahead in a background thread
        ds = grain.experimental.ThreadPrefetchIterDataset(ds, prefetch_buffer_size=data_cfg.read_buffer)
    if data_cfg.num_workers > 0:
        _ensure_flags_parsed()
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=data_cfg.num_workers,
                                                         per_worker_buffer_size=data_cfg.worker_buffer_size))
    return TrainIterator(ds, scan_counts)


def _eval_bucket(source, data_cfg, members: dict) -> tuple[int, ...]:
    """The bucket held-out samples are fitted to: the first configured one (video: the first with
    more than one frame, as evaluation scores motion; latent shards: the first shape they hold)."""
    video = getattr(source, "video", False)
    if source.latent:
        buckets = list(members)
    elif video:
        buckets = clips_lib.video_buckets(data_cfg)
    else:
        buckets = buckets_lib.parse_buckets(data_cfg.buckets, data_cfg.image_size)
    if video:
        return next((b for b in buckets if b[0] > 1), buckets[0])
    return buckets[0]


def make_eval_batch(data_cfg, *, num: int, seed: int, split: str = "test", allow_fewer: bool = False) -> dict:
    """`num` held-out samples (real images, tokens, labels) at the first bucket's size
    (video sources: clips at the first multi-frame bucket's size).

    A split with fewer valid samples is read twice (repeats) to reach `num`; with
    `allow_fewer`, once, and the batch holds every valid sample it has (at least one).
    With data.degradations on, row i gets its degraded copy from (seed, i)."""
    config_lib.validate(data_cfg)
    path = data_cfg.eval_path or data_cfg.path
    source = open_source(data_cfg.source, path, data_cfg, split=split, seed=seed)
    layout = layout_for({data_cfg.source: source}, data_cfg)
    degradations = _degradations({data_cfg.source: source}, data_cfg)
    members = _bucket_members(source, data_cfg)
    bucket = _eval_bucket(source, data_cfg, members)
    if hasattr(source, "eval_rows"):  # a source with its own held-out prompt set
        raws = source.eval_rows(num, seed, bucket) if layout.video else source.eval_rows(num, seed)
        rows = [streams_lib.finalize(raw, bucket, layout, raw["where"]) for raw in raws]
        return _eval_stack(rows, degradations, seed)
    if layout.video and bucket not in members:
        raise ValueError(f"{source.name}: no clip fits the eval bucket {buckets_lib.bucket_name(bucket)}")
    candidates = members[bucket] if layout.video else np.arange(len(source))  # clips: only those of the bucket
    order = candidates[np.random.default_rng(seed).permutation(len(candidates))]
    loader = streams_lib.LoadSample(source, order, bucket, layout)
    rows = []
    for position in range(len(order) * (1 if allow_fewer else 2)):  # num may exceed the split
        row = loader(position, position % len(order))
        if "_skip" not in row:
            rows.append(row)
        if len(rows) == num:
            break
    if len(rows) == num or (allow_fewer and rows):
        return _eval_stack(rows, degradations, seed)
    raise ValueError(f"{source.name}: only {len(rows)} valid samples for an eval batch of {num}")


def _eval_stack(rows: list[dict], degradations, seed: int) -> dict:
    """The eval batch; with degradations, row i's pair comes from (seed, i), as a stream's from its
    position, so held-out evaluation scores restoration on fixed pairs."""
    if degradations is not None:
        pairs = DegradePairs(degradations)
        rows = [pairs(row, np.random.default_rng([seed, i, _EVAL_DEGRADATIONS])) for i, row in enumerate(rows)]
    return {key: np.stack([r[key] for r in rows]) for key in rows[0]}

