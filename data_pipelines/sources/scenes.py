"""`digit_scenes`: real digit glyphs composed into colored scenes, with labels and defects.

A scene is 1 to `max_objects` real handwritten digits (from `data_pipelines.sources.glyphs`, so the
train/test split is the project's one split), each upsampled to a random size, tinted with a
palette color and placed without overlap on a dark background. The caption states the digits,
their colors, the count and the spatial relation between the first two objects. The structured
labels come with the sample (the caption is never parsed back), so evaluation checks digit,
color, count and position against ground truth.

Optional stamped defects imitate what web images carry: a semi-transparent watermark text, a
mosaic (pixelated) patch over an object, and a subtitle bar. Their boxes are recorded, so the
defect-aware pipeline can mask or filter them and the stamp detector can be trained and tested.

Everything is a pure function of (seed, index): `make_scene(i, cfg, seed)` is random access,
which is what a Grain source needs.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from data_pipelines.sources import glyphs

# Six hues at least 40 degrees apart, so a color is recognisable from its hue alone even after
# blending with the background or blurring (the scene scorer classifies pixels by hue).
PALETTE: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("red", (235, 45, 45)),
    ("yellow", (235, 220, 40)),
    ("green", (50, 205, 70)),
    ("cyan", (30, 210, 225)),
    ("blue", (55, 100, 255)),
    ("purple", (185, 70, 235)),
)
COLOR_NAMES = tuple(name for name, _ in PALETTE)
DEFECT_KINDS = ("watermark", "mosaic", "subtitle")
RELATIONS = ("left of", "right of", "above", "below")
MAX_DEFECTS = 4
# Mosaic block and patch sides as fractions of the image. Blocks are clearly coarser than a glyph's
# own 8x8 grid (2-3 px at 64x64), as censoring mosaics are; finer blocks would look like the
# bilinear-upsampled glyph itself.
MOSAIC_BLOCK = (0.09, 0.14)
MOSAIC_SIDE = (0.25, 0.55)
MAX_SLOTS = 3  # label arrays are padded to this many objects (batch contract: scene_digit [B, 3])

# Every tag a scene can carry, in a fixed order, for multi-hot encoding in the data pipeline.
TAG_VOCAB: tuple[str, ...] = (
    tuple(f"count:{n}" for n in range(1, MAX_SLOTS + 1))
    + tuple(f"digit:{d}" for d in range(10))
    + tuple(f"color:{c}" for c in COLOR_NAMES)
    + tuple(f"relation:{r}" for r in RELATIONS)
    + tuple(f"defect:{k}" for k in DEFECT_KINDS)
)

_WATERMARK_TEXTS = ("SAMPLE", "stock", "(c) seed", "PREVIEW", "draft", "demo", "photo", "COPY")
_SUBTITLE_TEXTS = ("hello there", "where to?", "I see it", "not now", "run!", "look here", "ok then")

# Held-out prompt sets draw from their own random stream so they never repeat a training scene.
_TRAIN_STREAM, _HELD_OUT_STREAM = 0, 1


@dataclasses.dataclass(frozen=True)
class SceneConfig:
    """How scenes are drawn.

    long_tail: 0 draws digits and colors uniformly; s > 0 draws id k with probability
      proportional to (k + 1) ** -s (Zipf-like; digit 0 and 'red' are the head).
    defect_fraction: probability that a scene is stamped with 1 or 2 defects of `defect_kinds`.
    split: which digits split the glyphs come from ('train' or 'test').
    object_size: (min, max) side of an object's square box as a fraction of the image side;
      scenes of three objects cap it at 0.36 so that they fit.
    """

    image_size: int = 64
    max_objects: int = 3
    long_tail: float = 0.0
    defect_fraction: float = 0.0
    defect_kinds: tuple[str, ...] = DEFECT_KINDS
    split: str = "train"
    object_size: tuple[float, float] = (0.26, 0.42)

    def __post_init__(self):
        if self.image_size < 24:
            raise ValueError(f"SceneConfig.image_size must be at least 24, got {self.image_size}")
        if not 1 <= self.max_objects <= MAX_SLOTS:
            raise ValueError(f"SceneConfig.max_objects must be in 1..{MAX_SLOTS}, got {self.max_objects}")
        if self.long_tail < 0:
            raise ValueError(f"SceneConfig.long_tail must be >= 0, got {self.long_tail}")
        if not 0.0 <= self.defect_fraction <= 1.0:
            raise ValueError(f"SceneConfig.defect_fraction must be in [0, 1], got {self.defect_fraction}")
        unknown = [k for k in self.defect_kinds if k not in DEFECT_KINDS]
        if unknown or not self.defect_kinds:
            raise ValueError(f"SceneConfig.defect_kinds {self.defect_kinds!r}: use a non-empty subset of {DEFECT_KINDS}")
        lo, hi = self.object_size
        if not 0.1 <= lo <= hi <= 0.85:
            raise ValueError(f"SceneConfig.object_size must satisfy 0.1 <= min <= max <= 0.85, got {self.object_size}")
        if self.max_objects > 1 and hi > 0.42:
            raise ValueError(f"SceneConfig.object_size max {hi} > 0.42 leaves no room for {self.max_objects} objects")
        if self.split not in ("train", "test"):
            raise ValueError(f"SceneConfig.split must be 'train' or 'test', got {self.split!r}")


# ----------------------------------------------------------------------------- labels and captions


def relation(box_a, box_b) -> str:
    """Spatial relation of box A to box B ('left of', 'right of', 'above', 'below').

    Boxes are (y0, x0, y1, x1); the axis with the larger center offset decides.
    """
    (ay0, ax0, ay1, ax1), (by0, bx0, by1, bx1) = box_a, box_b
    dy = (ay0 + ay1) / 2 - (by0 + by1) / 2
    dx = (ax0 + ax1) / 2 - (bx0 + bx1) / 2
    if abs(dx) >= abs(dy):
        return "left of" if dx < 0 else "right of"
    return "above" if dy < 0 else "below"


def _object_phrase(digit: int, color: int, words: bool) -> str:
    name = glyphs.DIGIT_WORDS[digit] if words else str(digit)
    return f"a {COLOR_NAMES[color]} {name}"


def caption_for_labels(scene_digit, scene_color, scene_count: int, scene_box=None, template: int = 0) -> str:
    """The caption of a scene with these labels.

    template 0 is the canonical form used for evaluation prompts ("a red 3 left of a blue 7");
    templates 1-3 are the other phrasings seen in training. `scene_box` is needed when the
    scene has two or more objects (the relation between the first two is stated).
    """
    count = int(scene_count)
    if not 1 <= count <= MAX_SLOTS:
        raise ValueError(f"caption_for_labels: scene_count must be in 1..{MAX_SLOTS}, got {count}")
    if not 0 <= template <= 3:
        raise ValueError(f"caption_for_labels: template must be in 0..3, got {template}")
    digits = [int(d) for d in np.asarray(scene_digit)[:count]]
    colors = [int(c) for c in np.asarray(scene_color)[:count]]
    words = template == 3
    objs = [_object_phrase(d, c, words) for d, c in zip(digits, colors)]
    if count == 1:
        return (f"{objs[0]}", f"the digit {digits[0]} in {COLOR_NAMES[colors[0]]}",
                f"a single {objs[0][2:]}", f"{objs[0]}")[template]
    if scene_box is None:
        raise ValueError("caption_for_labels: scene_box is required for scenes with two or more objects")
    boxes = np.asarray(scene_box, np.float64)
    body = f"{objs[0]} {relation(boxes[0], boxes[1])} {objs[1]}"
    if count == 3:
        body += f", and {objs[2]}"
    number = ("two", "three")[count - 2]
    if template == 1:
        return f"{number} digits: {body}"
    if template == 2:
        return f"{body}; {number} digits in total"
    return body


def _tags(digits, colors, rel: str | None, defect_kinds: list[int]) -> list[str]:
    tags = [f"count:{len(digits)}"]
    tags += sorted({f"digit:{d}" for d in digits}) + sorted({f"color:{COLOR_NAMES[c]}" for c in colors})
    if rel is not None:
        tags.append(f"relation:{rel}")
    tags += sorted({f"defect:{DEFECT_KINDS[k]}" for k in defect_kinds})
    return tags


# ----------------------------------------------------------------------------- glyph drawing


@functools.lru_cache(maxsize=None)
def _glyphs_by_digit(split: str) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    images, labels = glyphs.load_digits(split)
    return images, tuple(np.flatnonzero(labels == d) for d in range(10))


def _zipf(n: int, exponent: float) -> np.ndarray:
    p = (np.arange(n) + 1.0) ** -exponent
    return p / p.sum()


def _layout(rng, count: int, size: int, object_size: tuple[float, float]) -> list[tuple[int, int, int]] | None:
    """Non-overlapping square boxes (y, x, side) in pixels, or None if this try failed.

    The first two objects are placed so that their relation is clear: the dominant center
    offset is at least 1.3x the other one and at least 20% of the image.
    """
    gap = max(2, round(0.05 * size))
    lo, hi = object_size
    lo, hi = round(lo * size), round((hi if count < 3 else min(hi, 0.36)) * size)
    lo = min(lo, hi)
    boxes: list[tuple[int, int, int]] = []
    for _ in range(count):
        for _attempt in range(50):
            side = int(rng.integers(lo, hi + 1))
            y = int(rng.integers(1, size - side))
            x = int(rng.integers(1, size - side))
            if all(y + side + gap <= by or by + bs + gap <= y or x + side + gap <= bx or bx + bs + gap <= x
                   for by, bx, bs in boxes):
                if len(boxes) == 1:
                    by, bx, bs = boxes[0]
                    dy, dx = abs(y + side / 2 - by - bs / 2), abs(x + side / 2 - bx - bs / 2)
                    if max(dy, dx) < 1.3 * min(dy, dx) or max(dy, dx) < 0.2 * size:
                        continue
                boxes.append((y, x, side))
                break
        else:
            return None
    return boxes


def _tint(canvas: np.ndarray, glyph: np.ndarray, y: int, x: int, color: np.ndarray) -> None:
    """Alpha-blend a glyph intensity map (in [0, 1]) of `color` into the float canvas."""
    h, w = glyph.shape
    region = canvas[y : y + h, x : x + w]
    a = glyph[..., None]
    region[...] = region * (1 - a) + color * a


def render_scene(glyph_images, colors, boxes_px, image_size: int, background: np.ndarray) -> np.ndarray:
    """Draw glyphs ([k, 8, 8] in [0, 1]) with palette `colors` at (y, x, side) boxes; float canvas [H, W, 3]."""
    canvas = np.empty((image_size, image_size, 3), np.float32)
    ramp = np.linspace(-1.0, 1.0, image_size, dtype=np.float32)[:, None, None]
    canvas[...] = background[None, None, :] * (1 + 0.25 * ramp)  # a subtle vertical gradient
    for glyph, color, (y, x, side) in zip(glyph_images, colors, boxes_px):
        big = glyphs.upsample(glyph[None], side)[0]
        rgb = np.asarray(PALETTE[int(color)][1], np.float32)
        _tint(canvas, big, y, x, rgb)
    return canvas


# ----------------------------------------------------------------------------- defects


@functools.lru_cache(maxsize=64)
def _text_mask(text: str) -> np.ndarray:
    """Tight float mask [h, w] of `text` in PIL's built-in bitmap font (no font files needed)."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default_imagefont()
    _, _, w, h = font.getbbox(text)
    img = Image.new("L", (w, h))
    ImageDraw.Draw(img).text((0, 0), text, fill=255, font=font)
    mask = np.asarray(img, np.float32) / 255.0
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    mask = mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    mask.flags.writeable = False  # shared by the cache
    return mask


def _scaled_text(rng, texts, max_w: int, max_scale: int) -> np.ndarray:
    """A random text mask, upscaled (nearest) by a random integer factor <= max_scale that fits max_w."""
    for _ in range(20):
        mask = _text_mask(texts[int(rng.integers(len(texts)))])
        fits = min(max_scale, max_w // mask.shape[1])
        if fits >= 1:
            k = int(rng.integers(1, fits + 1))
            return np.kron(mask, np.ones((k, k), np.float32))
    return _text_mask("ok")


def _watermark(rng, canvas: np.ndarray) -> tuple[int, int, int, int]:
    size = canvas.shape[0]
    mask = _scaled_text(rng, _WATERMARK_TEXTS, int(0.95 * size), max(1, size // 24))
    h, w = mask.shape
    y, x = int(rng.integers(0, size - h + 1)), int(rng.integers(0, size - w + 1))
    alpha = float(rng.uniform(0.35, 0.6))
    shade = float(rng.uniform(200, 255))
    _tint(canvas, mask * alpha, y, x, np.full(3, shade, np.float32))
    return y, x, y + h, x + w


def _mosaic(rng, canvas: np.ndarray, target: tuple[int, int, int] | None) -> tuple[int, int, int, int]:
    """Pixelate a square patch, centered near an object so that the censoring is visible."""
    size = canvas.shape[0]
    block = max(4, round(size * float(rng.uniform(*MOSAIC_BLOCK))))
    side = max(2 * block, round(float(rng.uniform(*MOSAIC_SIDE)) * size))
    if target is None:
        cy, cx = rng.integers(0, size, 2)
    else:
        ty, tx, ts = target
        cy = ty + ts // 2 + int(rng.integers(-ts // 4, ts // 4 + 1))
        cx = tx + ts // 2 + int(rng.integers(-ts // 4, ts // 4 + 1))
    y0 = int(np.clip(cy - side // 2, 0, size - side))
    x0 = int(np.clip(cx - side // 2, 0, size - side))
    y1, x1 = y0 + side, x0 + side
    for by in range(y0, y1, block):
        for bx in range(x0, x1, block):
            cell = canvas[by : min(by + block, y1), bx : min(bx + block, x1)]
            cell[...] = cell.mean(axis=(0, 1))
    return y0, x0, y1, x1


def _subtitle(rng, canvas: np.ndarray) -> tuple[int, int, int, int]:
    """A dark bar at the bottom with light text on it."""
    size = canvas.shape[0]
    mask = _scaled_text(rng, _SUBTITLE_TEXTS, int(0.9 * size), max(1, size // 64))
    h, w = mask.shape
    pad = max(2, round(0.03 * size))
    bar_h = h + 2 * pad + int(rng.integers(0, round(0.1 * size) + 1))
    bar_w = size if rng.random() < 0.5 else min(size, w + 2 * pad + int(rng.integers(0, size // 4 + 1)))
    y1 = size - int(rng.integers(0, max(1, round(0.04 * size)) + 1))
    y0 = y1 - bar_h
    x0 = (size - bar_w) // 2
    region = canvas[y0:y1, x0 : x0 + bar_w]
    opacity = float(rng.uniform(0.75, 0.95))
    region[...] = region * (1 - opacity) + float(rng.uniform(0, 8)) * opacity
    ty, tx = y0 + (bar_h - h) // 2, x0 + (bar_w - w) // 2
    shade = np.full(3, float(rng.uniform(225, 255)), np.float32)
    _tint(canvas, mask, ty, tx, shade)
    return y0, x0, y1, x0 + bar_w


# ----------------------------------------------------------------------------- scenes


def _make(index: int, cfg: SceneConfig, seed: int, stream: int) -> dict:
    if index < 0:
        raise ValueError(f"make_scene: index must be >= 0, got {index}")
    rng = np.random.default_rng(np.random.SeedSequence((seed, index, stream)))
    size = cfg.image_size
    count = int(rng.integers(1, cfg.max_objects + 1))
    for _ in range(100):
        boxes_px = _layout(rng, count, size, cfg.object_size)
        if boxes_px is not None:
            break
    else:
        raise RuntimeError(f"make_scene: could not place {count} objects on a {size}x{size} image")
    digits = rng.choice(10, size=count, p=_zipf(10, cfg.long_tail))
    colors = rng.choice(len(PALETTE), size=count, p=_zipf(len(PALETTE), cfg.long_tail))
    images, by_digit = _glyphs_by_digit(cfg.split)
    glyph_images = [images[rng.choice(by_digit[d])] for d in digits]
    background = rng.uniform(8, 28) + rng.uniform(-4, 4, 3)
    canvas = render_scene(glyph_images, colors, boxes_px, size, background.astype(np.float32))

    defect_box = np.zeros((MAX_DEFECTS, 4), np.float32)
    defect_kind = np.full((MAX_DEFECTS,), -1, np.int32)
    kinds: list[int] = []
    if rng.random() < cfg.defect_fraction:
        n = min(len(cfg.defect_kinds), 1 if rng.random() < 0.7 else 2)
        names = rng.choice(np.array(cfg.defect_kinds), size=n, replace=False)
        for slot, name in enumerate(sorted(names, key=DEFECT_KINDS.index)):
            if name == "watermark":
                box = _watermark(rng, canvas)
            elif name == "mosaic":
                box = _mosaic(rng, canvas, boxes_px[int(rng.integers(count))])
            else:
                box = _subtitle(rng, canvas)
            kinds.append(DEFECT_KINDS.index(name))
            defect_kind[slot] = kinds[-1]
            defect_box[slot] = np.asarray(box, np.float32) / size

    scene_digit = np.full((MAX_SLOTS,), -1, np.int32)
    scene_color = np.full((MAX_SLOTS,), -1, np.int32)
    scene_box = np.zeros((MAX_SLOTS, 4), np.float32)
    scene_digit[:count], scene_color[:count] = digits, colors
    for k, (y, x, side) in enumerate(boxes_px):
        scene_box[k] = np.asarray([y, x, y + side, x + side], np.float32) / size
    rel = relation(scene_box[0], scene_box[1]) if count >= 2 else None
    template = int(rng.integers(4))
    return {
        "image": np.clip(np.rint(canvas), 0, 255).astype(np.uint8),
        "caption": caption_for_labels(scene_digit, scene_color, count, scene_box, template),
        "scene_digit": scene_digit,
        "scene_color": scene_color,
        "scene_box": scene_box,
        "scene_count": np.int32(count),
        "defect_box": defect_box,
        "defect_kind": defect_kind,
        "tags": _tags(digits.tolist(), colors.tolist(), rel, kinds),
    }


def make_scene(index: int, cfg: SceneConfig = SceneConfig(), seed: int = 0) -> dict:
    """Scene number `index` of the stream `seed` (deterministic, random access).

    Returns image uint8 [H, W, 3], caption str, scene_digit/scene_color int32 [3] (-1 padded),
    scene_box float32 [3, 4] (y0, x0, y1, x1 in [0, 1]), scene_count int32,
    defect_box float32 [4, 4], defect_kind int32 [4] (-1 padded; 0 watermark, 1 mosaic,
    2 subtitle), tags list[str] (from TAG_VOCAB).
    """
    return _make(index, cfg, seed, _TRAIN_STREAM)


def held_out_prompts(num: int, cfg: SceneConfig = SceneConfig(), seed: int = 0) -> dict:
    """A fixed evaluation set: `num` scenes from a stream training never draws, glyphs from 'test'.

    Returns stacked labels (scene_digit, scene_color, scene_box, scene_count), canonical
    captions (template 0, list[str]) and the reference images (uint8 [num, H, W, 3], clean:
    no defects), which serve as the real set for Frechet distance.
    """
    cfg = dataclasses.replace(cfg, split="test", defect_fraction=0.0)
    scenes = [_make(i, cfg, seed, _HELD_OUT_STREAM) for i in range(num)]
    out = {k: np.stack([s[k] for s in scenes]) for k in ("image", "scene_digit", "scene_color", "scene_box", "scene_count")}
    out["caption"] = [
        caption_for_labels(s["scene_digit"], s["scene_color"], s["scene_count"], s["scene_box"], template=0)
        for s in scenes
    ]
    return out
