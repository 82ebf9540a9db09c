"""All data options with their defaults; experiments put this at `config.data`.

No value is None, so command-line overrides keep their types ('' / -1 / False mean unset).
"""

from __future__ import annotations

import ml_collections

SOURCES = ("digits", "digit_scenes", "folder", "jsonl", "shards", "reward_pairs", "moving_digits", "video_folder",
           "video_jsonl")
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
    # background thread (when num_workers = 0), and prefetch worker processes.
    c.read_threads = 2
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
    return c

