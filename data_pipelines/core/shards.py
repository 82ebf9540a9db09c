"""ArrayRecord shards: the random-access on-disk format `python -m data_pipelines.cli.prepare` writes.

A shard directory holds

    metadata.json                     the header: format, source, counts, shapes, tags, shard list
    sizes.npy                         int64 [N, 2]: (height, width) of each record's image or latent
                                      (video latents: [N, 3], (frames, height, width))
    shard-00000-of-00004.array_record ...

Each record is a set of named arrays (see encode_record) holding either
- `image_bytes` (the encoded PNG/JPEG) + `caption`, or
- `latent` [h, w, c] + `target_size` [2] (+ `text_embeddings` [T, D], `pooled` [D], `text_mask` [T]),
- or, for video latents (header `video: true`, `vae` with temporal and spatial factors),
  `latent` [f, h, w, c] + `caption` + `shot_captions` (newline-joined) + `frame_shot` [f] (the shot
  of every latent frame) + the labels `shot_digit`, `shot_color`, `shot_motion`, `shot_turn_frame`,
plus the optional labels `label`, `scene_*`, `defect_box`/`defect_kind` and `tags` (newline-joined str).
ArrayRecord files are random-access, so reading is a Grain `MapDataset` like any other source:
global shuffling and exact resume come for free.
"""

from __future__ import annotations

import io
import json
import os

import numpy as np

from data_pipelines.core.samples import BadSample

FORMAT = "seedjax-shards/1"
METADATA = "metadata.json"
SIZES = "sizes.npy"


MAGIC = b"SJR1"
VIDEO_KEYS = ("frame_shot", "shot_digit", "shot_color", "shot_motion", "shot_turn_frame")


def encode_record(fields: dict) -> bytes:
    """Named arrays (and str values) -> MAGIC, uint32 header length, JSON header, raw buffers.

    The header maps each name to [dtype, shape, offset, nbytes]; strings are stored as UTF-8
    with dtype 'str'. Decoding is a JSON parse and zero-copy views, with no pickle involved.
    """
    header, buffers, offset = {}, [], 0
    for name, value in fields.items():
        if isinstance(value, str):
            data, dtype, shape = value.encode("utf-8"), "str", []
        else:
            arr = np.ascontiguousarray(value)
            if arr.dtype.kind in "OUS":
                raise ValueError(f"encode_record: field {name!r} has dtype {arr.dtype}; use str or numeric arrays")
            data, dtype, shape = arr.tobytes(), arr.dtype.str, list(arr.shape)
        header[name] = [dtype, shape, offset, len(data)]
        buffers.append(data)
        offset += len(data)
    head = json.dumps(header).encode()
    return MAGIC + len(head).to_bytes(4, "little") + head + b"".join(buffers)


def decode_record(data: bytes) -> dict:
    """The inverse of encode_record; raises ValueError on anything malformed."""
    if data[:4] != MAGIC:
        raise ValueError("not a seedjax record (bad magic)")
    size = int.from_bytes(data[4:8], "little")
    header = json.loads(data[8 : 8 + size])
    body = memoryview(data)[8 + size :]
    out = {}
    for name, (dtype, shape, offset, nbytes) in header.items():
        if offset + nbytes > len(body):
            raise ValueError(f"field {name!r} runs past the end of the record")
        chunk = body[offset : offset + nbytes]
        out[name] = bytes(chunk).decode("utf-8") if dtype == "str" else np.frombuffer(chunk, dtype).reshape(shape)
    return out


class ShardWriter:
    """Writes records round-robin into `num_shards` ArrayRecord files, then the header."""

    def __init__(self, out_dir: str, num_shards: int):
        from array_record.python.array_record_module import ArrayRecordWriter

        os.makedirs(out_dir, exist_ok=True)
        self.out_dir = out_dir
        self.files = [f"shard-{i:05d}-of-{num_shards:05d}.array_record" for i in range(num_shards)]
        # group_size:1 makes every record individually addressable (fast random access).
        self.writers = [ArrayRecordWriter(os.path.join(out_dir, f), "group_size:1") for f in self.files]
        self.per_shard = [[] for _ in self.files]  # (order index, size) per record, for the sizes file
        self.count = 0

    def write(self, fields: dict, size: tuple[int, ...]) -> None:
        shard = self.count % len(self.writers)
        self.writers[shard].write(encode_record(fields))
        self.per_shard[shard].append(size)
        self.count += 1

    def close(self, header: dict) -> dict:
        for w in self.writers:
            w.close()
        # Records are read shard after shard, so the sizes are stored in that order.
        sizes = [s for shard in self.per_shard for s in shard]
        sizes = np.asarray(sizes, np.int64).reshape(len(sizes), -1) if sizes else np.zeros((0, 2), np.int64)
        np.save(os.path.join(self.out_dir, SIZES), sizes)
        header = {"format": FORMAT, **header, "num_records": self.count,
                  "shards": [{"file": f, "records": len(p)} for f, p in zip(self.files, self.per_shard)]}
        with open(os.path.join(self.out_dir, METADATA), "w") as f:
            json.dump(header, f, indent=2)
        return header


def read_metadata(path: str) -> dict:
    meta_path = os.path.join(path, METADATA)
    try:
        with open(meta_path) as f:
            meta = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{meta_path}: cannot read the shard header ({e}); write shards with "
                         "`python -m data_pipelines.cli.prepare`") from None
    if meta.get("format") != FORMAT:
        raise ValueError(f"{meta_path}: format {meta.get('format')!r} is not {FORMAT!r}")
    return meta


class ShardSource:
    """Random access over the records of a shard directory (images or latents)."""

    scene_labels = False
    channels = 3

    def __init__(self, path: str, *, max_text_len: int):
        meta = read_metadata(path)
        self.name, self.meta = path, meta
        self.latent = meta["kind"] == "latents"
        self.video = bool(meta.get("video", False))
        self.fixed_buckets = True
        self.text_features = bool(meta.get("text_features", False))
        self.channels = int(meta.get("channels", 3))
        self.scene_labels = bool(meta.get("scene_labels", False))
        self.tags = tuple(meta.get("tags", ()))
        self.paths = [os.path.join(path, s["file"]) for s in meta["shards"]]
        missing = [p for p in self.paths if not os.path.isfile(p)]
        if missing:
            raise ValueError(f"{path}: shard file {missing[0]} listed in {METADATA} is missing")
        if meta["num_records"] == 0:
            raise ValueError(f"{path}: no valid sample (the shards hold 0 records)")
        self._sizes = np.load(os.path.join(path, SIZES))
        self.bounds = np.cumsum([s["records"] for s in meta["shards"]])
        self.shapes = meta.get("shapes", {})
        if self.text_features and self.shapes["text_embeddings"][0] != max_text_len:
            raise ValueError(f"{path}: text embeddings have length {self.shapes['text_embeddings'][0]} but "
                             f"data.max_text_len is {max_text_len}")
        self.scan_skips: dict[str, tuple[int, str]] = {}
        self._reader = None

    def __getstate__(self):  # worker processes open their own reader
        return {**self.__dict__, "_reader": None}

    def __len__(self) -> int:
        return int(self.meta["num_records"])

    def sizes(self) -> np.ndarray:
        return self._sizes

    def _where(self, index: int) -> str:
        shard = int(np.searchsorted(self.bounds, index, side="right"))
        first = int(self.bounds[shard - 1]) if shard else 0
        return f"{self.paths[shard]}#{index - first}"

    def load(self, index: int, position: int, bucket=None) -> dict:
        if self._reader is None:
            import grain

            self._reader = grain.sources.ArrayRecordDataSource(self.paths)
        where = self._where(index)
        try:
            fields = decode_record(self._reader[index])
        except Exception as e:  # a corrupt record: header, JSON or size errors
            raise BadSample("bad_record", where, f"{type(e).__name__}: {e}") from None
        raw = {k: fields[k] for k in ("label", "scene_digit", "scene_color", "scene_box", "scene_count",
                                      "defect_box", "defect_kind") if k in fields}
        raw["tags"] = fields["tags"].split("\n") if fields.get("tags") else []
        raw["caption"] = fields.get("caption", "")
        raw["where"] = where
        if self.video:
            raw.update({k: fields[k] for k in VIDEO_KEYS if k in fields})
            raw["shot_captions"] = fields["shot_captions"].split("\n") if fields.get("shot_captions") else []
        if self.latent:
            self._check_latent_fields(fields, index, where)
            raw.update({k: fields[k] for k in ("latent", "target_size", "text_embeddings", "pooled", "text_mask")
                        if k in fields})
        else:
            from PIL import Image

            try:
                with Image.open(io.BytesIO(fields["image_bytes"])) as img:
                    img.load()
                    raw["image"] = img.copy()
            except Exception as e:
                kind = "truncated_image" if "truncated" in str(e) else "unreadable_image"
                raise BadSample(kind, where, str(e)) from None
        return raw

    def _check_latent_fields(self, fields: dict, index: int, where: str) -> None:
        expected = {"latent": (*self._sizes[index], self.shapes["latent"][-1])}
        if self.text_features:
            expected.update({k: tuple(self.shapes[k]) for k in ("text_embeddings", "pooled", "text_mask")})
        for key, shape in expected.items():
            if key not in fields or tuple(fields[key].shape) != tuple(shape):
                got = tuple(fields[key].shape) if key in fields else "missing"
                raise BadSample("wrong_shape", where, f"{key} {got}, expected {tuple(shape)}")
