"""Judging edits of `digit_scenes` (data_pipelines/sources/edit_triples.py) from pixels alone.

An edited image is read by the independent scene scorer (`scenes.detect_objects`: color
segmentation and the digit classifier) and compared with the labels of the triple it answers:

- edit: what the instruction asked for is in the image (`edit_confirmed`): the new or changed
  object stands where the target's labels put it, a recolored or replaced object's old look is
  gone, a removed object is gone, a resized object grew or shrank the way asked, a composed
  object is the only one;
- scene: the whole image is the target scene (`scenes.score_scenes` on the target's labels:
  count, colors, digits, relation);
- success: both;
- preservation (single-image edits): PSNR against the source outside the changed boxes, and the
  share of the source's untouched objects found again with the same digit and color at the
  same place.
"""

from __future__ import annotations

import collections

import numpy as np

from data_pipelines.sources.edit_triples import EDIT_TYPES
from seedjax.eval.judges import scenes

CENTER_TOLERANCE = 0.1  # of the image side: how far a found object's center may be from its label's


def _find(found, digit, color) -> list:
    return [o for o in found if (o.digit, o.color) == (int(digit), int(color))]


def _near(obj, box, tol: float = CENTER_TOLERANCE) -> bool:
    """The found object's center is within `tol` of the labelled box's center (both in [0, 1])."""
    return all(abs((obj.box[a] + obj.box[a + 2]) / 2 - (box[a] + box[a + 2]) / 2) <= tol for a in (0, 1))


def _height(box) -> float:
    return box[2] - box[0]


def edit_confirmed(row: dict, found: list, found_source: list) -> bool:
    """Whether the objects `found` in an image show the edit of triple `row` (its numeric labels,
    one example's); `found_source` are the objects found in its first source image."""
    kind, k, j = EDIT_TYPES[int(row["edit_type_id"])], int(row["source_slot"]), int(row["target_slot"])
    if kind == "remove":
        return not _find(found, row["source_digit"][0, k], row["source_color"][0, k])
    hit = [o for o in _find(found, row["target_digit"][j], row["target_color"][j]) if _near(o, row["target_box"][j])]
    if len(hit) != 1:
        return False
    if kind == "compose":
        return len(found) == 1
    if kind in ("recolor", "replace_digit"):  # the old object is gone
        return not _find(found, row["source_digit"][0, k], row["source_color"][0, k])
    if kind == "resize":
        before = [o for o in found_source if _near(o, row["source_box"][0, k])]
        if len(before) != 1:
            return False
        change = _height(hit[0].box) - _height(before[0].box)
        return change > 0 if _height(row["target_box"][j]) > _height(row["source_box"][0, k]) else change < 0
    return True  # move, add: the object is where the labels put it


def _outside_changed(size: int, changed_boxes: np.ndarray) -> np.ndarray:
    """[size, size] bool: pixels outside every (non-empty) changed box."""
    keep = np.ones((size, size), bool)
    for y0, x0, y1, x1 in changed_boxes:
        if y1 > y0 and x1 > x0:
            keep[int(np.floor(y0 * size)):int(np.ceil(y1 * size)), int(np.floor(x0 * size)):int(np.ceil(x1 * size))] = False
    return keep


def preserved_psnr(image: np.ndarray, source: np.ndarray, changed_boxes: np.ndarray) -> float:
    """PSNR (dB, images in [-1, 1] as 8-bit range) of `image` against `source` outside the changed boxes."""
    keep = _outside_changed(image.shape[0], changed_boxes)
    diff = (np.asarray(image, np.float64) - np.asarray(source, np.float64))[keep] / 2.0  # [0, 1] units
    mse = float(np.mean(diff**2)) if diff.size else 0.0
    return float("inf") if mse == 0 else 10.0 * np.log10(1.0 / mse)


def untouched_kept(row: dict, found: list) -> tuple[int, int]:
    """(untouched source objects found again with their digit and color at their place, untouched objects)."""
    kind, k = EDIT_TYPES[int(row["edit_type_id"])], int(row["source_slot"])
    count = int(row["source_count"][0])
    others = [i for i in range(count) if not (kind != "add" and i == k)]
    kept = sum(any(_near(o, row["source_box"][0, i]) for o in _find(found, row["source_digit"][0, i],
                                                                      row["source_color"][0, i])) for i in others)
    return kept, len(others)


def judge_edits(images, batch: dict, classifier=None) -> dict:
    """Per-image verdicts on edited `images` [N, H, W, 3] in [-1, 1] for the triples in `batch`
    (numeric labels, `source` [N, 2, H, W, 3]): bool arrays 'edit', 'scene', 'success', float
    'psnr' (NaN for compose), int 'kept' / 'untouched', and 'edit_type' ids."""
    images = np.asarray(images)
    n = len(images)
    row = lambda i: {k: np.asarray(v)[i] for k, v in batch.items()}
    found = scenes.detect_objects(images, classifier)
    found_source = scenes.detect_objects(np.asarray(batch["source"])[:, 0], classifier)
    scene = scenes.score_scenes(images, *(batch[f"target_{k}"] for k in ("digit", "color", "box", "count")),
                                classifier=classifier)["overall"]
    out = {"edit": np.zeros(n, bool), "scene": np.asarray(scene, bool), "psnr": np.full(n, np.nan),
           "kept": np.zeros(n, int), "untouched": np.zeros(n, int),
           "edit_type": np.asarray(batch["edit_type_id"]).astype(int)}
    for i in range(n):
        r = row(i)
        out["edit"][i] = edit_confirmed(r, found[i], found_source[i])
        if EDIT_TYPES[int(r["edit_type_id"])] != "compose":
            out["psnr"][i] = preserved_psnr(images[i], np.asarray(batch["source"])[i, 0], r["changed_boxes"])
            out["kept"][i], out["untouched"][i] = untouched_kept(r, found[i])
    out["success"] = out["edit"] & out["scene"]
    return out


def summarize(verdicts: dict, prefix: str = "") -> dict[str, float]:
    """Means of `judge_edits`' verdicts: success overall and per edit type, and preservation
    (PSNR averaged in the MSE domain is not what papers report: this is the mean of per-image
    PSNR, infinite values capped at 60 dB) over single-image edits."""
    out = {f"{prefix}edit_success": float(np.mean(verdicts["success"])),
           f"{prefix}edit_confirmed": float(np.mean(verdicts["edit"]))}
    per_type = collections.defaultdict(list)
    for kind, ok in zip(verdicts["edit_type"], verdicts["success"]):
        per_type[EDIT_TYPES[kind]].append(ok)
    out.update({f"{prefix}edit_success/{kind}": float(np.mean(v)) for kind, v in sorted(per_type.items())})
    single = ~np.isnan(verdicts["psnr"])
    if single.any():
        out[f"{prefix}preserved_psnr"] = float(np.mean(np.minimum(verdicts["psnr"][single], 60.0)))
        untouched = verdicts["untouched"][single].sum()
        if untouched:
            out[f"{prefix}untouched_kept"] = float(verdicts["kept"][single].sum() / untouched)
    return out
