"""Defect boxes -> loss masks (Seedream 3.0 defect-aware training).

A defect (watermark, mosaic, subtitle bar, overlaid text) is a box (y0, x0, y1, x1) in
[0, 1] image coordinates. A sample whose defects cover more than a threshold of the image
is dropped; the others keep a mask that is 0 inside the boxes so the flow-matching loss
ignores those pixels. Rasterising is conservative: a pixel (or patch) that a box touches at
all is masked, so no defect pixel ever contributes to the loss.
"""

from __future__ import annotations

import numpy as np

# Indices into this tuple are the `defect_kind` values in a batch; -1 = no defect.
DEFECT_KINDS = ("watermark", "mosaic", "subtitle", "other")
MAX_DEFECTS = 4  # boxes kept per sample in a batch (`defect_box` [B, 4, 4])
EPS = 1e-3  # in pixels


def box_mask(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """float32 [height, width]: 0 on every pixel a box overlaps, 1 elsewhere.

    `boxes` is [K, 4] (y0, x0, y1, x1) in [0, 1]; empty boxes (y1 <= y0 or x1 <= x0) are
    ignored, so zero-padded rows are harmless. Pixel r spans [r / H, (r + 1) / H); it is
    masked when a box overlaps it by more than EPS pixels in both directions.
    """
    mask = np.ones((height, width), np.float32)
    for y0, x0, y1, x1 in np.asarray(boxes, np.float64).reshape(-1, 4):
        if y1 <= y0 or x1 <= x0:
            continue
        # Overlaps under EPS of a pixel are float32 noise in the box coordinates, not defects.
        r0, r1 = int(np.floor(y0 * height + EPS)), int(np.ceil(y1 * height - EPS))
        c0, c1 = int(np.floor(x0 * width + EPS)), int(np.ceil(x1 * width - EPS))
        mask[max(r0, 0) : min(r1, height), max(c0, 0) : min(c1, width)] = 0.0
    return mask


def patch_grid_mask(mask: np.ndarray, patch: int) -> np.ndarray:
    """Reduce a [..., H, W] pixel mask to the [..., H / patch, W / patch] token grid.

    A token keeps weight 1 only when every pixel of its patch does (min-pooling), so a
    token that sees any defect pixel is excluded from the loss.
    """
    *lead, h, w = mask.shape
    if h % patch or w % patch:
        raise ValueError(f"patch_grid_mask: mask of shape {mask.shape} is not divisible by patch {patch}")
    grid = mask.reshape(*lead, h // patch, patch, w // patch, patch)
    return grid.min(axis=(-3, -1))


def defect_fraction(mask: np.ndarray) -> float:
    """Fraction of the image covered by defects (area of the union of the boxes)."""
    return float(1.0 - mask.mean())


def valid_boxes(boxes: np.ndarray, kinds: np.ndarray) -> np.ndarray:
    """The rows of `boxes` whose kind is a real defect (kind >= 0)."""
    return np.asarray(boxes, np.float32).reshape(-1, 4)[np.asarray(kinds).reshape(-1) >= 0]


def padded(boxes: np.ndarray, kinds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """First MAX_DEFECTS boxes and kinds, padded with zero boxes and kind -1."""
    out_boxes = np.zeros((MAX_DEFECTS, 4), np.float32)
    out_kinds = np.full((MAX_DEFECTS,), -1, np.int32)
    n = min(len(kinds), MAX_DEFECTS)
    out_boxes[:n] = np.asarray(boxes, np.float32).reshape(-1, 4)[:n]
    out_kinds[:n] = np.asarray(kinds, np.int32)[:n]
    return out_boxes, out_kinds
