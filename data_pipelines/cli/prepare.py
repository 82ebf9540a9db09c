"""Write a source into ArrayRecord shards (see data_pipelines/core/shards.py for the format).

    python -m data_pipelines.cli.prepare --source=folder --path=/data/imgs --out=/data/shards [--num_shards=8]
    python -m data_pipelines.cli.prepare --source=digit_scenes --out=/tmp/scenes --data.scenes.num_samples=5000 \
        --data.scenes.defect_fraction=0.3

`--data.<key>=<value>` sets any data option (types as in data_pipelines.default_config()).
In a `seedjax.pipeline` tool step (`module='data_pipelines.cli.prepare'`) the step's workdir is
`--out` and its `init_from` stage is `--vae` (see experiments/quickstart/latent_pipeline.py).
Images keep their original encoded bytes when they come from files (PNG otherwise). With
`--vae=WORKDIR` (a trained VAE stage) the records hold latents of the images fitted to their
resolution bucket instead. Video sources (moving_digits, video_folder, video_jsonl) are written as
latents only: `--vae=WORKDIR` of a video VAE stage encodes each clip, fitted to its (frames, height,
width) bucket of data.video.buckets, into `latent` [f, h, w, c] with its captions and labels
(see write_video_latents). Samples that cannot be read are skipped, counted in the header and
reported once per kind.
`--runner=ray` does the same work as Ray tasks (a new local Ray instance, or the cluster at
`--ray_address`) and writes the same shards, byte for byte (see data_pipelines/cli/ray_runner.py).
Exit codes: 0 written, 2 bad arguments, 1 nothing valid to write.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import sys

import numpy as np

from data_pipelines.core import buckets as buckets_lib
from data_pipelines.core import clips as clips_lib
from data_pipelines.core import config as config_lib
from data_pipelines.core import pipeline, samples, shards
from data_pipelines.core.samples import BadSample
from seedjax import cli
from seedjax.config import apply_overrides, workdir_config

log = logging.getLogger("data_pipelines.cli.prepare")

LABEL_KEYS = ("label", "scene_digit", "scene_color", "scene_box", "scene_count", "defect_box", "defect_kind")


def _png_bytes(image) -> bytes:
    from PIL import Image

    if isinstance(image, np.ndarray):
        arr = image if image.dtype == np.uint8 else np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)
        image = Image.fromarray(arr.squeeze(-1) if arr.ndim == 3 and arr.shape[-1] == 1 else arr)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _image_record(raw: dict) -> tuple[dict, tuple[int, int]]:
    image = raw["image"]
    if "file" in raw:  # keep the original encoding (no re-compression, no growth)
        with open(raw["file"], "rb") as f:
            encoded = f.read()
    else:
        encoded = _png_bytes(image)
    size = image.shape[:2] if isinstance(image, np.ndarray) else (image.height, image.width)
    fields = {"image_bytes": np.frombuffer(encoded, np.uint8), "caption": raw["caption"]}
    fields.update({k: raw[k] for k in LABEL_KEYS if k in raw})
    if raw.get("tags"):
        fields["tags"] = "\n".join(raw["tags"])
    return fields, (int(size[0]), int(size[1]))


class _SkipLog:
    """Counts skipped samples per kind (scan skips included) and reports each kind once."""

    def __init__(self, source):
        self.counts = {k: n for k, (n, _) in source.scan_skips.items()}

    def add(self, e: BadSample) -> None:
        if e.kind not in self.counts:
            log.warning("prepare: skipping samples with %s; first: %s", e.kind, e.where)
        self.counts[e.kind] = self.counts.get(e.kind, 0) + 1


def _readable(source, indices, skips: _SkipLog):
    """(index, raw sample) of every sample among `indices` that loads and has a caption."""
    for index in indices:
        try:
            raw = source.load(index, index)
            if not isinstance(raw.get("caption"), str) or not raw["caption"].strip():
                raise BadSample("missing_caption", raw.get("where", f"{source.name}#{index}"))
        except BadSample as e:
            skips.add(e)
            continue
        yield index, raw


def _total(source, limit: int) -> int:
    return len(source) if limit < 0 else min(limit, len(source))


# The helpers below define the output once for both runners (this process, ray_runner.py).


def images_header(source, total: int, written: int, skipped: dict) -> dict:
    """The header of an image shard directory (shards.ShardWriter.close adds format and shard list)."""
    return {
        "kind": "images", "source": source.name, "channels": source.channels, "scene_labels": source.scene_labels,
        "tags": list(source.tags), "counts": {"read": total, "written": written, "skipped": skipped},
    }


def write_source(source, out_dir: str, *, num_shards: int, limit: int = -1) -> dict:
    """Write every readable sample of `source` as an image record; returns the header."""
    writer = shards.ShardWriter(out_dir, num_shards)
    skips, total = _SkipLog(source), _total(source, limit)
    for _, raw in _readable(source, range(total), skips):
        writer.write(*_image_record(raw))
    return writer.close(images_header(source, total, writer.count, skips.counts))


def latent_layout(source, codec, data_cfg) -> tuple[int, samples.Layout, list]:
    """(channels, layout, bucket list) of latent records; ValueError if a bucket does not fit the VAE."""
    channels = data_cfg.channels if data_cfg.channels != -1 else source.channels
    layout = samples.Layout(channels=channels, max_text_len=data_cfg.max_text_len, scene_labels=source.scene_labels)
    bucket_list = buckets_lib.parse_buckets(data_cfg.buckets, data_cfg.image_size)
    for b in bucket_list:
        if b[0] % codec.downsample_factor or b[1] % codec.downsample_factor:
            raise ValueError(f"data.buckets: {buckets_lib.bucket_name(b)} is not divisible by the VAE's "
                             f"downsampling factor {codec.downsample_factor}")
    return channels, layout, bucket_list


def latent_row(source, index: int, raw: dict, bucket, layout: samples.Layout) -> dict:
    """A readable sample fitted to its bucket, with caption and tags; BadSample if it cannot be."""
    row = samples.finalize(raw, bucket, layout, raw.get("where", f"{source.name}#{index}"))
    row.update(caption=raw["caption"], tags=list(raw.get("tags", ())))
    return row


def latent_batches(keyed_items, batch_size: int):
    """Lists of items, each of one key (bucket), in the order they are encoded and written: a
    key's batch as soon as it is full, then the partial ones in the order their keys first came.
    Batch composition is part of the output: a batched encode is only bit-exact for the same batch."""
    pending: dict = {}
    for key, item in keyed_items:
        pending.setdefault(key, []).append(item)
        if len(pending[key]) == batch_size:
            yield pending[key]
            pending[key] = []
    for items in pending.values():
        if items:
            yield items


def latent_fields(row: dict, latent: np.ndarray) -> dict:
    """The record of one encoded row (latent_row output)."""
    fields = {"latent": latent, "target_size": row["target_size"], "caption": row["caption"],
              "defect_box": row["defect_box"], "defect_kind": row["defect_kind"]}
    fields.update({k: row[k] for k in LABEL_KEYS if k in row and k not in fields})
    if row["tags"]:
        fields["tags"] = "\n".join(row["tags"])
    return fields


def latents_header(source, channels: int, codec, total: int, written: int, skipped: dict) -> dict:
    return {
        "kind": "latents", "source": source.name, "channels": channels, "scene_labels": source.scene_labels,
        "tags": list(source.tags), "shapes": {"latent": [-1, -1, codec.latent_channels]},
        "vae": {"downsample_factor": codec.downsample_factor, "scaling_factor": float(codec.scaling_factor),
                "shift_factor": float(codec.shift_factor)},
        "counts": {"read": total, "written": written, "skipped": skipped},
    }


def write_latents(source, out_dir: str, codec, data_cfg, *, num_shards: int, limit: int = -1,
                  batch_size: int = 64) -> dict:
    """Encode every readable sample with `codec` (a trained VAE, see seedjax.models.codec.LatentCodec).

    Images are fitted to their resolution bucket (data.buckets / data.image_size) first, so a
    latent is [H / f, W / f, c] of its bucket; defect boxes follow the crop, labels are kept.
    """
    channels, layout, bucket_list = latent_layout(source, codec, data_cfg)
    assigned = buckets_lib.assign_buckets(source.sizes(), bucket_list)
    writer = shards.ShardWriter(out_dir, num_shards)
    skips, total = _SkipLog(source), _total(source, limit)

    def rows():
        for index, raw in _readable(source, range(total), skips):
            b = int(assigned[index])
            try:
                row = latent_row(source, index, raw, bucket_list[b], layout)
            except BadSample as e:
                skips.add(e)
                continue
            yield b, row

    for batch in latent_batches(rows(), batch_size):
        latents = codec.encode(np.stack([row["image"] for row in batch]))
        for row, latent in zip(batch, latents):
            writer.write(latent_fields(row, latent), latent.shape[:2])
    return writer.close(latents_header(source, channels, codec, total, writer.count, skips.counts))


def video_bucket_of(source, data_cfg, temporal_factor: int, spatial_factor: int) -> dict[int, tuple]:
    """index -> the one bucket a clip is written at: of the buckets it can serve, the one with the
    most frames (the first configured among equals); ValueError if a bucket does not fit the VAE."""
    bucket_list = clips_lib.video_buckets(data_cfg)
    for f, h, w in bucket_list:
        if (f - 1) % temporal_factor or h % spatial_factor or w % spatial_factor:
            raise ValueError(f"data.video.buckets: {f}x{h}x{w} does not fit the video VAE: frames must be 1 + a "
                             f"multiple of {temporal_factor}, height and width multiples of {spatial_factor}")
    members = clips_lib.members(source.sizes(), bucket_list, source.fixed_buckets)
    bucket_of: dict[int, tuple] = {}
    for bucket in sorted(members, key=lambda b: -b[0]):
        for index in members[bucket]:
            bucket_of.setdefault(int(index), bucket)
    return bucket_of


def write_video_latents(source, out_dir: str, codec, data_cfg, *, num_shards: int, limit: int = -1,
                        batch_size: int = 8) -> dict:
    """Encode every readable clip of a video source with a video VAE codec (seedjax.train.params.load_codec).

    A record holds `latent` [f, h, w, c], the caption, the shot captions, `frame_shot` of the latent
    frames (clips.latent_frame_shot) and the shot labels; the header records the VAE's temporal
    and spatial factors. Reading the shards back (data.source=shards) gives the clip batch contract
    with `latent` in place of `video`.
    """
    tf, sf = codec.temporal_factor, codec.downsample_factor
    channels = data_cfg.channels if data_cfg.channels != -1 else source.channels
    layout = samples.Layout(channels=channels, max_text_len=data_cfg.max_text_len, video=True,
                            max_shots=int(data_cfg.video.max_shots))
    bucket_of = video_bucket_of(source, data_cfg, tf, sf)
    writer = shards.ShardWriter(out_dir, num_shards)
    skips, total = _SkipLog(source), _total(source, limit)

    def rows():
        for index in range(total):
            if index not in bucket_of:
                continue
            bucket = bucket_of[index]
            try:
                raw = source.load(index, index, bucket)
                row = clips_lib.finalize_clip(raw, bucket, layout, raw.get("where", f"{source.name}#{index}"))
            except BadSample as e:
                skips.add(e)
                continue
            yield bucket, (raw, row)

    for batch in latent_batches(rows(), batch_size):
        latents = codec.encode(np.stack([row["video"] for _, row in batch]))
        for (raw, row), latent in zip(batch, latents):
            shots = list(raw.get("shot_captions") or [raw["caption"]])
            fields = {"latent": latent, "caption": raw["caption"], "shot_captions": "\n".join(shots),
                      "frame_shot": clips_lib.latent_frame_shot(row["frame_shot"], tf)}
            fields.update({k: row[k][: len(shots)] for k in shards.VIDEO_KEYS if k != "frame_shot"})
            writer.write(fields, latent.shape[:3])
    header = {
        "kind": "latents", "video": True, "source": source.name, "channels": channels, "scene_labels": False,
        "tags": [], "shapes": {"latent": [-1, -1, -1, codec.latent_channels]},
        "vae": {"temporal_factor": tf, "spatial_factor": sf, "downsample_factor": sf,
                "scaling_factor": float(codec.scaling_factor), "shift_factor": float(codec.shift_factor)},
        "counts": {"read": total, "written": writer.count, "skipped": skips.counts},
    }
    return writer.close(header)


RUNNERS = ("local", "ray")


def _vae_kind(workdir: str) -> str:
    """'image' or 'video': the VAE of a VAE stage workdir ('' when there is none to read: no --vae,
    or not a VAE run, which load_codec then reports)."""
    saved = workdir_config(workdir) if workdir else None
    return str(saved.vae.kind) if saved is not None and saved.get("stage") == "vae" and "vae" in saved else ""


def _runner(args):
    """(session, image writer, latent writer) of --runner; None once it has said why it cannot run."""
    if args.runner == "local":
        if args.ray_address or args.ray_num_cpus:
            print("prepare: --ray_address and --ray_num_cpus need --runner=ray", file=sys.stderr)
            return None
        return contextlib.nullcontext(), write_source, write_latents
    try:
        from data_pipelines.cli import ray_runner  # ray: an optional dependency, imported only here
    except ModuleNotFoundError as e:
        if e.name != "ray":
            raise
        print("prepare: --runner=ray needs Ray; install it with: pip install -e '.[ray]'", file=sys.stderr)
        return None
    return (ray_runner.session(args.ray_address, args.ray_num_cpus), ray_runner.write_source,
            functools.partial(ray_runner.write_latents, vae_workdir=args.vae))


@cli.entry("data_pipelines.cli.prepare")
def main(argv: list[str]) -> int:
    parser = cli.Parser("data_pipelines.cli.prepare", __doc__, overrides="data")
    parser.add_argument("--source", required=True, choices=[s for s in config_lib.SOURCES if s not in ("shards", "edit_triples")])
    parser.add_argument("--path", default="", help="image folder or JSONL manifest")
    parser.add_argument("--out", "--workdir", dest="out", required=True,
                        help="output shard directory (--workdir: as a seedjax.pipeline tool step names it)")
    parser.add_argument("--split", default="train", help="digits: train | test")
    parser.add_argument("--num_shards", type=int, default=4)
    parser.add_argument("--limit", type=int, default=-1, help="write at most this many samples")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vae", "--init_from", dest="vae", default="",
                        help="VAE stage workdir: write latents instead of encoded images (--init_from: as a pipeline "
                             "tool step starting from a VAE stage names it)")
    parser.add_argument("--runner", default="local", choices=RUNNERS,
                        help="local: this process | ray: Ray tasks writing the same shards (pip install -e '.[ray]')")
    parser.add_argument("--ray_address", default="",
                        help="--runner=ray: the Ray cluster to use (default: a new local instance, shut down after)")
    parser.add_argument("--ray_num_cpus", type=int, default=0,
                        help="--runner=ray without --ray_address: CPUs of the local instance (default: all)")
    args = parser.parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    data_cfg = config_lib.default_config()
    apply_overrides(data_cfg, args.overrides, prefix="data")  # a bad key or value: exit 2 (cli.entry)
    if args.num_shards < 1:
        print(f"prepare: --num_shards must be >= 1, got {args.num_shards}", file=sys.stderr)
        return 2
    video = args.source in config_lib.VIDEO_SOURCES
    if video and (not args.vae or args.runner != "local"):
        print(f"prepare: --source={args.source} is written as video latents: pass --vae=WORKDIR (a video VAE stage "
              "run) and the local runner", file=sys.stderr)
        return 2
    vae_kind = _vae_kind(args.vae)
    if vae_kind and (vae_kind == "video") != video:
        print(f"prepare: --vae={args.vae} is a{'' if vae_kind == 'video' else 'n'} {vae_kind} VAE run; --source="
              f"{args.source} needs a{'' if video else 'n'} {'video' if video else 'image'} VAE", file=sys.stderr)
        return 2
    runner = _runner(args)
    if runner is None:
        return 2
    session, write_images, write_encoded = runner
    try:
        with session:
            source = pipeline.open_source(args.source, args.path, data_cfg, split=args.split, seed=args.seed)
            if args.vae:
                from seedjax.train.params import load_codec  # image or video VAE: one loader

                write = write_video_latents if video else write_encoded
                header = write(source, args.out, load_codec(args.vae), data_cfg, num_shards=args.num_shards,
                               limit=args.limit)
            else:
                header = write_images(source, args.out, num_shards=args.num_shards, limit=args.limit)
    except ValueError as e:
        print(f"prepare: {e}", file=sys.stderr)
        return 1
    counts = header["counts"]
    log.info("wrote %d records to %s in %d shards (read %d, skipped %s)", counts["written"], args.out,
             args.num_shards, counts["read"], counts["skipped"] or "none")
    if counts["written"] == 0:
        print(f"prepare: {source.name}: no valid sample to write", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
