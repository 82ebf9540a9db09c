"""Edit triples from `digit_scenes`: (source, instruction, target) with exact labels.

Instruction editing (SeedEdit 3.0, Seedream 4.0's unified generation and editing) is trained on
triples: a source image, an instruction, and the target that follows it and changes nothing
else. Here the triples are generated, so their labels are exact: every image is rendered from a
*scene description* (`Scene`: each object's digit, palette color, glyph identity and pixel box,
plus the background), the edit is made on the description, and both scenes are rendered with
`scenes.render_scene`. The description travels with the triple as arrays (`source_*`,
`target_*`), so the target can be re-rendered bit for bit and an independent scene scorer
(`seedjax.eval.judges.scenes`) can check edit success on the target and preservation elsewhere.

Edit types (`EDIT_TYPES`):
    recolor        one object's color changes (same digit, glyph, box)
    replace_digit  one object's digit changes (new glyph of another digit; same color, box)
    move           one object moves by at least 20% of the image in a clear direction
    resize         one object becomes >= 1.25x bigger or smaller about (almost) the same center
    add            a new object, optionally placed in a stated relation to an existing one
    remove         one object disappears; at least one object always remains
    compose        two single-object reference images -> the digit of one in the color of the
                   other, at a named region ("top left", ..., "center"), on a fresh background

Every edited or referred-to object is named unambiguously ("the red 3", "the 3" only when it is
the only 3, ...), and an edited or added object never takes the digit and color of another one,
so it stays nameable in the target. Edited scenes stay valid digit_scenes: objects stay 1 px inside the canvas,
keep `scenes`' gap between them, and the first two keep a clear spatial relation (what captions
and the scorer's position check rely on); an edit that cannot satisfy this is redrawn. As objects
never overlap, pixels outside `changed_boxes` (old and new box of what changed) are bitwise equal
between source and target, which is what a preservation metric relies on.

Everything is a pure function of (seed, index, split), which is what a Grain source needs;
split 'test' draws glyphs from the held-out glyphs only (`glyphs`' one split).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import NamedTuple

import numpy as np

from data_pipelines.sources import glyphs, scenes

EDIT_TYPES = ("recolor", "move", "add", "remove", "replace_digit", "resize", "compose")
REGIONS = ("top left", "top right", "bottom left", "bottom right", "center")
MAX_SOURCES = 2  # `source` is [2, H, W, 3]: single-image edits fill slot 0 (num_sources = 1)
MAX_CHANGED = 2  # `changed_boxes` rows: an object's old and new box (zero rows are empty)
MAX_INSTRUCTION_BYTES = 62  # data.max_text_len (64) minus BOS and EOS: longer would be cut
SLOTS = scenes.MAX_SLOTS
_SPLIT_STREAMS = {"train": 0, "test": 1}
_EDIT_STREAM = 0xED17  # keeps edit draws apart from make_scene's streams of the same seed

# Phrasings per edit type; resize has one set per direction.
TEMPLATES: dict[str, tuple[str, ...]] = {
    "recolor": ("make {obj} {color}", "recolor {obj} to {color}", "change the color of {obj} to {color}",
                "paint {obj} {color}", "turn {obj} {color}"),
    "replace_digit": ("replace {obj} with {new}", "change {obj} into {new}", "turn {obj} into {new}",
                      "swap {obj} for {new}", "make {obj} {new} of the same color"),
    "move": ("move {obj} {dir}", "shift {obj} {dir}", "slide {obj} {dir}", "move {obj} {dir}, keep the rest"),
    "resize:bigger": ("make {obj} bigger", "enlarge {obj}", "scale {obj} up", "make {obj} larger"),
    "resize:smaller": ("make {obj} smaller", "shrink {obj}", "scale {obj} down", "make {obj} less big"),
    "add": ("add {new}", "add {new} {rel} {ref}", "put {new} {rel} {ref}", "place {new} {rel} {ref}",
            "draw {new} {rel} {ref}"),
    "remove": ("remove {obj}", "delete {obj}", "erase {obj}", "take out {obj}", "get rid of {obj}"),
    "compose": ("the digit of image {a} in image {b}'s color, at the {pos}",
                "image {a}'s digit in the color of image {b}, at the {pos}",
                "draw the digit of image {a} colored like image {b}, {pos}",
                "the digit of image {a} in the color of image {b}, {pos}"),
}
_DIRECTIONS = {"left of": "to the left", "right of": "to the right", "above": "up", "below": "down"}


@dataclasses.dataclass(frozen=True)
class EditConfig:
    """How triples are drawn.

    object_size: (min, max) side of new objects as a fraction of the image (as SceneConfig's).
    resize_size: (min, max) side an object may be resized to, as a fraction of the image.
    edit_weights: relative weight per edit type (types left out get 0); None = uniform.
    """

    image_size: int = 64
    max_objects: int = 3
    object_size: tuple[float, float] = (0.26, 0.42)
    resize_size: tuple[float, float] = (0.2, 0.5)
    edit_weights: Mapping[str, float] | tuple | None = None

    def __post_init__(self):
        # SceneConfig checks image_size, max_objects and object_size the way scenes need them.
        scenes.SceneConfig(image_size=self.image_size, max_objects=self.max_objects, object_size=self.object_size)
        if self.max_objects < 2:
            raise ValueError(f"EditConfig.max_objects must be >= 2 (add and remove need room), got {self.max_objects}")
        lo, hi = self.resize_size
        if not 0.1 <= lo < hi <= 0.6:
            raise ValueError(f"EditConfig.resize_size must satisfy 0.1 <= min < max <= 0.6, got {self.resize_size}")
        weights = dict(self.edit_weights) if self.edit_weights is not None else dict.fromkeys(EDIT_TYPES, 1.0)
        unknown = [k for k in weights if k not in EDIT_TYPES]
        if unknown:
            raise ValueError(f"EditConfig.edit_weights: unknown edit type {unknown[0]!r}; use {EDIT_TYPES}")
        if any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
            raise ValueError(f"EditConfig.edit_weights must be >= 0 with a positive sum, got {weights}")
        # Stored as an ordered tuple so that the config stays hashable and comparable.
        object.__setattr__(self, "edit_weights", tuple((k, float(weights.get(k, 0.0))) for k in EDIT_TYPES))

    @property
    def probabilities(self) -> np.ndarray:
        w = np.array([w for _, w in self.edit_weights], np.float64)
        return w / w.sum()


@dataclasses.dataclass(frozen=True)
class Obj:
    digit: int
    color: int  # index into scenes.PALETTE
    glyph: int  # index into glyphs.load_digits('all'): the exact handwritten sample drawn
    y: int
    x: int
    side: int  # the square box (y, x, side) in pixels, as scenes._layout makes them


@dataclasses.dataclass(frozen=True)
class Scene:
    """Everything `render` needs to reproduce an image exactly."""

    objects: tuple[Obj, ...]
    background: tuple[float, float, float]  # float32 values, as render_scene takes them
    image_size: int

    def render(self) -> np.ndarray:
        images = _all_glyphs()
        canvas = scenes.render_scene([images[o.glyph] for o in self.objects], [o.color for o in self.objects],
                                     [(o.y, o.x, o.side) for o in self.objects], self.image_size,
                                     np.asarray(self.background, np.float32))
        return np.clip(np.rint(canvas), 0, 255).astype(np.uint8)  # as make_scene quantizes

    def labels(self) -> dict:
        """digit/color/glyph int32 [3] (-1 padded), box float32 [3, 4] (y0, x0, y1, x1 in [0, 1]),
        count int32, background float32 [3]: scene labels plus what exact re-rendering needs."""
        out = {"digit": np.full(SLOTS, -1, np.int32), "color": np.full(SLOTS, -1, np.int32),
               "glyph": np.full(SLOTS, -1, np.int32), "box": np.zeros((SLOTS, 4), np.float32),
               "count": np.int32(len(self.objects)), "background": np.asarray(self.background, np.float32)}
        for k, o in enumerate(self.objects):
            out["digit"][k], out["color"][k], out["glyph"][k] = o.digit, o.color, o.glyph
            out["box"][k] = _unit_box(o, self.image_size)
        return out


def scene_from_labels(digit, color, box, count, glyph, background, image_size: int) -> Scene:
    """The Scene that a triple's label arrays describe (the inverse of `Scene.labels`)."""
    objects = []
    for k in range(int(count)):
        y0, x0, y1, _ = (round(float(v) * image_size) for v in np.asarray(box)[k])
        objects.append(Obj(int(digit[k]), int(color[k]), int(glyph[k]), y0, x0, y1 - y0))
    return Scene(tuple(objects), tuple(float(v) for v in np.asarray(background, np.float32)), image_size)


def target_scene(triple: dict) -> Scene:
    return scene_from_labels(*(triple[f"target_{k}"] for k in _LABEL_KEYS), triple["target"].shape[0])


def source_scenes(triple: dict) -> list[Scene]:
    size = triple["target"].shape[0]
    return [scene_from_labels(*(triple[f"source_{k}"][i] for k in _LABEL_KEYS), size)
            for i in range(int(triple["num_sources"]))]


_LABEL_KEYS = ("digit", "color", "box", "count", "glyph", "background")


def _unit_box(o: Obj, size: int) -> np.ndarray:
    return np.asarray([o.y, o.x, o.y + o.side, o.x + o.side], np.float32) / size


@functools.cache
def _all_glyphs() -> np.ndarray:
    return glyphs.load_digits("all")[0]


@functools.cache
def _pool(split: str) -> tuple[np.ndarray, ...]:
    """Global glyph ids of each digit in `split`."""
    images, labels = glyphs.load_digits("all")
    ids = np.arange(len(labels))
    held_out = ids % glyphs.HELD_OUT_EVERY == 0
    keep = held_out if split == "test" else ~held_out
    # Guard against glyphs.py changing its split rule: these ids must be exactly its split.
    assert np.array_equal(images[keep], glyphs.load_digits(split)[0]), "glyphs split rule changed"
    return tuple(ids[keep & (labels == d)] for d in range(10))


def _clear(a: Obj, b: Obj, size: int) -> bool:
    """The relation of a to b is unambiguous (scenes._layout's rule for the first two objects)."""
    dy, dx = abs(2 * (a.y - b.y) + a.side - b.side) / 2, abs(2 * (a.x - b.x) + a.side - b.side) / 2
    return max(dy, dx) >= 1.3 * min(dy, dx) and max(dy, dx) >= 0.2 * size


def _valid(scene: Scene) -> bool:
    size, objs = scene.image_size, scene.objects
    gap = max(2, round(0.05 * size))  # scenes._layout's gap
    for i, a in enumerate(objs):
        if a.y < 1 or a.x < 1 or a.y + a.side > size - 1 or a.x + a.side > size - 1:
            return False
        for b in objs[:i]:
            if not (a.y + a.side + gap <= b.y or b.y + b.side + gap <= a.y
                    or a.x + a.side + gap <= b.x or b.x + b.side + gap <= a.x):
                return False
    return len(objs) < 2 or _clear(objs[0], objs[1], size)


def _random_scene(rng, count: int, cfg: EditConfig, pool) -> Scene | None:
    boxes = scenes._layout(rng, count, cfg.image_size, cfg.object_size)
    if boxes is None:
        return None
    digits = rng.integers(10, size=count)
    colors = rng.integers(len(scenes.PALETTE), size=count)
    objects = tuple(Obj(int(d), int(c), int(rng.choice(pool[d])), y, x, s)
                    for d, c, (y, x, s) in zip(digits, colors, boxes))
    return Scene(objects, _background(rng), cfg.image_size)


def _background(rng) -> tuple[float, float, float]:
    bg = (rng.uniform(8, 28) + rng.uniform(-4, 4, 3)).astype(np.float32)  # make_scene's range
    return tuple(float(v) for v in bg)


def _a(word: str) -> str:
    return f"an {word}" if word[0] in "8e" else f"a {word}"


def _digit_word(rng, digit: int) -> str:
    return glyphs.DIGIT_WORDS[digit] if rng.random() < 0.3 else str(digit)


def _unique(scene: Scene, k: int) -> bool:
    o = scene.objects[k]
    return sum((p.digit, p.color) == (o.digit, o.color) for p in scene.objects) == 1


def _refer(rng, scene: Scene, k: int) -> str:
    """A phrase that names object k unambiguously (k must be `_unique`)."""
    o = scene.objects[k]
    color = scenes.COLOR_NAMES[o.color]
    options = [f"the {color} {o.digit}", f"the {color} {glyphs.DIGIT_WORDS[o.digit]}"]
    if sum(p.digit == o.digit for p in scene.objects) == 1:
        options.append(f"the {o.digit}")
    if sum(p.color == o.color for p in scene.objects) == 1:
        options.append(f"the {color} digit")
    return options[int(rng.integers(len(options)))]


def _say(rng, key: str, **fields) -> str:
    templates = TEMPLATES[key]
    return templates[int(rng.integers(len(templates)))].format(**fields)


class _Edit(NamedTuple):
    sources: tuple[Scene, ...]
    target: Scene
    instruction: str
    changed: tuple[Obj, ...]  # old and new versions of what changed
    source_slot: int  # the edited object in source / target (-1: none)
    target_slot: int
    compose: tuple[int, int] = (-1, -1)  # (digit_from, region) of a compose edit


def _with(scene: Scene, k: int, obj: Obj | None) -> Scene:
    """The scene with object k replaced by `obj` (removed if None)."""
    objects = scene.objects[:k] + ((obj,) if obj else ()) + scene.objects[k + 1:]
    return dataclasses.replace(scene, objects=objects)


def _taken(scene: Scene, digit: int, color: int) -> bool:
    return any((o.digit, o.color) == (digit, color) for o in scene.objects)


# Single-image edits of object k (unambiguously nameable; for `add`, the object referred to).
# They return None when this draw cannot give a valid edit; make_edit then draws a new source.


def _recolor(rng, src: Scene, k: int, cfg, pool) -> _Edit:
    old = src.objects[k]
    new = dataclasses.replace(old, color=int(rng.choice(
        [c for c in range(len(scenes.PALETTE)) if not _taken(src, old.digit, c)])))
    text = _say(rng, "recolor", obj=_refer(rng, src, k), color=scenes.COLOR_NAMES[new.color])
    return _Edit((src,), _with(src, k, new), text, (old,), k, k)


def _replace_digit(rng, src: Scene, k: int, cfg, pool) -> _Edit:
    old = src.objects[k]
    digit = int(rng.choice([d for d in range(10) if not _taken(src, d, old.color)]))
    new = dataclasses.replace(old, digit=digit, glyph=int(rng.choice(pool[digit])))
    text = _say(rng, "replace_digit", obj=_refer(rng, src, k), new=_a(_digit_word(rng, digit)))
    return _Edit((src,), _with(src, k, new), text, (old,), k, k)


def _move(rng, src: Scene, k: int, cfg, pool) -> _Edit | None:
    old, size = src.objects[k], src.image_size
    for _ in range(50):
        y, x = (int(v) for v in rng.integers(1, size - old.side, 2))
        new = dataclasses.replace(old, y=y, x=x)
        # A clear displacement, so that "to the left" is the only fair reading of the instruction.
        if _clear(new, old, size) and _valid(target := _with(src, k, new)):
            direction = _DIRECTIONS[scenes.relation(_unit_box(new, size), _unit_box(old, size))]
            return _Edit((src,), target, _say(rng, "move", obj=_refer(rng, src, k), dir=direction), (old, new), k, k)
    return None


def _resize(rng, src: Scene, k: int, cfg, pool) -> _Edit | None:
    old, size = src.objects[k], src.image_size
    lo, hi = (round(f * size) for f in cfg.resize_size)
    for _ in range(30):
        side = int(rng.integers(lo, hi + 1))
        if 0.8 * old.side < side < 1.25 * old.side:
            continue
        # Integer boxes: the center moves by at most half a pixel.
        new = dataclasses.replace(old, y=(2 * old.y + old.side - side) // 2,
                                  x=(2 * old.x + old.side - side) // 2, side=side)
        if _valid(target := _with(src, k, new)):
            key = "resize:bigger" if side > old.side else "resize:smaller"
            return _Edit((src,), target, _say(rng, key, obj=_refer(rng, src, k)), (old, new), k, k)
    return None


def _add(rng, src: Scene, ref: int, cfg, pool) -> _Edit | None:
    size, count = src.image_size, len(src.objects)
    digit, color = int(rng.integers(10)), int(rng.integers(len(scenes.PALETTE)))
    if _taken(src, digit, color):  # every object stays nameable by its color and digit
        return None
    lo, hi = cfg.object_size
    lo, hi = round(lo * size), round((hi if count + 1 < 3 else min(hi, 0.36)) * size)  # as _layout
    for _ in range(50):
        side = int(rng.integers(min(lo, hi), hi + 1))
        y, x = (int(v) for v in rng.integers(1, size - side, 2))
        new = Obj(digit, color, int(rng.choice(pool[digit])), y, x, side)
        target = dataclasses.replace(src, objects=(*src.objects, new))
        if _clear(new, src.objects[ref], size) and _valid(target):
            phrase = f"a {scenes.COLOR_NAMES[color]} {_digit_word(rng, digit)}"
            rel = scenes.relation(_unit_box(new, size), _unit_box(src.objects[ref], size))
            text = _say(rng, "add", new=phrase, rel=rel, ref=_refer(rng, src, ref))
            return _Edit((src,), target, text, (new,), -1, count)
    return None


def _remove(rng, src: Scene, k: int, cfg, pool) -> _Edit | None:
    target = _with(src, k, None)
    # Dropping object 0 or 1 makes another one second: its relation to the first must be clear.
    if not _valid(target):
        return None
    return _Edit((src,), target, _say(rng, "remove", obj=_refer(rng, src, k)), (src.objects[k],), k, -1)


def _region_corner(rng, region: str, side: int, size: int) -> tuple[int, int]:
    """(y, x) of a box of `side` inside `region` (a quadrant, or centered within 10% of the middle)."""
    if region == "center":
        jitter = rng.integers(-round(0.1 * size), round(0.1 * size) + 1, 2)
        return tuple(int(np.clip(size // 2 + j - side // 2, 1, size - side - 1)) for j in jitter)
    half = size // 2
    y = rng.integers(1, half - side + 1) if region.startswith("top") else rng.integers(half, size - side)
    x = rng.integers(1, half - side + 1) if region.endswith("left") else rng.integers(half, size - side)
    return int(y), int(x)


def _compose(rng, cfg: EditConfig, pool) -> _Edit | None:
    refs = (_random_scene(rng, 1, cfg, pool), _random_scene(rng, 1, cfg, pool))
    if None in refs:
        return None
    a, b = refs[0].objects[0], refs[1].objects[0]
    if a.digit == b.digit or a.color == b.color:  # otherwise "the color of image 2" says nothing
        return None
    digit_from = int(rng.integers(2))
    shape, paint = (a, b) if digit_from == 0 else (b, a)
    size = cfg.image_size
    region = int(rng.integers(len(REGIONS)))
    lo, hi = round(cfg.object_size[0] * size), min(round(cfg.object_size[1] * size), size // 2 - 2)
    side = int(rng.integers(min(lo, hi), hi + 1))
    y, x = _region_corner(rng, REGIONS[region], side, size)
    new = Obj(shape.digit, paint.color, shape.glyph, y, x, side)  # the very glyph of the reference
    target = Scene((new,), _background(rng), size)
    text = _say(rng, "compose", a=digit_from + 1, b=2 - digit_from, pos=REGIONS[region])
    return _Edit(refs, target, text, (new,), -1, 0, (digit_from, region))


_EDITS = {"recolor": _recolor, "replace_digit": _replace_digit, "move": _move, "resize": _resize,
          "add": _add, "remove": _remove}


def make_edit(index: int, cfg: EditConfig = EditConfig(), seed: int = 0, split: str = "train") -> dict:
    """Edit triple number `index` of the stream (seed, split) (deterministic, random access).

    Returns source uint8 [2, H, W, 3] (slot 1 zero unless compose), num_sources int32, target
    uint8 [H, W, 3], instruction str, edit_type str, edit_type_id int32, source_<label> ([2, ...])
    and target_<label> for label in digit/color/glyph int32 [3], box float32 [3, 4], count int32,
    background float32 [3]; changed_boxes float32 [2, 4] (y0, x0, y1, x1 in [0, 1], zero rows
    empty); source_slot/target_slot int32 (-1: none); compose_digit_from, compose_region int32
    (-1 unless compose); target_caption str (scenes' canonical caption); tags ['edit:<type>'].
    """
    if index < 0:
        raise ValueError(f"make_edit: index must be >= 0, got {index}")
    if split not in _SPLIT_STREAMS:
        raise ValueError(f"make_edit: unknown split {split!r}; use 'train' or 'test'")
    rng = np.random.default_rng(np.random.SeedSequence((seed, index, _SPLIT_STREAMS[split], _EDIT_STREAM)))
    kind = EDIT_TYPES[int(rng.choice(len(EDIT_TYPES), p=cfg.probabilities))]
    pool = _pool(split)
    # Source counts that leave the edit possible: add needs room, remove keeps >= 1 object.
    lo, hi = {"add": (1, cfg.max_objects - 1), "remove": (2, cfg.max_objects)}.get(kind, (1, cfg.max_objects))
    for _ in range(100):
        if kind == "compose":
            edit = _compose(rng, cfg, pool)
        else:
            src = _random_scene(rng, int(rng.integers(lo, hi + 1)), cfg, pool)
            named = [] if src is None else [k for k in range(len(src.objects)) if _unique(src, k)]
            edit = _EDITS[kind](rng, src, int(rng.choice(named)), cfg, pool) if named else None
        if edit is not None:
            break
    else:
        raise RuntimeError(f"make_edit: could not make a valid {kind} edit for index {index}")
    return _pack(kind, edit, cfg.image_size)


def _pack(kind: str, edit: _Edit, size: int) -> dict:
    assert len(edit.instruction.encode()) <= MAX_INSTRUCTION_BYTES, edit.instruction
    # An empty scene with a black background renders to zeros: the unused source slot.
    sources = edit.sources + (Scene((), (0.0, 0.0, 0.0), size),) * (MAX_SOURCES - len(edit.sources))
    source_labels, target = [s.labels() for s in sources], edit.target.labels()
    changed = np.zeros((MAX_CHANGED, 4), np.float32)
    changed[: len(edit.changed)] = [_unit_box(o, size) for o in edit.changed]
    caption = scenes.caption_for_labels(target["digit"], target["color"], target["count"], target["box"], template=0)
    return {
        "source": np.stack([s.render() for s in sources]), "num_sources": np.int32(len(edit.sources)),
        "target": edit.target.render(), "instruction": edit.instruction,
        "edit_type": kind, "edit_type_id": np.int32(EDIT_TYPES.index(kind)),
        "changed_boxes": changed,
        "source_slot": np.int32(edit.source_slot), "target_slot": np.int32(edit.target_slot),
        "compose_digit_from": np.int32(edit.compose[0]), "compose_region": np.int32(edit.compose[1]),
        "target_caption": caption, "tags": [f"edit:{kind}"],
        **{f"source_{k}": np.stack([lab[k] for lab in source_labels]) for k in _LABEL_KEYS},
        **{f"target_{k}": target[k] for k in _LABEL_KEYS},
    }


def no_edit_labels(size: int) -> dict:
    """The numeric labels of a row that is no edit (a text-to-image row of a joint run): no
    sources, nothing changed; the same keys, shapes and dtypes as an edit's (`make_edit`)."""
    empty = Scene((), (0.0, 0.0, 0.0), size).labels()
    return {"num_sources": np.int32(0), "edit_type_id": np.int32(-1), "changed_boxes": np.zeros((MAX_CHANGED, 4), np.float32),
            "source_slot": np.int32(-1), "target_slot": np.int32(-1),
            "compose_digit_from": np.int32(-1), "compose_region": np.int32(-1),
            **{f"source_{k}": np.stack([empty[k]] * MAX_SOURCES) for k in _LABEL_KEYS},
            **{f"target_{k}": empty[k] for k in _LABEL_KEYS}}


def edit_config(data_cfg, where: str = "data") -> EditConfig:
    """EditConfig from config.data (data.image_size and the data.edits group); bad values are a
    one-line ValueError naming `<where>.edits.<key>` (EditConfig's own messages name its fields)."""
    e = data_cfg.edits

    def bad(key: str, why: str):
        raise ValueError(f"{where}.edits.{key}: {why}")

    if int(e.num_samples) <= 0:
        bad("num_samples", f"must be positive, got {e.num_samples}")
    if int(data_cfg.image_size) < 24:  # SceneConfig's minimum: glyphs need the room
        raise ValueError(f"{where}.image_size: edit_triples renders scenes of at least 24 px, got {data_cfg.image_size}")
    if not 2 <= int(e.max_objects) <= SLOTS:
        bad("max_objects", f"must be in 2..{SLOTS} (add and remove need room for two objects), got {e.max_objects}")
    lo, hi = float(e.object_size_min), float(e.object_size_max)
    if not 0.1 <= lo <= 0.42:
        bad("object_size_min", f"must be in [0.1, 0.42], got {lo}")
    if not lo <= hi <= 0.42:  # scenes of several objects leave no room for bigger ones
        bad("object_size_max", f"must be in [object_size_min, 0.42] = [{lo}, 0.42], got {hi}")
    lo, hi = float(e.resize_size_min), float(e.resize_size_max)
    if not 0.1 <= lo < 0.6:
        bad("resize_size_min", f"must be in [0.1, 0.6), got {lo}")
    if not lo < hi <= 0.6:
        bad("resize_size_max", f"must be in (resize_size_min, 0.6] = ({lo}, 0.6], got {hi}")
    weights = parse_edit_weights(e.edit_weights, f"{where}.edits.edit_weights")
    try:
        return EditConfig(image_size=int(data_cfg.image_size), max_objects=int(e.max_objects),
                          object_size=(float(e.object_size_min), float(e.object_size_max)),
                          resize_size=(float(e.resize_size_min), float(e.resize_size_max)), edit_weights=weights)
    except ValueError as err:  # anything the checks above missed still names the group
        raise ValueError(f"{where}.edits: {err}") from None


def parse_edit_weights(spec: str, key: str = "data.edits.edit_weights") -> dict[str, float] | None:
    """'recolor:1,move:2' -> {'recolor': 1.0, 'move': 2.0}; '' -> None (every type equally often)."""
    if not spec.strip():
        return None
    weights = {}
    for item in spec.split(","):
        name, sep, value = item.strip().partition(":")
        name = name.strip()
        try:
            weight = float(value) if sep else None
        except ValueError:
            weight = None
        if weight is None or not weight >= 0:  # (not >= also rejects nan)
            raise ValueError(f"{key}: {item.strip()!r} is not <edit type>:<weight >= 0> (in {spec!r})")
        if name not in EDIT_TYPES:
            raise ValueError(f"{key}: unknown edit type {name!r}; use some of {', '.join(EDIT_TYPES)}")
        if name in weights:
            raise ValueError(f"{key}: {name!r} is listed twice (in {spec!r})")
        weights[name] = weight
    if sum(weights.values()) <= 0:
        raise ValueError(f"{key}: every weight is 0 (in {spec!r})")
    return weights


class EditTripleSource:
    """`num_samples` edit triples as a Grain random-access source (`__len__`, `__getitem__`).

    `__getitem__` gives `make_edit`'s dict (uint8 images, exact); `load` gives the data
    pipelines' raw-sample convention (float32 images in [0, 1], `where`), as SceneSource does.
    The class attributes are what the pipeline reads from every source (see sources/digits.py);
    the 'test' split is the held-out glyph split, which make_eval_batch reads.
    """

    channels = 3
    edits = True  # rows are edits (a mixture with image sources is a joint run: samples.Layout.joint_edits)
    # Triples carry their own labels (source_*, target_*), not scene_* rows, and no tag
    # vocabulary: edit_type_id says what the `edit:<type>` tag would.
    scene_labels = False
    tags: tuple[str, ...] = ()
    latent = False
    text_features = False

    def __init__(self, cfg: EditConfig = EditConfig(), *, split: str, seed: int, num_samples: int):
        if split not in _SPLIT_STREAMS:
            raise ValueError(f"edit_triples: unknown split {split!r}; use 'train' or 'test'")
        if num_samples <= 0:
            raise ValueError(f"edit_triples: num_samples must be positive, got {num_samples}")
        self.cfg, self.split, self.seed, self.num_samples = cfg, split, seed, int(num_samples)
        self.name = f"edit_triples[{split}]"
        self.scan_skips: dict[str, tuple[int, str]] = {}  # generated: nothing to skip while scanning

    def __len__(self) -> int:
        return self.num_samples

    def sizes(self) -> np.ndarray:
        """int64 [N, 2]: every triple is rendered at image_size x image_size."""
        return np.full((len(self), 2), self.cfg.image_size, np.int64)

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.num_samples:
            raise IndexError(f"edit_triples: index {index} out of range [0, {self.num_samples})")
        return make_edit(int(index), self.cfg, self.seed, self.split)

    def load(self, index: int, position: int) -> dict:
        raw = self[index]
        raw["source"] = raw["source"].astype(np.float32) / 255.0
        raw["target"] = raw["target"].astype(np.float32) / 255.0
        raw["where"] = f"{self.name}#{index}"
        return raw
