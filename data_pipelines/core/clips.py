"""Video clips: (frames, height, width) buckets and the clip rows of the batch contract.

Video sources (`data.source` = moving_digits, video_folder, video_jsonl, or shards of video
latents) return a *raw clip*: `video` [F, h, w, C] (uint8 or float in [0, 1], exactly the
bucket's F frames, any h, w) or `latent` [f, h, w, c], a `caption`, optionally per-shot
captions `shot_captions` (default: the caption is shot 0), `frame_shot` [F] (default: all 0),
and the judges' labels `shot_digit`, `shot_color`, `shot_motion` [n, 2], `shot_turn_frame`.
`finalize_clip` turns it into one row:

    video [F, H, W, C] float32 in [-1, 1]   (latent shards: latent [f, h, w, c] instead)
    tokens [T] int32, text_mask [T] bool   the whole caption (T = data.max_text_len)
    shot_tokens [S, T] int32, shot_mask [S, T] bool   per-shot captions (S = data.video.max_shots;
                                           unused shots: all-False mask)
    frame_shot [F] int32                   the shot of every frame (latents: of every latent frame)
    shot_digit, shot_color, shot_turn_frame [S] int32, shot_motion [S, 2] int32   (-1 = none/unused)

Buckets are written 'FxHxW,...'. A source with fixed buckets (generated clips) puts each
sample in the bucket of its own size; otherwise a clip of `frames` available frames (at
data.video.fps) may serve every bucket with F <= frames, and among the buckets of one F the
spatial rule of image buckets picks (closest aspect ratio, then the largest that does not
upsample). A '1xHxW' bucket is text-to-image: a still frame of the clip.
"""

from __future__ import annotations

import numpy as np

from data_pipelines.core import buckets as buckets_lib
from data_pipelines.core.samples import BadSample, fit_image_array
from data_pipelines.core.tokenizer import PAD, tokenize

Bucket = tuple[int, int, int]  # (frames, height, width)
LABEL_KEYS = ("shot_digit", "shot_color", "shot_turn_frame")


def parse_video_buckets(spec: str, num_frames: int, image_size: int) -> list[Bucket]:
    """'FxHxW,...' -> [(F, H, W), ...]; '' is the one bucket num_frames x image_size x image_size."""
    if not spec.strip():
        if num_frames < 1 or image_size < 1:
            raise ValueError(f"data.video.num_frames ({num_frames}) and data.image_size ({image_size}) must be >= 1")
        return [(num_frames, image_size, image_size)]
    out = []
    for item in spec.split(","):
        parts = item.strip().lower().split("x")
        if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
            raise ValueError(f"data.video.buckets: {item.strip()!r} is not FxHxW with positive integers (in {spec!r})")
        bucket = (int(parts[0]), int(parts[1]), int(parts[2]))
        if bucket in out:
            raise ValueError(f"data.video.buckets: {item.strip()!r} is listed twice (in {spec!r})")
        out.append(bucket)
    return out


def video_buckets(data_cfg) -> list[Bucket]:
    return parse_video_buckets(data_cfg.video.buckets, data_cfg.video.num_frames, data_cfg.image_size)


def bucket_weights(data_cfg) -> dict[Bucket, float] | None:
    """data.video.bucket_weights as {bucket: weight}; None when unset (weights by sample count)."""
    spec = data_cfg.video.bucket_weights.strip()
    if not spec:
        return None
    buckets = video_buckets(data_cfg)
    try:
        weights = [float(w) for w in spec.split(",")]
    except ValueError:
        raise ValueError(f"data.video.bucket_weights: {spec!r} is not a comma-separated list of numbers") from None
    if len(weights) != len(buckets) or min(weights) < 0 or sum(weights) <= 0:
        raise ValueError(f"data.video.bucket_weights: {spec!r} needs one weight >= 0 per bucket of "
                         f"data.video.buckets ({len(buckets)}), not all 0")
    return dict(zip(buckets, weights))


def shortest_clip(buckets: list[Bucket]) -> int:
    """Frames a video needs to serve any bucket: the fewest frames of a multi-frame bucket (1 if none)."""
    return min((b[0] for b in buckets if b[0] > 1), default=1)


def members(sizes: np.ndarray, buckets: list[Bucket], fixed: bool) -> dict[Bucket, np.ndarray]:
    """Sample indices per bucket from their (frames, height, width) [N, 3] (see the module doc)."""
    sizes = np.asarray(sizes, np.int64).reshape(-1, 3)
    out = {}
    if fixed:
        for b in buckets:
            idx = np.flatnonzero(np.all(sizes == np.asarray(b), axis=1))
            if len(idx):
                out[b] = idx
        return out
    for frames in sorted({b[0] for b in buckets}):
        group = [b for b in buckets if b[0] == frames]
        long_enough = np.flatnonzero(sizes[:, 0] >= frames)
        if not len(long_enough):
            continue
        assigned = buckets_lib.assign_buckets(sizes[long_enough, 1:], [b[1:] for b in group])
        for i, b in enumerate(group):
            if np.any(assigned == i):
                out[b] = long_enough[assigned == i]
    return {b: out[b] for b in buckets if b in out}  # in the configured order


def latent_bucket(bucket: Bucket, temporal_factor: int, spatial_factor: int) -> Bucket:
    """The latent shape (f, h, w) a causal video VAE makes of a pixel bucket (F = 1 + k * temporal_factor)."""
    frames, height, width = bucket
    return (1 + (frames - 1) // temporal_factor, height // spatial_factor, width // spatial_factor)


def latent_frame_shot(frame_shot: np.ndarray, temporal_factor: int) -> np.ndarray:
    """The shot of every latent frame: latent frame 0 is pixel frame 0, latent frame j >= 1 covers
    pixel frames tf*(j-1)+1 .. tf*j and takes the shot of the last of them (pixel frame tf*j)."""
    frame_shot = np.asarray(frame_shot, np.int32)
    latent_frames = 1 + (len(frame_shot) - 1) // temporal_factor
    return frame_shot[np.arange(latent_frames) * temporal_factor]


def fit_clip(video: np.ndarray, size: tuple[int, int], channels: int) -> np.ndarray:
    """[F, h, w, C] frames (uint8 or [0, 1]) -> [F, H, W, channels] float32 in [-1, 1], each frame
    resized to cover (H, W) and centre-cropped like an image."""
    return np.stack([fit_image_array(frame, size, channels)[0] for frame in np.asarray(video)])


def _labels(raw: dict, shots: int, max_shots: int) -> dict:
    out = {}
    for key in LABEL_KEYS:
        values = np.full(max_shots, -1, np.int32)
        if key in raw:
            values[:shots] = np.asarray(raw[key], np.int32).reshape(-1)[:shots]
        out[key] = values
    motion = np.full((max_shots, 2), -1, np.int32)
    if "shot_motion" in raw:
        motion[:shots] = np.asarray(raw["shot_motion"], np.int32).reshape(-1, 2)[:shots]
    out["shot_motion"] = motion
    return out


def finalize_clip(raw: dict, bucket: Bucket, layout, where: str) -> dict:
    """Raw clip -> one row of the video batch contract (module doc); BadSample if it cannot be."""
    caption = raw.get("caption", "")
    if not isinstance(caption, str) or not caption.strip():
        raise BadSample("missing_caption", where)
    shots = list(raw.get("shot_captions") or [caption])
    if len(shots) > layout.max_shots:
        raise BadSample("too_many_shots", where, f"{len(shots)} shots, data.video.max_shots is {layout.max_shots}")
    if not all(isinstance(s, str) and s.strip() for s in shots):
        raise BadSample("missing_caption", where, "a shot has no caption")

    out = {}
    if layout.latent:
        latent = np.asarray(raw["latent"], np.float32)
        if latent.shape[:3] != tuple(bucket):
            raise BadSample("wrong_shape", where, f"latent {latent.shape}, bucket {bucket}")
        if not np.all(np.isfinite(latent)):
            raise BadSample("nan_values", where, "latent has non-finite values")
        out["latent"] = latent
    else:
        video = np.asarray(raw["video"])
        if video.ndim != 4 or video.shape[0] != bucket[0]:
            raise BadSample("wrong_shape", where, f"video {video.shape}, bucket {bucket}")
        out["video"] = fit_clip(video, bucket[1:], layout.channels)
    frames = bucket[0]
    frame_shot = np.asarray(raw.get("frame_shot", np.zeros(frames)), np.int32).reshape(-1)
    if len(frame_shot) != frames or frame_shot.min() < 0 or frame_shot.max() >= len(shots):
        raise BadSample("wrong_shape", where,
                        f"frame_shot {frame_shot.tolist()} for {frames} frames, {len(shots)} shots")

    out["tokens"], out["text_mask"] = (a[0] for a in tokenize([caption], layout.max_text_len))
    shot_tokens, shot_mask = tokenize(shots + [""] * (layout.max_shots - len(shots)), layout.max_text_len)
    shot_tokens[len(shots):] = PAD  # unused shots: all padding, all-False mask
    out["shot_tokens"], out["shot_mask"] = shot_tokens, shot_tokens != PAD
    out["frame_shot"] = frame_shot
    out.update(_labels(raw, len(shots), layout.max_shots))
    return out
