"""Resolution buckets: every global batch has one (height, width), so shapes stay static.

A bucket list is written `"HxW,HxW,..."` (e.g. `"32x32,24x40,40x24,64x64"`). Each image
goes to the bucket whose aspect ratio is closest to its own; among buckets of that aspect
ratio, to the largest one that does not upsample it (or the smallest, if all would). The
image is then resized to cover the bucket and centre-cropped, and its defect boxes follow.
"""

from __future__ import annotations

import numpy as np

Bucket = tuple[int, int]  # (height, width)


def parse_buckets(spec: str, image_size: int) -> list[Bucket]:
    """'HxW,HxW' -> [(H, W), ...]; an empty spec is the one square bucket image_size x image_size."""
    if not spec.strip():
        return [(image_size, image_size)]
    buckets = []
    for item in spec.split(","):
        parts = item.strip().lower().split("x")
        if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
            raise ValueError(f"data.buckets: {item.strip()!r} is not HxW with positive integers (in {spec!r})")
        bucket = (int(parts[0]), int(parts[1]))
        if bucket in buckets:
            raise ValueError(f"data.buckets: {item.strip()!r} is listed twice (in {spec!r})")
        buckets.append(bucket)
    return buckets


def bucket_name(bucket: tuple[int, ...]) -> str:
    """'HxW' (video buckets: 'FxHxW')."""
    return "x".join(str(int(n)) for n in bucket)


def assign_buckets(sizes: np.ndarray, buckets: list[Bucket]) -> np.ndarray:
    """int32 [N]: the bucket index of each image, from its native (height, width) [N, 2]."""
    sizes = np.asarray(sizes, np.float64).reshape(-1, 2)
    b = np.asarray(buckets, np.float64)
    log_aspect = np.log(sizes[:, 1] / sizes[:, 0])[:, None] - np.log(b[:, 1] / b[:, 0])[None, :]
    aspect_gap = np.round(np.abs(log_aspect), 6)
    best_aspect = aspect_gap == aspect_gap.min(axis=1, keepdims=True)
    area = (sizes[:, 0] * sizes[:, 1])[:, None]
    bucket_area = (b[:, 0] * b[:, 1])[None, :]
    fits = best_aspect & (bucket_area <= area)
    # Largest bucket that fits; if none fits, the smallest one of the right aspect.
    largest_fitting = np.where(fits, bucket_area, -np.inf).argmax(axis=1)
    smallest = np.where(best_aspect, bucket_area, np.inf).argmin(axis=1)
    return np.where(fits.any(axis=1), largest_fitting, smallest).astype(np.int32)


def cover_crop(height: int, width: int, bucket: Bucket) -> tuple[float, float, float, float]:
    """The centred source region (top, left, bottom, right) in pixels with the bucket's aspect ratio."""
    bh, bw = bucket
    scale = max(bh / height, bw / width)
    crop_h, crop_w = bh / scale, bw / scale
    top, left = (height - crop_h) / 2, (width - crop_w) / 2
    return top, left, top + crop_h, left + crop_w


def fit_image(image, bucket: Bucket):
    """Resize a PIL image to cover `bucket` and centre-crop it; returns (image, crop region)."""
    from PIL import Image

    region = cover_crop(image.height, image.width, bucket)
    if image.size == (bucket[1], bucket[0]):
        return image, region
    top, left, bottom, right = region
    out = image.resize((bucket[1], bucket[0]), Image.BICUBIC, box=(left, top, right, bottom), reducing_gap=3.0)
    return out, region


def crop_boxes(boxes: np.ndarray, height: int, width: int, region) -> np.ndarray:
    """Move [K, 4] normalised boxes of a (height, width) image into the crop `region`, clipped to [0, 1].

    Boxes that fall outside the crop come back empty (y1 <= y0 or x1 <= x0).
    """
    top, left, bottom, right = region
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    ys = (boxes[:, [0, 2]] * height - top) / (bottom - top)
    xs = (boxes[:, [1, 3]] * width - left) / (right - left)
    out = np.stack([ys[:, 0], xs[:, 0], ys[:, 1], xs[:, 1]], axis=1)
    return np.clip(out, 0.0, 1.0).astype(np.float32)

