"""All data options with their defaults; experiments put this at `config.data`.

No value is None, so command-line overrides keep their types ('' / -1 / False mean unset).
"""

from __future__ import annotations

import dataclasses

import ml_collections

from data_pipelines.core import buckets as buckets_lib
from data_pipelines.core.mixtures import components
from data_pipelines.sources.edit_triples import edit_config
from data_pipelines.techniques.degradations import DegradationConfig

SOURCES = ("digits", "digit_scenes", "folder", "jsonl", "shards", "reward_pairs", "moving_digits", "video_folder",
           "video_jsonl", "edit_triples", "edit_jsonl")
EDIT_SOURCES = ("edit_triples", "edit_jsonl")  # rows are edits: (source images, instruction, target)
VIDEO_SOURCES = ("moving_digits", "video_folder", "video_jsonl")


def default_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    # What to read. `source` is one of SOURCES; `path` is the image folder, the JSONL
    # manifest or the shard directory. `mixture` (below) overrides both for training.
    c.source = "digits"
    c.path = ""
    c.eval_path = ""  # held-out data for make_eval_batch ('' = `path`; digits/scenes use their test split)
    c.image_size = 32  # square size when `buckets` is empty; digits/scenes are rendered at this size
    c.channels = -1  # 1 or 3; -1 = the source's own (digits 1, everything else 3)
    c.max_text_len = 64
    c.tags = ""  # comma-separated multi-hot tag vocabulary; '' = the tags the sources declare

    # Mixed resolution: 'HxW,HxW,...'; each image goes to the closest aspect ratio; every
    # global batch comes from a single bucket.
    c.buckets = ""
    # Resolution-balanced sampling: every bucket of a component is drawn equally often
    # (False: in proportion to its sample count).
    c.balance_resolutions = False
    # Curated subset for training: a filter expression over sample metadata, e.g.
    # "ink >= 0.325 and 'count:1' in tags" (see data_pipelines/techniques/curation.py); '' = all samples.
    c.filter = ""

    # Throughput: threads reading and decoding the samples of a batch, batches read ahead in a
    # background thread (when num_workers = 0), and prefetch worker processes. One read thread:
    # decoding and rendering hold the GIL, so a second thread made every source slower on two
    # cores (BENCHMARKS.md, data pipeline throughput, 2026-12-01); more can pay off for storage
    # with latency (remote files), where threads wait rather than compute.
    c.read_threads = 1
    c.read_buffer = 4
    c.num_workers = 0
    c.worker_buffer_size = 2

    # Mixture: name -> {source, path, weight}; empty = the one component `source`/`path`.
    # Components are named so a resumed run with new weights restores each one by name.
    c.mixture = ml_collections.ConfigDict()

    c.scenes = ml_collections.ConfigDict()
    c.scenes.num_samples = 20_000  # virtual length of the generated train split
    c.scenes.max_objects = 3
    c.scenes.object_size_min = 0.26  # side of an object's box, as a fraction of the image side
    c.scenes.object_size_max = 0.42  # (at most 0.36 in scenes of three objects)
    c.scenes.long_tail = 0.0  # Zipf-like exponent over digits and colors (0 = uniform)
    c.scenes.defect_fraction = 0.0  # fraction of images stamped with a defect
    c.scenes.defect_kinds = "watermark,mosaic,subtitle"

    # Seedream 3.0 defect-aware training: drop samples whose defect boxes cover more than
    # `max_area` of the image; mask the loss inside the boxes of the others.
    c.defects = ml_collections.ConfigDict()
    c.defects.enabled = False
    c.defects.max_area = 0.2

    # Seedream 3.0 dual-axis collaborative sampling: weight = (joint cluster count)^-alpha
    # over (visual cluster, text cluster).
    c.dual_axis = ml_collections.ConfigDict()
    c.dual_axis.enabled = False
    c.dual_axis.alpha = 0.5
    c.dual_axis.visual_features = "pixels"  # pixels | classifier | latents
    c.dual_axis.coarse_clusters = 8
    c.dual_axis.fine_clusters = 4  # per coarse cluster (two-level k-means)
    c.dual_axis.text_clusters = 64
    c.dual_axis.weights_file = ""  # precomputed by `python -m data_pipelines.cli.report --weights_out=`

    # Video sources (moving_digits, video_folder, video_jsonl; see data_pipelines/core/clips.py).
    c.video = ml_collections.ConfigDict()
    c.video.num_frames = 9  # clip length when `buckets` is empty
    c.video.fps = 8.0  # folder sources are resampled to this frame rate
    # (frames, height, width) buckets 'FxHxW,...'; '' = num_frames x image_size x image_size. Every
    # global batch comes from one bucket; a '1xHxW' bucket is text-to-image (a still frame).
    c.video.buckets = ""
    # One weight per bucket, e.g. '0.2,0.8' (the T2I / video mix); '' = by sample count.
    c.video.bucket_weights = ""
    c.video.max_shots = 3  # per-shot caption rows in a batch (shot_tokens [B, max_shots, max_text_len])
    # moving_digits: the generated clips.
    c.video.num_samples = 20_000  # virtual length of the train split, per bucket
    c.video.multishot_prob = 0.0  # fraction of clips with 2..max_shots shots (hard cuts)
    c.video.turn_prob = 0.3  # fraction of shots whose digit turns once mid-shot
    c.video.speed_min = 0.03  # digit speed, as a fraction of the canvas side per frame
    c.video.speed_max = 0.08

    # edit_triples (Seedream 4.0 / SeedEdit instruction editing): generated (source, instruction,
    # target) triples of digit scenes at data.image_size (see data_pipelines/sources/edit_triples.py).
    # Its rows have their own keys (source, target, instruction tokens, labels); in a mixture with
    # image sources (a joint run: samples.Layout.joint_edits) every row gets both kinds of keys.
    c.edits = ml_collections.ConfigDict()
    c.edits.num_samples = 20_000  # virtual length of the train split
    c.edits.max_objects = 3  # objects in a source scene (2 or 3: add and remove need room)
    c.edits.object_size_min = 0.26  # side of an object's box, as a fraction of the image side
    c.edits.object_size_max = 0.42
    c.edits.resize_size_min = 0.2  # the side a `resize` edit may give an object
    c.edits.resize_size_max = 0.5
    c.edits.edit_weights = ""  # 'recolor:1,move:2,...' (types left out: never); '' = every type equally often

    # SeedVR2 restoration pairs: each training row also gets `degraded_image` (or `degraded_video`),
    # a copy of the clean one through a random real-world degradation chain, drawn per (seed,
    # stream position): resume is exact and every epoch sees fresh degradations. make_eval_batch
    # rows get pairs too. The fields and their defaults are DegradationConfig's
    # (data_pipelines/techniques/degradations.py): probabilities and (low, high) ranges per kind.
    c.degradations = ml_collections.ConfigDict()
    c.degradations.enabled = False
    defaults = DegradationConfig()
    for field in dataclasses.fields(DegradationConfig):
        c.degradations[field.name] = getattr(defaults, field.name)
    return c


def degradation_config(data_cfg, where: str = "data") -> DegradationConfig | None:
    """data.degradations as a DegradationConfig, or None when it is off (or absent, in configs
    saved before it existed). Bad values are a one-line ValueError naming `<where>.degradations.<key>`,
    even when off, so a typo is caught before the run that would turn it on."""
    group = data_cfg.get("degradations")
    if group is None:
        return None
    values = {k: v for k, v in group.items() if k != "enabled"}
    try:
        config = DegradationConfig.of(values)
    except ValueError as e:  # DegradationConfig names its fields `degradations.<key>`
        raise ValueError(f"{where}.{e}") from None
    return config if group.enabled else None


JOINT_EDIT_SOURCES = ("digits", "digit_scenes", "folder", "jsonl")  # image sources a joint editing run mixes in


def validate(data_cfg, where: str = "data") -> None:
    """Checks of data.degradations and data.edits that need no data: one-line ValueErrors naming
    the key (`where` is the config's own prefix, e.g. 'config.data'). The iterators call it first."""
    degradations = degradation_config(data_cfg, where)
    kinds = {kind for kind, _, _ in components(data_cfg).values()}
    edits = kinds & set(EDIT_SOURCES)
    if not edits:
        return
    if degradations is not None:
        raise ValueError(f"{where}.degradations.enabled: degradations pair clean images or videos; "
                         f"{' and '.join(sorted(edits))} rows have neither")
    # A joint run (samples.Layout.joint_edits) gives image rows the edit keys and edit rows the
    # image keys; clips, latents and reward pairs have other rows.
    others = sorted(kinds - set(EDIT_SOURCES) - set(JOINT_EDIT_SOURCES))
    if others:
        raise ValueError(f"{where}.mixture: {' and '.join(sorted(edits))} {'mixes' if len(edits) == 1 else 'mix'} "
                         f"with image sources ({', '.join(JOINT_EDIT_SOURCES)}), not with {', '.join(others)}")
    if "edit_triples" not in kinds:
        return
    # Triples are rendered at data.image_size and their boxes are in that image: no resizing or cropping.
    size = int(data_cfg.image_size)
    if buckets_lib.parse_buckets(data_cfg.buckets, size) != [(size, size)]:
        raise ValueError(f"{where}.buckets: edit_triples renders every triple at data.image_size "
                         f"({size}x{size}); leave data.buckets empty or set it to '{size}x{size}'")
    edit_config(data_cfg, where)

