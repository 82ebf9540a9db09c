"""One sample from a source -> one row of the batch contract (docs/internals.md).

Sources return a *raw* sample: a dict with `image` (a PIL image or an array in [0, 1],
any size) or `latent` (float [h, w, c]), a `caption`, and whatever labels they have
(`label`, `scene_*`, `defect_box`/`defect_kind`, `tags`). `finalize` fits it to its
resolution bucket, applies the defect rules, tokenizes the caption and fills the keys the
source does not have, so every sample of a run has the same keys, dtypes and shapes.

Edit triples (sources/edit_triples.py) carry `source` [2, h, w, C] and `target` images and an
`instruction` instead of `image` and `caption`; `finalize_edit` makes their rows. In a mixture
with image sources (`Layout.joint_edits`) every row gets the other kind's keys too.

Bad input raises `BadSample(kind, where)`; the pipeline skips it, counts it by kind and
reports the first file of each kind.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from data_pipelines.core import buckets as buckets_lib
from data_pipelines.core.tokenizer import tokenize
from data_pipelines.sources.edit_triples import MAX_SOURCES, no_edit_labels
from data_pipelines.techniques import defects

# Every reason a sample can be skipped. `defect_area` is by design (Seedream's drop rule);
# the others are bad input.
SKIP_KINDS = (
    "unreadable_image",
    "truncated_image",
    "missing_caption",
    "bad_manifest_line",
    "bad_record",
    "wrong_shape",
    "nan_values",
    "defect_area",
    "unreadable_video",
    "too_short_video",
    "too_many_shots",
)
MAX_OBJECTS = 3  # scene_* rows per sample


class BadSample(Exception):
    """A sample that cannot be used; `kind` is one of SKIP_KINDS, `where` names the file."""

    def __init__(self, kind: str, where: str, detail: str = ""):
        assert kind in SKIP_KINDS, kind
        super().__init__(f"{kind}: {where}" + (f" ({detail})" if detail else ""))
        self.kind, self.where, self.detail = kind, where, detail


@dataclasses.dataclass(frozen=True)
class Layout:
    """What every finalized sample of a run looks like (the union over mixture components)."""

    channels: int
    max_text_len: int
    scene_labels: bool = False  # include scene_digit / scene_color / scene_box / scene_count
    tags: tuple[str, ...] = ()  # multi-hot vocabulary; empty = no `tags` key
    defect_aware: bool = False  # drop heavily-defective samples and mask the loss in boxes
    max_defect_area: float = 0.2
    latent: bool = False  # samples carry `latent` instead of `image`
    text_features: bool = False  # samples carry `text_embeddings` and `pooled`
    video: bool = False  # clips: rows follow data_pipelines/core/clips.py (finalize_clip)
    max_shots: int = 1  # shot caption rows of a clip
    # Image sources mixed with edit triples (unified generation and editing): every row has both
    # kinds of keys; an image row is an edit with no source images, an edit row's `image` is its target.
    joint_edits: bool = False
    # Edit rows keep the generated triples' labels (edit_type_id, changed_boxes, source_* / target_*);
    # False when your own edits (edit_jsonl, which have none) are in the mixture: only num_sources.
    edit_labels: bool = True


def fit_image_array(image, bucket, channels: int) -> tuple[np.ndarray, tuple]:
    """Fit an image (PIL or array in [0, 1]) to the bucket; returns ([H, W, C] in [-1, 1], crop region)."""
    from PIL import Image

    height, width = bucket
    if isinstance(image, np.ndarray):
        if image.dtype == np.uint8:
            image = image.astype(np.float32) / 255.0
        arr = image if image.ndim == 3 else image[..., None]
        if arr.shape[:2] != (height, width):
            mode = "L" if arr.shape[2] == 1 else "RGB"
            pil = Image.fromarray(np.round(np.clip(arr, 0, 1) * 255).astype(np.uint8).squeeze(-1 if mode == "L" else ()), mode)
            return fit_image_array(pil, bucket, channels)
        region = (0.0, 0.0, float(height), float(width))
        arr = arr.astype(np.float32)
    else:
        image = image.convert("L" if channels == 1 else "RGB")
        image, region = buckets_lib.fit_image(image, bucket)
        arr = np.asarray(image, np.float32) / 255.0
        arr = arr if arr.ndim == 3 else arr[..., None]
    if arr.shape[2] != channels:
        if channels == 3:
            arr = np.repeat(arr, 3, axis=2)
        else:  # ITU-R 601 luma, as PIL's convert('L')
            arr = (arr @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]
    return arr * 2.0 - 1.0, region


def _finite(name: str, value, where: str) -> np.ndarray:
    arr = np.asarray(value, np.float32)
    if not np.all(np.isfinite(arr)):
        raise BadSample("nan_values", where, f"{name} has non-finite values")
    return arr


def finalize(raw: dict, bucket: tuple[int, int], layout: Layout, where: str) -> dict:
    """Raw sample -> dict of numpy arrays following the batch contract (one row, no batch axis)."""
    caption = raw.get("caption", "")
    if not isinstance(caption, str) or not caption.strip():
        raise BadSample("missing_caption", where)
    boxes = np.asarray(raw.get("defect_box", np.zeros((0, 4))), np.float32).reshape(-1, 4)
    kinds = np.asarray(raw.get("defect_kind", np.zeros((0,))), np.int32).reshape(-1)
    boxes = defects.valid_boxes(boxes, kinds)
    kinds = kinds[kinds >= 0]

    out = {}
    if layout.latent:
        latent = _finite("latent", raw["latent"], where)
        if latent.shape[:2] != tuple(bucket):
            raise BadSample("wrong_shape", where, f"latent {latent.shape}, bucket {bucket}")
        out["latent"] = latent
        grid = latent.shape[:2]
        target_size = raw["target_size"]
    else:
        out["image"], region = fit_image_array(raw["image"], bucket, layout.channels)
        h, w = raw["image"].shape[:2] if isinstance(raw["image"], np.ndarray) else (raw["image"].height, raw["image"].width)
        boxes = buckets_lib.crop_boxes(boxes, h, w, region)
        grid = bucket
        target_size = bucket
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    boxes, kinds = boxes[keep], kinds[keep]

    # Pixel inputs get `loss_mask` on the image grid, cached latents `latent_loss_mask` on theirs.
    mask_key = "latent_loss_mask" if layout.latent else "loss_mask"
    mask = defects.box_mask(boxes, *grid)
    if layout.defect_aware:
        area = defects.defect_fraction(mask)
        if area > layout.max_defect_area:
            raise BadSample("defect_area", where, f"defects cover {area:.0%}")
        out[mask_key] = mask
    else:
        out[mask_key] = np.ones(grid, np.float32)

    tokens, text_mask = tokenize([caption], layout.max_text_len)
    out["tokens"], out["text_mask"] = tokens[0], text_mask[0]
    for name, text in raw.get("extra_captions", {}).items():  # e.g. reward data's perturbed caption
        tokens, text_mask = tokenize([text], layout.max_text_len)
        out[f"{name}_tokens"], out[f"{name}_text_mask"] = tokens[0], text_mask[0]
    if layout.text_features:
        out["text_embeddings"] = _finite("text_embeddings", raw["text_embeddings"], where)
        out["pooled"] = _finite("pooled", raw["pooled"], where)
        out["text_mask"] = np.asarray(raw["text_mask"], bool)
    out["target_size"] = np.asarray(target_size, np.int32)
    out["label"] = np.int32(raw.get("label", -1))
    out["defect_box"], out["defect_kind"] = defects.padded(boxes, kinds)
    if layout.scene_labels:
        out["scene_digit"] = np.asarray(raw.get("scene_digit", np.full(MAX_OBJECTS, -1)), np.int32)
        out["scene_color"] = np.asarray(raw.get("scene_color", np.full(MAX_OBJECTS, -1)), np.int32)
        out["scene_box"] = np.asarray(raw.get("scene_box", np.zeros((MAX_OBJECTS, 4))), np.float32)
        out["scene_count"] = np.int32(raw.get("scene_count", 0))
    if layout.tags:
        present = set(raw.get("tags", ()))
        out["tags"] = np.array([t in present for t in layout.tags], np.int32)
    if layout.joint_edits:  # a text-to-image row of a joint run: an edit with no source images
        out |= {"source": np.zeros((MAX_SOURCES, *out["image"].shape), np.float32), "target": out["image"],
                **(no_edit_labels(bucket[0]) if layout.edit_labels else {"num_sources": np.int32(0)})}
    return out


def finalize_edit(raw: dict, bucket: tuple[int, int], layout: Layout, where: str) -> dict:
    """Raw edit triple -> one row: `source` [2, H, W, C] and `target` [H, W, C] float32 in [-1, 1],
    the instruction as `tokens` / `text_mask` (the caption keys of every generator batch), and
    every numeric label of the triple as it is (num_sources, edit_type_id, changed_boxes,
    source_* / target_* ...). Strings (instruction, edit_type, target_caption) and lists cannot
    be stacked into a batch and are dropped; the instruction lives on in its tokens."""
    instruction = raw.get("instruction", "")
    if not isinstance(instruction, str) or not instruction.strip():
        raise BadSample("missing_caption", where, "no instruction")
    if "changed_boxes" in raw:  # generated triples: labels and boxes are in the rendered image
        sources, target = np.asarray(raw["source"]), np.asarray(raw["target"])
        if target.shape[:2] != tuple(bucket) or sources.shape[1:3] != tuple(bucket):  # fitting would move them
            raise BadSample("wrong_shape", where, f"source {sources.shape}, target {target.shape}, bucket {bucket}")
    else:  # your own (sources/user_edits.py): PIL images of any size, fit alike; empty slots after them
        sources, target = list(raw["source"]), raw["target"]
    out = {
        "source": np.stack([fit_image_array(image, bucket, layout.channels)[0] for image in sources]),
        "target": fit_image_array(target, bucket, layout.channels)[0],
    }
    missing = MAX_SOURCES - len(out["source"])
    if missing:
        out["source"] = np.concatenate([out["source"], np.zeros((missing, *out["target"].shape), np.float32)])
    tokens, text_mask = tokenize([instruction], layout.max_text_len)
    out["tokens"], out["text_mask"] = tokens[0], text_mask[0]
    for key, value in raw.items():
        if key not in out and isinstance(value, (np.ndarray, np.generic)) and value.dtype.kind in "biuf":
            out[key] = np.asarray(value)
    if not layout.edit_labels:  # a mixture with your own edits: the keys every edit row has
        out = {k: v for k, v in out.items() if k in ("source", "target", "tokens", "text_mask", "num_sources")}
    if layout.tags:  # an explicit data.tags vocabulary: every row of the run has `tags`
        present = set(raw.get("tags", ()))
        out["tags"] = np.array([t in present for t in layout.tags], np.int32)
    if layout.joint_edits:  # the keys of an image row: the target is the image, without defects
        out |= {"image": out["target"], "loss_mask": np.ones(bucket, np.float32),
                "target_size": np.asarray(bucket, np.int32), "label": np.int32(-1)}
        out["defect_box"], out["defect_kind"] = defects.padded(np.zeros((0, 4), np.float32), np.zeros((0,), np.int32))
        if layout.scene_labels:  # the target's scene, where it is known (generated triples)
            out |= {f"scene_{k}": np.asarray(raw[f"target_{k}"]) if f"target_{k}" in raw else empty
                    for k, empty in (("digit", np.full(MAX_OBJECTS, -1, np.int32)),
                                     ("color", np.full(MAX_OBJECTS, -1, np.int32)),
                                     ("box", np.zeros((MAX_OBJECTS, 4), np.float32)), ("count", np.int32(0)))}
    return out
