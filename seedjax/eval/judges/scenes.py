"""GenEval-style scoring of generated `digit_scenes` images.

Objects are found by color segmentation: a pixel belongs to a palette color when it is bright and
saturated enough and its hue is within `HUE_TOLERANCE` of that color's hue (the palette hues are
at least 40 degrees apart). Connected components of each color, after a one-pixel dilation that
bridges small gaps in strokes, are the objects; tiny ones (color fringes, noise) are dropped.
Each object's glyph (its own pixels only, framed like a real digit) is read by the independent
digit classifier.

Checks per image, against the labels the scene was generated from:
- count: the number of objects equals scene_count;
- color: every requested color is present (as a multiset: two red digits need two red objects);
- digit: every requested (digit, color) pair is present (multiset);
- position: (scenes with 2+ objects) some object matching the first request and a different one
  matching the second stand in the requested relation (left of / right of / above / below,
  from the dominant axis of their centers, exactly as captions are written);
- overall: all of the above.
"""

from __future__ import annotations

import collections
import dataclasses

import numpy as np
import scipy.ndimage as ndi
from PIL import Image
from skimage.color import rgb2hsv

from data_pipelines.sources.scenes import PALETTE, relation
from seedjax.eval.judges.classifier import DigitClassifier, get_classifier

HUE_TOLERANCE = 30.0  # degrees
MIN_VALUE = 0.25  # pixel brightness (max channel) to count as ink
MIN_SATURATION = 0.4
MIN_AREA = 0.003  # of the image, for an object
MIN_RELATIVE_AREA = 0.12  # of the image's largest object
GLYPH_FILL = 0.85  # real glyphs span ~85% of their 8x8 frame; crops are framed the same way

_PALETTE_HUES = rgb2hsv(np.array([[c for _, c in PALETTE]], np.float64) / 255.0)[0, :, 0] * 360.0


@dataclasses.dataclass
class SceneObject:
    color: int
    digit: int
    box: tuple[float, float, float, float]  # (y0, x0, y1, x1) in [0, 1]
    area: float  # fraction of the image


def _to_unit_rgb(images) -> np.ndarray:
    x = np.asarray(images)
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"score_scenes: images must be RGB [N, H, W, 3], got shape {x.shape}")
    if x.dtype == np.uint8:
        return x.astype(np.float32) / 255.0
    return np.clip((x.astype(np.float32) + 1.0) / 2.0, 0.0, 1.0)


def color_map(image01: np.ndarray) -> np.ndarray:
    """Palette index per pixel [..., H, W] of RGB [..., H, W, 3] in [0, 1] (-1: no palette color)."""
    hsv = rgb2hsv(image01)
    hue_gap = np.abs(hsv[..., :1] * 360.0 - _PALETTE_HUES)
    hue_gap = np.minimum(hue_gap, 360.0 - hue_gap)
    nearest = hue_gap.argmin(-1)
    ok = (hsv[..., 2] >= MIN_VALUE) & (hsv[..., 1] >= MIN_SATURATION) & (hue_gap.min(-1) <= HUE_TOLERANCE)
    return np.where(ok, nearest, -1)


def _glyph_crop(intensity: np.ndarray, mask: np.ndarray, size: int) -> np.ndarray:
    """The object's own ink, framed like a real digit (square, centered), resized to size x size."""
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    side = max(y1 - y0, x1 - x0) / GLYPH_FILL
    cy, cx = (y0 + y1) / 2, (x0 + x1) / 2
    top, left = int(round(cy - side / 2)), int(round(cx - side / 2))
    side = int(round(side))
    ink = np.where(mask, intensity, 0.0).astype(np.float32)
    canvas = np.zeros((side, side), np.float32)
    sy0, sx0 = max(top, 0), max(left, 0)
    sy1, sx1 = min(top + side, ink.shape[0]), min(left + side, ink.shape[1])
    canvas[sy0 - top : sy1 - top, sx0 - left : sx1 - left] = ink[sy0:sy1, sx0:sx1]
    return np.asarray(Image.fromarray(canvas, mode="F").resize((size, size), Image.BILINEAR), np.float32)


def _segment(colors: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """(palette index, pixel mask) of each object in one image's color map."""
    h, w = colors.shape
    found = []
    for c in np.unique(colors[colors >= 0]):
        mask = colors == c
        labels, _ = ndi.label(ndi.binary_dilation(mask), structure=np.ones((3, 3)))
        labels = np.where(mask, labels, 0)
        areas = np.bincount(labels.ravel())
        found += [(int(c), labels == k, areas[k]) for k in np.flatnonzero(areas >= MIN_AREA * h * w) if k > 0]
    largest = max((area for _, _, area in found), default=0)
    return [(c, mask) for c, mask, area in found if area >= MIN_RELATIVE_AREA * largest]


def detect_objects(images, classifier: DigitClassifier | None = None) -> list[list[SceneObject]]:
    """The colored digits in each image (RGB, [-1, 1] float or uint8), with their classified digit."""
    classifier = classifier or get_classifier()
    rgb = _to_unit_rgb(images)
    colors = color_map(rgb)
    per_image, crops = [], []
    for image, image_colors in zip(rgb, colors):
        h, w = image.shape[:2]
        intensity = image.max(-1)
        objects = []
        for color, mask in _segment(image_colors):
            ys, xs = np.nonzero(mask)
            box = (ys.min() / h, xs.min() / w, (ys.max() + 1) / h, (xs.max() + 1) / w)
            objects.append(SceneObject(color, -1, box, float(mask.mean())))
            crops.append(_glyph_crop(intensity, ndi.binary_dilation(mask), classifier.image_size))
        per_image.append(objects)
    if crops:
        digits = iter(classifier.predict(np.stack(crops)[..., None] * 2.0 - 1.0))
        for objects in per_image:
            for obj in objects:
                obj.digit = int(next(digits))
    return per_image


def _contains(found: collections.Counter, wanted: collections.Counter) -> bool:
    return all(found[k] >= n for k, n in wanted.items())


def _position_ok(objects: list[SceneObject], want_a: tuple[int, int], want_b: tuple[int, int], rel: str) -> bool:
    for i, a in enumerate(objects):
        for j, b in enumerate(objects):
            if i != j and (a.digit, a.color) == want_a and (b.digit, b.color) == want_b and relation(a.box, b.box) == rel:
                return True
    return False


def score_scenes(images, scene_digit, scene_color, scene_box, scene_count,
                 classifier: DigitClassifier | None = None) -> dict:
    """Per-image booleans ('digit', 'count', 'color', 'position', 'overall', and
    'position_applicable' for scenes with 2+ objects) and their means ('<check>_accuracy';
    position averaged over applicable scenes only)."""
    scene_digit, scene_color = np.asarray(scene_digit), np.asarray(scene_color)
    scene_box, scene_count = np.asarray(scene_box), np.asarray(scene_count)
    n = len(images)
    if scene_digit.shape[0] != n or scene_color.shape[0] != n or scene_box.shape[0] != n or scene_count.shape != (n,):
        raise ValueError(f"score_scenes: labels {scene_digit.shape}, {scene_color.shape}, {scene_box.shape}, "
                         f"{scene_count.shape} do not match {n} images")
    detections = detect_objects(images, classifier)
    result = {k: np.zeros(n, bool) for k in ("digit", "count", "color", "position", "position_applicable")}
    for i, objects in enumerate(detections):
        k = int(scene_count[i])
        want_pairs = list(zip(scene_digit[i, :k].tolist(), scene_color[i, :k].tolist()))
        result["count"][i] = len(objects) == k
        result["color"][i] = _contains(collections.Counter(o.color for o in objects),
                                       collections.Counter(c for _, c in want_pairs))
        result["digit"][i] = _contains(collections.Counter((o.digit, o.color) for o in objects),
                                       collections.Counter(want_pairs))
        if k >= 2:
            result["position_applicable"][i] = True
            rel = relation(scene_box[i, 0], scene_box[i, 1])
            result["position"][i] = _position_ok(objects, want_pairs[0], want_pairs[1], rel)
    applicable = result["position_applicable"]
    result["overall"] = result["digit"] & result["count"] & result["color"] & (result["position"] | ~applicable)
    for key in ("digit", "count", "color", "overall"):
        result[f"{key}_accuracy"] = float(result[key].mean())
    result["position_accuracy"] = float(result["position"][applicable].mean()) if applicable.any() else float("nan")
    return result
