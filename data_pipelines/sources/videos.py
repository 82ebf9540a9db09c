"""Video folders and manifests (`video_folder`, `video_jsonl`), decoded with PyAV.

A folder holds `clip.mp4` / `clip.webm` / `clip.gif` (also .mov, .mkv) with a same-name
`clip.txt` caption, in any subdirectory. A JSONL manifest lists one video per line, with one
caption or per-shot captions and cut times in seconds:

    {"path": "a/walk.mp4", "caption": "a dog walking"}
    {"path": "b/two.mp4", "shots": [{"caption": "a red car", "start": 0.0, "end": 2.5},
                                    {"caption": "a blue sky", "start": 2.5, "end": 6.0}]}

Videos are resampled to `data.video.fps`: clip frame k shows the last source frame shown at
time start + k / fps. A clip is the bucket's F consecutive frames at that rate (see
core/clips.py for the buckets): videos with one caption start at a random frame (seeded by
the stream position, so resuming replays it), videos with shots at their beginning; each clip
frame belongs to the last shot that started at or before it, and the clip's captions are those
of the shots it shows ("shot 1: ...; shot 2: ..." for more than one). Frames are resized to
cover the bucket and centre-cropped.

Videos are probed once at start (size, duration). Unreadable files, videos shorter than the
shortest multi-frame bucket, files without a caption and bad manifest lines are skipped and
counted per kind (`scan_skipped_<kind>`), like broken images; a video that fails later, while
decoding, is replaced and counted (`skipped_<kind>`). PyAV is imported where it is used.
"""

from __future__ import annotations

import concurrent.futures
import math
import os

import numpy as np

from data_pipelines.core import clips as clips_lib
from data_pipelines.core.samples import BadSample
from data_pipelines.sources.folders import captioned_files, manifest_entries

VIDEO_EXTENSIONS = (".mp4", ".webm", ".gif", ".mov", ".mkv")


def _duration(container, stream) -> float:
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration:
        import av

        return container.duration / av.time_base
    if stream.frames and stream.average_rate:
        return float(stream.frames / stream.average_rate)
    return sum(1 for _ in container.decode(stream)) / float(stream.average_rate or 1)


def frames_at(duration: float, fps: float) -> int:
    """How many frames a video of `duration` seconds has at `fps` (frame k at time k / fps)."""
    return max(int(math.ceil(duration * fps - 1e-6)), 0)


def probe(path: str, fps: float) -> tuple[int, int, int]:
    """(frames at `fps`, height, width) from the container; BadSample('unreadable_video') if it has no video."""
    import av

    try:
        with av.open(path) as container:
            stream = container.streams.video[0]
            height, width = stream.codec_context.height, stream.codec_context.width
            duration = _duration(container, stream)
    except (av.FFmpegError, IndexError, OSError, ValueError) as e:
        raise BadSample("unreadable_video", path, f"{type(e).__name__}: {e}") from None
    if not height or not width:
        raise BadSample("unreadable_video", path, "the video stream has no frame size")
    return frames_at(duration, fps), height, width


def decode_clip(path: str, start: int, frames: int, fps: float) -> np.ndarray:
    """uint8 [frames, h, w, 3]: clip frames start .. start + frames - 1 at `fps`."""
    import av

    times = (start + np.arange(frames)) / fps
    shown: list[tuple[float, np.ndarray]] = []  # decoded (time, frame) up to the last wanted time
    try:
        with av.open(path) as container:
            stream = container.streams.video[0]
            rate = float(stream.average_rate or fps)
            if times[0] > 0:  # from the keyframe before the first wanted frame
                container.seek(int(times[0] / stream.time_base), stream=stream, backward=True)
            for i, frame in enumerate(container.decode(stream)):
                t = frame.time if frame.time is not None else i / rate
                if shown and t > times[-1] + 1e-6:
                    break
                shown.append((t, frame.to_ndarray(format="rgb24")))
    except (av.FFmpegError, OSError, ValueError) as e:
        raise BadSample("unreadable_video", path, f"{type(e).__name__}: {e}") from None
    if not shown:
        raise BadSample("unreadable_video", path, "no frame decodes")
    stamps = np.array([t for t, _ in shown])
    if stamps[-1] + 1.0 / rate < times[-1] - 1e-6:
        raise BadSample("too_short_video", path,
                        f"ends at {stamps[-1] + 1.0 / rate:.2f}s, the clip at {times[-1]:.2f}s")
    picks = np.clip(np.searchsorted(stamps, times + 1e-6, side="right") - 1, 0, len(shown) - 1)
    return np.stack([shown[p][1] for p in picks])


class _ScannedVideos:
    """Probing and loading shared by both layouts: entries {path, caption, shots: [(caption, start)] | None}."""

    channels = 3
    scene_labels = False
    tags: tuple[str, ...] = ()
    latent = False
    text_features = False
    video = True
    fixed_buckets = False  # a long video can serve several buckets (and stills)

    def __init__(self, name: str, data_cfg, seed: int):
        self.name, self.seed = name, seed
        self.fps = float(data_cfg.video.fps)
        if self.fps <= 0:
            raise ValueError(f"data.video.fps must be positive, got {self.fps}")
        self.min_frames = clips_lib.shortest_clip(clips_lib.video_buckets(data_cfg))
        self.scan_skips: dict[str, tuple[int, str]] = {}

    def _skip(self, kind: str, where: str) -> None:
        count, first = self.scan_skips.get(kind, (0, where))
        self.scan_skips[kind] = (count + 1, first)

    def _try_probe(self, path: str):
        try:
            return probe(path, self.fps)
        except BadSample as e:
            return e

    def _finish_scan(self, entries: list[dict]) -> None:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            results = list(pool.map(self._try_probe, [e["path"] for e in entries]))
        self.entries, sizes = [], []
        for entry, result in zip(entries, results):
            if isinstance(result, BadSample):
                self._skip(result.kind, result.where)
            elif result[0] < self.min_frames:
                self._skip("too_short_video", entry["path"])
            else:
                self.entries.append(entry)
                sizes.append(result)
        if not self.entries:
            found = ", ".join(f"{n} {k}" for k, (n, _) in self.scan_skips.items()) or "nothing found"
            raise ValueError(f"{self.name}: no valid video ({found})")
        self._sizes = np.asarray(sizes, np.int64)

    def __len__(self) -> int:
        return len(self.entries)

    def sizes(self) -> np.ndarray:
        """int64 [N, 3]: (frames at data.video.fps, height, width) of every video."""
        return self._sizes

    def load(self, index: int, position: int, bucket) -> dict:
        entry, frames = self.entries[index], int(bucket[0])
        raw = {"where": entry["path"], "file": entry["path"]}
        if entry["shots"] is None:
            latest = max(int(self._sizes[index, 0]) - frames, 0)
            start = int(np.random.default_rng([self.seed, index, position]).integers(latest + 1))
            raw.update(video=decode_clip(entry["path"], start, frames, self.fps), caption=entry["caption"])
            return raw
        raw["video"] = decode_clip(entry["path"], 0, frames, self.fps)
        starts = np.array([start for _, start in entry["shots"]])
        shot_of_frame = np.clip(np.searchsorted(starts, np.arange(frames) / self.fps + 1e-6, side="right") - 1, 0, None)
        shown, raw["frame_shot"] = np.unique(shot_of_frame, return_inverse=True)
        captions = [entry["shots"][s][0] for s in shown]
        raw["shot_captions"] = captions
        raw["caption"] = captions[0] if len(captions) == 1 else "; ".join(
            f"shot {i + 1}: {c}" for i, c in enumerate(captions))
        return raw


class VideoFolderSource(_ScannedVideos):
    """Every video under `root` (recursively) that has a same-name `.txt` caption."""

    def __init__(self, root: str, data_cfg, *, seed: int = 0):
        super().__init__(root, data_cfg, seed)
        if not os.path.isdir(root):
            raise ValueError(f"{root}: not a directory (data.path of a video folder)")
        entries = [{"path": path, "caption": caption, "shots": None}
                   for path, caption in captioned_files(root, VIDEO_EXTENSIONS, self._skip)]
        self._finish_scan(entries)


class VideoManifestSource(_ScannedVideos):
    """The videos of a JSONL manifest (module doc), with their captions or shots."""

    def __init__(self, manifest: str, data_cfg, *, seed: int = 0):
        super().__init__(manifest, data_cfg, seed)
        if not os.path.isfile(manifest):
            raise ValueError(f"{manifest}: no such manifest file (data.path of a video_jsonl source)")
        self._finish_scan(manifest_entries(manifest, parse_row, self._skip))


def parse_row(row: dict, path: str, where: str) -> dict:
    """One manifest row -> an entry; BadSample('bad_manifest_line' | 'missing_caption') if it is not one."""
    if "shots" not in row:
        caption = row.get("caption")
        if not isinstance(caption, str) or not caption.strip():
            raise BadSample("missing_caption", where)
        return {"path": path, "caption": caption.strip(), "shots": None}
    shots = row["shots"]
    if not isinstance(shots, list) or not shots:
        raise BadSample("bad_manifest_line", where, "'shots' must be a non-empty list")
    parsed = []
    for shot in shots:
        ok = isinstance(shot, dict) and all(isinstance(shot.get(k), (int, float)) for k in ("start", "end"))
        if not ok or not 0 <= shot["start"] < shot["end"]:
            raise BadSample("bad_manifest_line", where, f"shot {shot!r} needs numbers 0 <= start < end")
        if not isinstance(shot.get("caption"), str) or not shot["caption"].strip():
            raise BadSample("missing_caption", where, f"shot {len(parsed) + 1} has no caption")
        if parsed and shot["start"] < parsed[-1][1]:
            raise BadSample("bad_manifest_line", where, "shots must be in order and must not overlap")
        parsed.append((shot["caption"].strip(), float(shot["start"]), float(shot["end"])))
    return {"path": path, "caption": "", "shots": [(caption, start) for caption, start, _ in parsed]}
